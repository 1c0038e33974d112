"""Forged verdicts: a program that does not solve its task must not pass its tests, whatever it does to its process;
and correct programs in the MBPP and HumanEval styles still pass.

Each forge below is a solution to a task it does not solve (`f(1) == 2, f(2) == 5, f(10) == 17`): it passes only if
it reads the tests, the nonce or the verdict pipe, or fakes the assertion machinery. On a sandbox that runs tests in
the program's own process, the first ones pass (the job sits in its memory); here every one must score 0, in strong
and weak mode. Why each one fails is written next to it (and in docs/rewards.md).
"""

import json
import os
import warnings

import pytest

from deepseek_rl.sandbox import sandbox

TESTS = ["assert f(1) == 2", "assert f(2) == 5", "assert f(10) == 17"]
LIMITS = sandbox.Limits(timeout=4.0)
MODES = ["strong", "weak"]

FORGES = {
    # the tests and the nonce are not in the program's process (forked before the harness read its job): nothing
    # to find on the stack, in gc or through inspect; what it writes to its descriptors is output or a reply
    "read the tests off the stack": """
import re, sys
table = {}
frame = sys._getframe()
while frame is not None:
    for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
        job = value if isinstance(value, dict) else {}
        for test in job.get("tests", []):
            found = re.match(r"assert f\\((.*)\\) == (.*)", test[0] if isinstance(test, (list, tuple)) else test)
            if found:
                table[eval(found.group(1))] = eval(found.group(2))
    frame = frame.f_back
def f(x):
    return table[x]
""",
    "read the tests through gc": """
import gc, re
table = {}
for obj in gc.get_objects():
    if isinstance(obj, (list, tuple, dict)):
        for item in (obj.values() if isinstance(obj, dict) else obj):
            text = item[0] if isinstance(item, (list, tuple)) and item and isinstance(item[0], str) else item
            found = re.match(r"assert f\\((.*)\\) == (.*)", text) if isinstance(text, str) else None
            if found:
                table[eval(found.group(1))] = eval(found.group(2))
def f(x):
    return table[x]
""",
    "find the nonce with inspect and write verdicts to every descriptor": """
import gc, inspect, os, re
texts = [repr(info.frame.f_locals) for info in inspect.stack()]
texts += [o if isinstance(o, str) else repr(o) for o in gc.get_objects() if isinstance(o, (str, dict))]
tokens = set(re.findall(r"[0-9a-f]{32}", " ".join(texts))) | {"0" * 32}
lines = "".join(f"{t} ready\\n{t} pass 0\\n{t} pass 1\\n{t} pass 2\\n{t} done\\n" for t in tokens).encode()
for fd in range(1024):
    try:
        os.write(fd, lines)
    except OSError:
        pass
for pid in ("self", "1", str(os.getppid())):
    for name in os.listdir(f"/proc/{pid}/fd") if os.path.isdir(f"/proc/{pid}/fd") else []:
        try:
            with open(f"/proc/{pid}/fd/{name}", "wb") as out:
                out.write(lines)
        except OSError:
            pass
""",
    # the judge's replies come only from the program, and a reply is only a value: True or any constant is not 5
    "answer every request of the judge with True": """
import gc, os
encode = next(o for o in gc.get_objects() if callable(o) and getattr(o, "__name__", "") == "encode")
frame = encode(("ok", True), lambda value: 0)
for fd in range(3, 64):
    try:
        os.write(fd, len(frame).to_bytes(4, "big") + frame * 1)
    except OSError:
        pass
def f(x):
    return True
""",
    # the asserts, builtins, math and the comparison run in the judge: patching them here patches nothing there
    "patch the assertion machinery": """
import builtins, math, os, sys
class Passed(Exception):
    pass
builtins.AssertionError = Passed
builtins.isinstance = lambda *args: True
math.isclose = lambda *args, **kwargs: True
sys.exit = os._exit = lambda *args: None
sys.excepthook = lambda *args: None
def f(x):
    return 0
""",
    # the judge imports only from the interpreter's read-only standard library, never from the working folder
    "plant modules the tests import in its folders": """
import os
for folder in (".", os.environ["TMPDIR"]):  # the sandbox's own folders (weak mode could write the machine's /tmp)
    for name, body in (("math", "isclose = lambda *a, **k: True"), ("builtins", "set = lambda *a: 0")):
        try:
            with open(os.path.join(folder, name + ".py"), "w") as module:
                module.write(body)
        except OSError:
            pass
def f(x):
    return 0
""",
    # a builtin the program redefines stays the judge's where the test also uses it for the expected value
    "shadow the builtins the tests use": """
def set(*args):
    return 0
def sorted(*args):
    return []
def isinstance(*args):
    return True
def abs(x):
    return 0
def f(x):
    return [x]
""",
    # a program's object takes part in == and - only with another of its objects, never with the test's values
    "an object that equals everything": """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __sub__(self, other): return 0
    def __rsub__(self, other): return 0
    def __lt__(self, other): return True
    def __gt__(self, other): return True
    def __abs__(self): return 0
    def __iter__(self): return iter([2, 5, 17])
    def __hash__(self): return 0
class Int(int):
    def __eq__(self, other): return True
    __hash__ = int.__hash__
def f(x):
    return Anything() if x != 10 else Int(0)
""",
    # exiting ends the program's process: the judge sees the pipe end and counts nothing after it
    "exit with status 0 before the tests": "import os\nos._exit(0)",
    "exit with status 0 inside the call": "import os\ndef f(x):\n    os._exit(0)",
    "raise SystemExit inside the call": "def f(x):\n    raise SystemExit(0)",
    "kill itself": "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)",
    # output is output: the verdict pipe is the judge's alone, and its lines carry a nonce the program never saw
    "print look-alike verdict lines": """
import sys
for i in range(3):
    print(f"pass {i}")
    print(f"{'0' * 32} pass {i}", file=sys.stderr)
print("done\\nready")
def f(x):
    return -1
""",
}

