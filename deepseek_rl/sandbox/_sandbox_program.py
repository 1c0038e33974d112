"""The program side of a code sandbox: the process that runs the untrusted code and answers for its objects.

`_sandbox_init.py` forks this process first thing, before it reads its job, so nothing of the job was ever in its
memory: not the tests, not the nonce. Its configuration (the solution, the uid, the resource limits, the file
descriptors it keeps, and this code, compiled by the caller) arrives on a pipe; it enters the sandbox's root and
closes every other descriptor (the verdict pipe's too). The prologue, before any untrusted code runs: become the
sandbox's uid (when the sandbox runs as root), raise its own OOM score (the kernel kills it first), a parent-death
signal, the resource limits; then the solution runs as `__solution__`.

Two modes:
- tests: report whether the solution ran (`("ok", None)` or `("raise", name, message)`), then answer the judge's
  requests (`_sandbox_judge.py`) until the request pipe ends: look a global up, call an object, get or set an
  attribute, an operator, the next items of an iterator. Answers are plain data or handles (`_sandbox_codec.py`).
  Whatever the program does to this process (patch this code, write to its pipes, exit) it can only change its
  own answers; the verdict is the judge's.
- session (tool calls with state): run each program read from the command pipe in one `__main__` namespace and
  write `<nonce> end <k>` or `fail <k>` to the status pipe. These markers are not verdicts (no reward reads them):
  a program can misreport only its own call.
"""

import builtins
import operator
import os
import sys

PR_SET_PDEATHSIG = 1

BUILTIN_OPS = "len bool str repr int float complex next iter reversed dir divmod round format isinstance issubclass"
OPERATOR_OPS = "index neg pos abs invert getitem setitem delitem eq ne lt le gt ge add sub mul truediv floordiv mod pow"
OPS = {name: getattr(builtins, name) for name in BUILTIN_OPS.split()}
OPS.update({name: getattr(operator, name) for name in OPERATOR_OPS.split()})
OPS.update({"matmul": operator.matmul, "and": operator.and_, "or": operator.or_, "xor": operator.xor})
OPS.update({"lshift": operator.lshift, "rshift": operator.rshift})
OPS.update({name: getattr(__import__("math"), name) for name in ("floor", "ceil", "trunc")})


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the program may have replaced or closed its streams
            pass


def run(source: str, filename: str, namespace: dict) -> bool:
    """Execute untrusted code; False (its traceback on stderr, this file's frames left out) when it raises."""
    try:
        exec(compile(source, filename, "exec"), namespace)
        return True
    except BaseException as err:  # noqa: BLE001 - untrusted code may raise anything, exit() included
        try:
            flush()  # what it printed before the error comes first
            import traceback

            tb = err.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename.startswith("<"):
                tb = tb.tb_next
            traceback.print_exception(type(err), err, tb)
        except BaseException:  # noqa: BLE001
            pass
        return False


def prologue(config: dict) -> dict:
    """Drop privileges and set limits (exit 3 if they cannot be set); `exit`/`quit` as `site` adds them; the
    namespace the untrusted code runs in."""
    try:
        try:
            with open("/proc/self/oom_score_adj", "w") as adj:
                adj.write("1000")
        except OSError:
            pass  # no /proc (a masked one in a user namespace)
        uid = config["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        import ctypes  # already loaded by the harness this process was forked from
        import resource

        if ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0) != 0:  # SIGKILL when the harness dies
            raise OSError("prctl(PR_SET_PDEATHSIG) failed")

        for which, soft, hard in config["rlimits"]:
            resource.setrlimit(which, (soft, hard))
    except (OSError, ValueError) as err:  # setrlimit raises ValueError for a limit above the hard one
        print(f"sandbox: cannot drop privileges or set limits: {err}", file=sys.stderr)
        os._exit(3)
    import _sitebuiltins

    builtins.exit = builtins.quit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    sys.argv = [""]
    return {"__name__": config["name"], "__builtins__": builtins}


def answer(request: tuple, namespace: dict):
    """The program's answer to one request from the judge."""
    op = request[0]
    if op == "global":
        if request[1] in namespace:
            return namespace[request[1]]
        raise NameError(f"name {request[1]!r} is not defined")
    if op == "has":
        return request[1] in namespace
    if op == "call":
        return request[1](*request[2], **request[3])
    if op == "getattr":
        return getattr(request[1], request[2])
    if op == "setattr":
        return setattr(request[1], request[2], request[3])
    if op == "delattr":
        return delattr(request[1], request[2])
    if op == "op":
        return OPS[request[1]](*request[2])
    if op == "take":
        items, iterator = [], request[1]
        for _ in range(request[2]):
            try:
                items.append(next(iterator))
            except StopIteration:
                return items, True
        return items, False
    raise ValueError(f"unknown request {op!r}")


def serve(config: dict, codec: dict, namespace: dict, loaded: bool) -> None:
    """Tests mode: report the solution's outcome, then answer requests until the judge closes the pipe."""
    encode, decode, send, receive = codec["encode"], codec["decode"], codec["send"], codec["receive"]
    requests, replies = config["requests"], config["replies"]
    objects: dict[int, object] = {}
    handles: dict[int, int] = {}  # id(object) -> handle; `objects` keeps each one alive, so ids stay unique

    def handle(value) -> int:
        n = handles.get(id(value))
        if n is None:
            n = handles[id(value)] = len(objects)
            objects[n] = value
        return n

    def reply(message: tuple) -> None:
        try:
            data = encode(message, handle)
            if len(data) > codec["MAX_FRAME"]:
                raise ValueError(f"a value of {len(data)} bytes is over what crosses to the judge")
        except BaseException as err:  # noqa: BLE001 - too deep, too big, or a subclass that fails to convert
            data = encode(("raise", type(err).__name__, _text(err)), handle)
        flush()
        send(replies, data, os.write)

    reply(("ok", None) if loaded else ("raise", "SolutionError", "the solution raised"))
    while loaded:
        frame = receive(requests, os.read)
        if frame is None:
            break
        try:
            message = ("ok", answer(decode(frame, objects.__getitem__), namespace))
        except BaseException as err:  # noqa: BLE001 - the program's exception is its answer
            message = ("raise", type(err).__name__, _text(err))
        reply(message)


def _text(err: BaseException) -> str:
    try:
        return str(err)[:2000]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return ""


def session(config: dict, namespace: dict) -> None:
    """Session mode: one program after another from the command pipe (4-byte length, UTF-8 source), in one
    namespace; `<nonce> end <k>` (ran) or `fail <k>` (raised) after each. Returns at the end of the pipe."""
    commands, status, nonce = config["commands"], config["status"], config["nonce"]

    def read(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = os.read(commands, n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    k = 0
    while (head := read(4)) is not None and (body := read(int.from_bytes(head, "big"))) is not None:
        ok = run(body.decode("utf-8", "replace"), f"call_{k}.py", namespace)
        flush()
        os.write(status, f"{nonce} {'end' if ok else 'fail'} {k}\n".encode())
        k += 1


def main(config: dict, codec: dict) -> None:
    namespace = prologue(config)
    os.write(config["started"], b"p")  # set up: from here on a failure is the program's
    os.close(config["started"])
    while os.read(config["go"], 1):  # the harness closes it once it has said `ready`
        pass
    os.close(config["go"])
    if config["mode"] == "session":
        session(config, namespace)
    else:
        loaded = run(config["solution"], "solution.py", namespace)
        serve(config, codec, namespace, loaded)
    flush()
    os._exit(0)
