"""The judge of a code sandbox: runs the tests, in a process of its own, against a program it can only talk to.

The verdict must come from something the tested program cannot read or write. So the program (the solution, run by
`_sandbox_program.py` in a process forked before the harness read its job, as an unprivileged uid) and the tests
never share a process: the judge, a process the program cannot trace or read (another uid where the sandbox runs as
root, which it cannot signal either; not dumpable everywhere, so no ptrace and no /proc/<pid>/mem or fd for it),
executes each test's own code with its own builtins and standard library, and reports `pass <i>` on a pipe that only
it holds. Where both run as one uid (user namespaces, weak mode without root) the program can still kill or stop the
judge: that ends the verdicts (no test passes after it), never adds one. The program's names (its functions,
classes, values) reach the tests through a two-pipe channel (`_sandbox_codec.py`):

- a name the tests do not define, that is neither a builtin nor a standard-library module, is looked up in the
  program: plain data crosses as a copy, anything else as a `Remote` handle;
- calling a Remote (`f(3)`), its attributes, items, length, truth, iteration, `str`/`repr`/`int`/`float`/`round`
  are requests answered by the program: its answers are values, never verdicts;
- the comparison and the assert are the judge's: a Remote takes part in `==`, `<`, `+`, ... only with another of
  the program's objects, so an object whose `__eq__` always says True equals nothing the test computed, and an
  operand the test computed (the expected value of `abs(f(x) - y) < 1e-6`) never reaches the program;
- a builtin or standard-library name that the program redefines (`set`, `isinstance`, `math`) is the judge's,
  except where a test uses it once, as the function whose result it compares (MBPP task 126 names its function
  `sum`: `assert sum(10, 15) == 6`).

What the program controls is therefore only what its own objects answer, from the arguments the tests give them.
It can still pass a test that lets it decide both sides (a test comparing two of its objects, or trusting its
helper to compute the expected value) or only asks a yes/no question of it (`assert is_prime(7)`).

The program ending its process, sending a malformed message or an exception of BaseException-only kind fails the
test at hand, and the run stops there (no `done`). Limits: the tests' arguments cross by value (a test that checks
an argument the program changed in place fails), and a test cannot hand the program its own functions (a lambda
argument fails the test).
"""

import builtins
import os
import sys

STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__future__"}
BUILTIN_NAMES = frozenset(vars(builtins))
ITER_BATCH = 64  # items fetched per request when the judge iterates over a program's iterable
# unary operations forwarded to the program (its answers are values the judge then checks)
UNARY = ("len", "bool", "str", "repr", "int", "float", "complex", "index", "neg", "pos", "abs", "invert", "next",
         "reversed", "dir", "floor", "ceil", "trunc")  # fmt: skip
# binary operations: only between two of the program's objects
BINARY = ("eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
          "and", "or", "xor", "lshift", "rshift", "divmod")  # fmt: skip


class ProgramGone(BaseException):
    """The program's process ended or broke the protocol: no test can pass after this (BaseException, so that a
    test's `except Exception` cannot swallow it)."""


class ProgramError(Exception):
    """An exception the program raised that is not a built-in exception class (its name and message)."""