# the same forges against tests written the other ways (math.isclose, abs(...) < eps, set(...), isinstance)
OTHER_TESTS = [
    "import math\nassert math.isclose(f(1), 2.5)",
    "assert abs(f(2) - 5.5) < 1e-9",
    "assert set(f(3)) == set([1, 2])",
    "assert isinstance(f(4), int) and sorted([f(4), 3]) == [3, 9]",
]


@pytest.fixture(scope="module")
def modes():
    warnings.simplefilter("ignore", RuntimeWarning)  # weak mode's one-time warning
    available = [m for m in MODES if m != "strong" or sandbox.isolation() == "strong"]
    if os.environ.get("CI") and "strong" not in available:
        pytest.fail("CI runs as root and must check the strong sandbox too")
    return available


@pytest.mark.parametrize("name", list(FORGES))
def test_forged_verdicts_score_zero(name, modes):
    for mode in modes:
        for tests in (TESTS, OTHER_TESTS):
            result = sandbox.execute(FORGES[name], tests, limits=LIMITS, mode=mode)
            assert result.passed == 0, (mode, tests, result.output[-2000:])


def test_a_program_cannot_turn_its_zero_into_a_sandbox_error(modes):
    """Whatever a program does the moment it runs (exit, kill itself, its process group or its parent), the result
    is a score, never SandboxError: an error is not a 0 (with reward.on_failure=None it leaves the sample unscored),
    so the sandbox says `ready` once its own set-up is done and before the program runs anything. Repeated, since
    the window it closes was a race."""
    attempts = [
        "import os\nos._exit(0)",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        "import os, signal\nos.killpg(0, signal.SIGKILL)",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    ]
    for mode in modes:
        for solution in attempts * 5:
            assert sandbox.execute(solution, TESTS, limits=LIMITS, mode=mode).passed == 0


def test_the_forges_would_pass_if_the_tests_ran_in_the_program(modes):
    """The reading forges are not vacuous: given the job's tests in their own memory (as a sandbox that runs the
    tests in the program's process has them), they pass."""
    for name in ("read the tests off the stack", "read the tests through gc"):
        exposed = f"tests = {[[test, True] for test in TESTS]!r}\njob = {{'tests': tests}}\n" + FORGES[name]
        for mode in modes:
            assert sandbox.execute(exposed, TESTS, limits=LIMITS, mode=mode).passed == 3, name


