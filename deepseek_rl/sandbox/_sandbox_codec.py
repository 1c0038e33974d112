"""Plain data between a sandbox's judge and its program: a small tagged binary format, and length-prefixed frames.

The judge (trusted: it runs the tests) and the program (untrusted: it runs the solution) are separate processes that
talk only through two pipes. What crosses is plain data, rebuilt by the receiver as exact built-in types: None, bool,
int, float, complex, str, bytes, bytearray, list, tuple, dict (and its keys/values/items views), set, frozenset,
range, slice, Ellipsis, the built-in types themselves (`int`, `ValueError`), fractions.Fraction and
decimal.Decimal; every other object stays where it
lives and crosses as a handle (an integer the owner maps back to the object). So no bytes from the program can
become an object with behaviour of its own in the judge (no `__eq__` that is always True): the judge never calls
`pickle` or `marshal` on them, and this decoder builds nothing but the types above, within a size and depth limit.

An instance of a subclass of one of these types from outside `builtins` (a Counter, a namedtuple, an IntEnum)
crosses as both: its base type's value, which the judge compares, and a handle, so that it returns to the program
as the very object (and its own attributes, `p.x`, are asked of the program). The module imports only `builtins`:
the sandbox compiles it once in the caller and runs it in both processes, which import nothing of this package.
"""

import builtins

MAX_DEPTH = 200  # nesting of containers; deeper values cross as handles (sent) or are refused (received)
MAX_FRAME = 64 << 20  # bytes in one message


class CodecError(ValueError):
    """Bytes that are not a well-formed message (from a broken or hostile peer)."""


# name -> the built-in type of that name (int, list, ValueError, ...): types cross by name
BUILTIN_TYPES = {n: v for n, v in vars(builtins).items() if isinstance(v, type) and not n.startswith("_")}
CONTAINERS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"Z"}
# dict views cross as their items and are rebuilt as views of a fresh dict (a keys view still equals a set)
VIEWS = ((type({}.keys()), b"K"), (type({}.values()), b"V"), (type({}.items()), b"I"))
# a subclass instance from outside `builtins` (Counter, OrderedDict, namedtuple, IntEnum) crosses as its base
BASES = (int, float, complex, str, bytes, bytearray, dict, list, tuple, set, frozenset)


def _n(value: int) -> bytes:
    return value.to_bytes(4, "big")


def encode(value, handle) -> bytes:
    """`value` as bytes; `handle(obj)` returns the int handle of an object that does not cross as data (or raises
    TypeError where it cannot cross at all). RecursionError past MAX_DEPTH."""
    out = bytearray()
    _encode(value, handle, out, 0)
    return bytes(out)


def _encode(value, handle, out: bytearray, depth: int) -> None:  # noqa: C901 - one branch per type
    kind = type(value)
    if depth > MAX_DEPTH:
        raise RecursionError("a value nested too deeply to cross as data")
    if value is None or value is Ellipsis or kind is bool:
        out += b"N" if value is None else b"E" if value is Ellipsis else b"T" if value else b"F"
    elif kind is int:
        raw = value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
        out += b"i" + _n(len(raw)) + raw
    elif kind is float:
        raw = value.hex().encode()
        out += b"f" + _n(len(raw)) + raw
    elif kind is complex:
        out += b"c"
        _encode(value.real, handle, out, depth + 1)
        _encode(value.imag, handle, out, depth + 1)
    elif kind is str:
        raw = value.encode("utf-8", "surrogatepass")
        out += b"s" + _n(len(raw)) + raw
    elif kind is bytes or kind is bytearray:
        out += (b"b" if kind is bytes else b"a") + _n(len(value)) + value
    elif kind in CONTAINERS:
        out += CONTAINERS[kind] + _n(len(value))
        for item in value:
            _encode(item, handle, out, depth + 1)
    elif kind is dict:
        out += b"d" + _n(len(value))
        for key, item in value.items():
            _encode(key, handle, out, depth + 1)
            _encode(item, handle, out, depth + 1)
    elif kind is range or kind is slice:
        out += b"r" if kind is range else b"x"
        for part in (value.start, value.stop, value.step):
            _encode(part, handle, out, depth + 1)
    elif kind is type and BUILTIN_TYPES.get(value.__name__) is value:
        raw = value.__name__.encode()
        out += b"y" + _n(len(raw)) + raw
    elif kind.__module__ in ("fractions", "decimal") and kind.__qualname__ in ("Fraction", "Decimal"):
        raw = str(value).encode()
        out += (b"q" if kind.__qualname__ == "Fraction" else b"D") + _n(len(raw)) + raw
    else:
        for view, tag in VIEWS:
            if isinstance(value, view):
                out += tag
                _encode(list(value), handle, out, depth + 1)
                return
        if kind.__module__ != "builtins":
            for base in BASES:
                if isinstance(value, base):
                    out += b"w" + _n(handle(value))
                    _encode(str.__str__(value) if base is str else base(value), handle, out, depth + 1)
                    return
        out += b"h" + _n(handle(value))