class Channel:
    """The judge's end of the two pipes to the program: requests out, replies in, one at a time."""

    def __init__(self, codec: dict, requests: int, replies: int):
        self.codec, self.requests, self.replies = codec, requests, replies
        self.remotes: dict[int, Remote] = {}
        self.wrapped: dict[tuple[int, type], object] = {}
        self.gone = ""  # why the program can no longer answer ("" while it can)

    def remote(self, handle: int) -> "Remote":
        if handle not in self.remotes:
            remote = object.__new__(Remote)
            object.__setattr__(remote, "_handle", handle)
            object.__setattr__(remote, "_channel", self)
            self.remotes[handle] = remote
        return self.remotes[handle]

    def wrap(self, value, handle: int):
        """A subclass instance of the program's (a Counter, a namedtuple, an IntEnum): its base type's value, as a
        judge-side subclass that compares as that value, returns to the program as the object itself, and asks the
        program for the attributes it lacks (`point.x`). Immutable ones keep their identity."""
        base = type(value)
        immutable = base not in (list, dict, set, bytearray)
        if immutable and (handle, base) in self.wrapped:
            return self.wrapped[handle, base]
        if base not in WRAPPERS:
            WRAPPERS[base] = type(f"Program{base.__name__.title()}", (base,), {"__getattr__": _wrapped_attribute})
        wrapped = WRAPPERS[base](value)
        wrapped.__dict__.update(_handle=handle, _channel=self)
        if immutable:
            self.wrapped[handle, base] = wrapped
        return wrapped

    def handle_of(self, value) -> int:
        if type(value) is Remote:
            return object.__getattribute__(value, "_handle")
        if type(value) in WRAPPERS.values():
            return value.__dict__["_handle"]
        raise TypeError(f"a test passed {type(value).__name__!r} to the program: only plain data and the program's "
                        "own objects cross to it")  # fmt: skip

    def receive(self):
        """The next reply, decoded; ProgramGone at the end of the pipe or on a malformed reply."""
        if self.gone:
            raise ProgramGone(self.gone)
        try:
            frame = self.codec["receive"](self.replies, os.read)
            if frame is None:
                self.gone = "the program's process ended"
            else:
                reply = self.codec["decode"](frame, self.remote, self.wrap)
                if type(reply) is tuple and reply and reply[0] in ("ok", "raise"):
                    return reply
                self.gone = "the program sent a malformed reply"
        except (self.codec["CodecError"], OSError) as err:
            self.gone = f"the program sent a malformed reply ({err})"
        raise ProgramGone(self.gone)

    def ask(self, *request):
        """Send one request, return the program's answer or raise what it raised (see `_raise`)."""
        if self.gone:
            raise ProgramGone(self.gone)
        message = self.codec["encode"](request, self.handle_of)  # TypeError for what cannot cross: the test's fault
        try:
            self.codec["send"](self.requests, message, os.write)
        except OSError:
            self.gone = "the program's process ended"
            raise ProgramGone(self.gone) from None
        reply = self.receive()
        if reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        _raise(reply, request)


def _raise(reply: tuple, request: tuple):
    """Raise the program's exception as the built-in class of that name (ValueError, KeyError...), or as
    ProgramError; StopIteration only out of `next`."""
    name, message = (reply[1], reply[2]) if len(reply) == 3 else ("", "")
    if type(name) is not str or type(message) is not str:
        raise ProgramError("the program raised something malformed")
    kind = getattr(builtins, name, None) if name in BUILTIN_NAMES else None
    allowed = isinstance(kind, type) and issubclass(kind, Exception) and kind is not StopAsyncIteration
    if allowed and (kind is not StopIteration or request[:2] == ("op", "next")):
        raise kind(message)
    raise ProgramError(f"{name}: {message}")


WRAPPERS: dict[type, type] = {}  # base type -> the judge's subclass for the program's instances of subclasses of it


def _wrapped_attribute(self, name: str):
    if name.startswith("__") or "_channel" not in self.__dict__:
        raise AttributeError(name)  # protocol probes (copy, pickle) and a half-built object stay local
    return self.__dict__["_channel"].ask("getattr", self, name)


def _unary(name: str):
    def method(self, *args):
        return _channel(self).ask("op", name, (self, *args))

    method.__name__ = f"__{name}__"
    return method


def _binary(name: str):
    def method(self, other):
        if type(other) is not Remote:
            return NotImplemented  # a value the test computed: compared by the judge, never shown to the program
        return _channel(self).ask("op", name, (self, other))

    method.__name__ = f"__{name}__"
    return method


def _channel(remote: "Remote") -> Channel:
    return object.__getattribute__(remote, "_channel")