HUMANEVAL = [  # (solution, test in HumanEval's form: METADATA, check(candidate), then check(entry_point))
    (
        "truncate_number",
        "def truncate_number(number: float) -> float:\n    return number % 1.0\n",
        "METADATA = {'author': 'jt', 'dataset': 'test'}\n\n\ndef check(candidate):\n"
        "    assert candidate(3.5) == 0.5\n    assert abs(candidate(1.33) - 0.33) < 1e-6\n"
        "    assert abs(candidate(123.456) - 0.456) < 1e-6\n\ncheck(truncate_number)",
    ),
    (
        "intersperse",
        "from typing import List\n\ndef intersperse(numbers: List[int], delimeter: int) -> List[int]:\n"
        "    if not numbers:\n        return []\n    result = []\n    for n in numbers[:-1]:\n"
        "        result.append(n)\n        result.append(delimeter)\n    result.append(numbers[-1])\n"
        "    return result\n",
        "def check(candidate):\n    assert candidate([], 7) == []\n"
        "    assert candidate([5, 6, 3, 2], 8) == [5, 8, 6, 8, 3, 8, 2]\n"
        "    assert candidate([2, 2, 2], 2) == [2, 2, 2, 2, 2]\n\ncheck(intersperse)",
    ),
    (  # a generator, a Counter, a namedtuple, a dict view, an exception the test expects
        "evens",
        "import collections\nPoint = collections.namedtuple('Point', 'x y')\n"
        "def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n"
        "def counts(text):\n    return collections.Counter(text)\n"
        "def mid(a, b):\n    return Point((a.x + b.x) / 2, (a.y + b.y) / 2)\n"
        "def keys(d):\n    return d.keys()\n"
        "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n",
        "import math\n\ndef check(candidate):\n    assert list(candidate(7)) == [0, 2, 4, 6]\n"
        "    assert sum(candidate(10)) == 20\n    assert counts('abca') == {'a': 2, 'b': 1, 'c': 1}\n"
        "    assert mid(Point(0, 0), Point(2, 4)) == (1.0, 2.0)\n    assert keys({1: 2, 3: 4}) == {1, 3}\n"
        "    assert math.isclose(root(2), 1.4142135623730951)\n"
        "    try:\n        root(-1)\n    except ValueError:\n        pass\n    else:\n        raise AssertionError\n\n"
        "check(evens)",
    ),
    (  # objects of the program's classes, built by the tests, passed back to it; printing while tested
        "Stack",
        "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n"
        "        print('push', x)\n        self.items.append(x)\n        return self\n"
        "    def __len__(self):\n        return len(self.items)\n    def __iter__(self):\n"
        "        return iter(self.items)\n    def __eq__(self, other):\n"
        "        return isinstance(other, Stack) and self.items == other.items\n",
        "def check(candidate):\n    s = candidate().push(1).push(2)\n    assert len(s) == 2 and list(s) == [1, 2]\n"
        "    assert s == candidate().push(1).push(2) and s != candidate()\n    assert s.items[-1] == 2\n"
        "    assert isinstance(s, candidate)\n\ncheck(Stack)",
    ),
]


@pytest.mark.parametrize("index", range(len(HUMANEVAL)))
def test_humaneval_style_solutions_pass(index, modes):
    entry, solution, test = HUMANEVAL[index]
    for mode in modes:
        result = sandbox.execute(solution, test, limits=LIMITS, mode=mode)
        assert (result.passed, result.total, result.finished) == (1, 1, True), (mode, result.output[-2000:])
        wrong = sandbox.execute(f"{solution}\ndef {entry}(*args):\n    return [1]\n", test, limits=LIMITS, mode=mode)
        assert (wrong.passed, wrong.total) == (0, 1)


def test_mbpp_rows_pass_and_wrong_ones_fail_in_every_mode(shared, modes):
    rows = [json.loads(line) for line in (shared / "data" / "mbpp" / "mbpp.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["task_id"] in (2, 17, 88, 126, 367, 596, 621, 927)]  # setup, sum, sys, Counter
    for mode in modes:
        for row in picked:
            result = sandbox.execute(row["code"], row["test_list"], row["test_setup_code"], LIMITS, mode)
            assert (result.passed, result.total) == (3, 3), (mode, row["task_id"], result.output[-2000:])
        other = sandbox.execute(picked[1]["code"], picked[0]["test_list"], picked[0]["test_setup_code"], LIMITS, mode)
        assert other.passed == 0