class _Reader:
    def __init__(self, data: bytes, handle, wrap):
        self.data, self.at, self.handle, self.wrap = memoryview(data), 0, handle, wrap

    def take(self, n: int) -> bytes:
        end = self.at + n
        if n < 0 or end > len(self.data):
            raise CodecError("a message ends in the middle of a value")
        chunk = bytes(self.data[self.at : end])
        self.at = end
        return chunk

    def count(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def value(self, depth: int):  # noqa: C901 - one branch per tag
        if depth > MAX_DEPTH:
            raise CodecError("a value is nested too deeply")
        tag = self.take(1)
        if tag in SIMPLE:
            return SIMPLE[tag]
        if tag == b"i":
            return int.from_bytes(self.take(self.count()), "big", signed=True)
        if tag == b"f":
            return float.fromhex(self.take(self.count()).decode("ascii"))
        if tag == b"c":
            real, imag = self.value(depth + 1), self.value(depth + 1)
            if type(real) is not float or type(imag) is not float:
                raise CodecError("a complex number of something else than floats")
            return complex(real, imag)
        if tag == b"s":
            return self.take(self.count()).decode("utf-8", "surrogatepass")
        if tag == b"b":
            return self.take(self.count())
        if tag == b"a":
            return bytearray(self.take(self.count()))
        if tag in (b"l", b"t", b"S", b"Z"):
            items = [self.value(depth + 1) for _ in range(self._items())]
            return items if tag == b"l" else {b"t": tuple, b"S": set, b"Z": frozenset}[tag](items)
        if tag == b"d":
            n = self._items()
            return dict([(self.value(depth + 1), self.value(depth + 1)) for _ in range(n)])
        if tag in (b"r", b"x"):
            parts = [self.value(depth + 1) for _ in range(3)]
            if tag == b"r" and not all(type(p) is int for p in parts):
                raise CodecError("a range of something else than ints")
            return range(*parts) if tag == b"r" else slice(*parts)
        if tag == b"y":
            name = self.take(self.count()).decode("ascii")
            if name not in BUILTIN_TYPES:
                raise CodecError(f"{name!r} is not a built-in type")
            return BUILTIN_TYPES[name]
        if tag in (b"q", b"D"):
            text = self.take(self.count()).decode("ascii")
            if tag == b"q":
                from fractions import Fraction

                return Fraction(text)
            from decimal import Decimal

            return Decimal(text)
        if tag in (b"K", b"V", b"I"):
            items = self.value(depth + 1)
            if type(items) is not list:
                raise CodecError("a dict view of something else than a list")
            if tag == b"K":
                return dict.fromkeys(items).keys()
            return dict(enumerate(items)).values() if tag == b"V" else dict(items).items()
        if tag == b"h":
            return self.handle(self.count())
        if tag == b"w":
            n = self.count()
            value = self.value(depth + 1)
            if type(value) not in BASES:
                raise CodecError("a wrapped value of something else than a base type")
            return self.wrap(value, n)
        raise CodecError(f"unknown tag {tag!r}")

    def _items(self) -> int:
        n = self.count()
        if n > len(self.data) - self.at:  # every item takes at least one byte
            raise CodecError("a container claims more items than the message holds")
        return n


SIMPLE = {b"N": None, b"E": Ellipsis, b"T": True, b"F": False}


def decode(data: bytes, handle, wrap=None):
    """The value that `encode` wrote; `handle(n)` returns the object that handle n stands for, `wrap(value, n)`
    the receiver's view of a subclass instance (default: the object of handle n). CodecError on anything malformed
    (and on any error while rebuilding: an unhashable set item, a bad float)."""
    reader = _Reader(data, handle, wrap or (lambda value, n: handle(n)))
    try:
        value = reader.value(0)
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError, RecursionError, ArithmeticError) as err:
        raise CodecError(f"a malformed value ({type(err).__name__}: {err})") from None
    if reader.at != len(data):
        raise CodecError("bytes after the end of a message")
    return value


def send(fd: int, message: bytes, write) -> None:
    """One frame: 4-byte length, then the message (`write` is os.write, passed in to keep imports out)."""
    data = memoryview(_n(len(message)) + message)
    while data:
        data = data[write(fd, data) :]


def receive(fd: int, read) -> bytes | None:
    """One frame's message, or None at the end of the pipe. CodecError for a frame over MAX_FRAME or cut short."""
    head = _exactly(fd, 4, read)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_FRAME:
        raise CodecError(f"a message of {size} bytes (the limit is {MAX_FRAME})")
    body = _exactly(fd, size, read)
    if body is None:
        raise CodecError("the pipe ended in the middle of a message")
    return body


def _exactly(fd: int, n: int, read) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