class Remote:
    """One of the program's objects, seen from the judge: every operation is a request to the program."""

    __slots__ = ("_handle", "_channel", "__weakref__")
    __hash__ = object.__hash__  # by identity: the same program object is the same Remote

    def __getattr__(self, name):
        return _channel(self).ask("getattr", self, name)

    def __setattr__(self, name, value):
        _channel(self).ask("setattr", self, name, value)

    def __delattr__(self, name):
        _channel(self).ask("delattr", self, name)

    def __call__(self, *args, **kwargs):
        return _channel(self).ask("call", self, args, kwargs)

    def __getitem__(self, key):
        return _channel(self).ask("op", "getitem", (self, key))

    def __setitem__(self, key, value):
        _channel(self).ask("op", "setitem", (self, key, value))

    def __delitem__(self, key):
        _channel(self).ask("op", "delitem", (self, key))

    def __iter__(self):
        channel = _channel(self)
        iterator = channel.ask("op", "iter", (self,))
        while True:
            batch = channel.ask("take", iterator, ITER_BATCH)
            if type(batch) is not tuple or len(batch) != 2 or type(batch[0]) is not list:
                raise ProgramError("the program answered an iteration with something malformed")
            yield from batch[0]
            if batch[1]:
                return

    def __round__(self, ndigits=None):
        return _channel(self).ask("op", "round", (self, ndigits))

    def __format__(self, spec):
        return _channel(self).ask("op", "format", (self, spec))

    def __instancecheck__(self, value):
        return _channel(self).ask("op", "isinstance", (value, self))

    def __subclasscheck__(self, value):
        return _channel(self).ask("op", "issubclass", (value, self))


for _name in UNARY:
    setattr(Remote, f"__{_name}__", _unary(_name))
for _name in BINARY:
    setattr(Remote, f"__{_name}__", _binary(_name))


class Names(dict):
    """The tests' builtins: Python's; then standard-library modules, imported here; then the program's globals.
    `own` holds a builtin or module name that the program's definition replaces for this test (see above). One of
    the program's objects (a function, a class) is looked up once per test (a round trip saved per call); plain
    values every time."""

    def __init__(self, channel: Channel, own: frozenset = frozenset()):
        super().__init__({k: v for k, v in vars(builtins).items() if k not in own})
        self.channel, self.own = channel, own

    def __missing__(self, name):
        if name in STDLIB and name not in self.own:
            try:
                return __import__(name)
            except ImportError:
                pass
        value = self.channel.ask("global", name)
        if type(value) is Remote:
            self[name] = value
        return value


def run_piece(source: str, filename: str, namespace: dict) -> bool:
    """Execute one test or statement in the judge; False (a short traceback on stderr) when it raises."""
    try:
        exec(compile(source, filename, "exec"), namespace)
        return True
    except BaseException as err:  # noqa: BLE001 - a test may raise anything, ProgramGone too
        _print_failure(err, filename)
        return False


def _print_failure(err: BaseException, filename: str) -> None:
    """The failing line of the test and the exception, on stderr (the judge's own frames left out)."""
    try:
        import traceback

        frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<")]
        lines = traceback.format_list(frames) + traceback.format_exception_only(type(err), err)
        sys.stderr.write(f"{filename} failed:\n" + "".join(lines))
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - reporting must never break the judge
        pass


def judge(job: dict, channel: Channel, report) -> None:
    """Wait for the program to have run the solution; then setup, then each test; `report(text)` writes one
    verdict line (`pass <i>`, `done`)."""
    try:
        loaded = channel.receive()
    except ProgramGone:
        return
    if loaded[0] != "ok":
        return  # the solution raised (its traceback is in the output): no test can pass
    namespace = {"__name__": "__test__", "__builtins__": Names(channel)}
    if job["setup"] and not run_piece(job["setup"], "setup.py", namespace):
        return
    for i, (test, counts) in enumerate(job["tests"]):
        subject = job["subjects"][i]
        own = frozenset()
        if subject and (subject in BUILTIN_NAMES or subject in STDLIB) and not channel.gone:
            try:
                own = frozenset([subject]) if channel.ask("has", subject) is True else own
            except BaseException:  # noqa: BLE001 - the program is gone: the test fails below
                pass
        namespace["__builtins__"] = Names(channel, own)
        passed = run_piece(test, f"test_{i}.py", namespace) and not channel.gone
        if channel.gone:
            return  # the program ended or broke the channel: nothing after this counts
        if passed and counts:
            report(f"pass {i}")
        elif not passed and not counts:
            return  # a statement the tests depend on failed: the remaining tests cannot pass
    report("done")
