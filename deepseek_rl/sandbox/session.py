"""A code sandbox that keeps its state between programs: one per tool-using trajectory (`rollout.tools.session`).

`SandboxSession` starts the same sandbox as `sandbox.execute` (same isolation, uid, limits, tmpfs root), but the
program process stays alive: each `run(code)` sends the code on a command pipe, the harness executes it in the
namespace of the calls before it (variables, imports and files persist), and reports the end of the call. The
caller enforces each call's timeout: a call that runs over it kills the whole sandbox (its state is lost, which the
output says), and the next call starts a fresh one. `close()` kills it; so does the trainer's death, at once (the
harness's stdin, its lifeline, ends), and, as a backstop for a session the trainer forgets, the harness's own wall
clock (`LIFETIME`).

Nothing here waits without a deadline: the command pipe is non-blocking, so a program that stops reading it (it
stopped itself, or shrank the pipe and never reads) cannot make the trainer block in a write. A call that cannot be
delivered within its timeout is a timeout like any other: the sandbox is killed and the next call starts afresh.
"""

from __future__ import annotations

import os
import selectors
import time
from dataclasses import replace

from deepseek_rl.sandbox.launcher import Launched, Limits, SandboxError, launch
from deepseek_rl.sandbox.sandbox import Execution, resolve

LIFETIME = 1800.0  # seconds a session's sandbox may live at most (the harness kills it after that)


class SandboxSession:
    """One sandbox process that runs program after program in the same namespace (see the module docstring)."""

    def __init__(self, mode: str = "auto", limits: Limits | None = None):
        self.mode, self.limits = mode, limits or Limits()
        self.sandbox: Launched | None = None
        self.calls = 0  # calls in the current sandbox
        self.started = False
        self.restarts = 0  # sandboxes started after the first one (after a timeout or an exit)

    @property
    def alive(self) -> bool:
        return self.sandbox is not None and self.sandbox.proc.poll() is None

    def start(self) -> None:
        mode, flavor = resolve(self.mode)
        command_r, self.command_fd = os.pipe()
        try:  # the harness's own clock is the lifetime; each call's timeout is ours
            self.sandbox = launch(mode, flavor, replace(self.limits, timeout=LIFETIME), command_fd=command_r)
        except SandboxError:
            os.close(self.command_fd)
            raise
        finally:
            os.close(command_r)
        os.set_blocking(self.command_fd, False)  # a write never waits for a program that stopped reading
        self.selector = selectors.DefaultSelector()
        for fd in (self.sandbox.proc.stdout.fileno(), self.sandbox.verdict_fd):
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ)
        self.verdict, self.calls = b"", 0
        ready = f"{self.sandbox.nonce} ready\n".encode()
        output, status = self._collect({"ready": ready}, time.monotonic() + 30.0)
        if status != "ready":
            text = output.decode("utf-8", "replace").strip()[-500:]
            self.close()
            raise SandboxError(f"the {mode} session sandbox did not start: {text or 'no output'}")

    def run(self, code: str, timeout: float) -> Execution:
        """Run `code` after the calls before it: its output, whether it ran without raising (`finished`), whether
        it ran over `timeout` (or could not be delivered within it). A call that runs over its time or ends the
        process closes the session."""
        start = time.monotonic()
        if not self.alive:
            self.close()
            self.restarts += self.started
            self.start()
            self.started = True
        deadline = time.monotonic() + timeout  # the call's own time, after a fresh sandbox's start-up
        k, mode = self.calls, self.sandbox.mode
        self.calls += 1
        data = code.encode()
        try:
            delivered = self._send(len(data).to_bytes(4, "big") + data, deadline)
        except OSError:
            self.close()
            return Execution(0, 0, False, False, "the session had ended; run the call again", 0.0, mode)
        if not delivered:  # the program stopped reading its commands: the call's time ran out in the write
            self.close()
            return Execution(0, 0, False, True, "", time.monotonic() - start, mode)
        markers = {status: f"{self.sandbox.nonce} {status} {k}\n".encode() for status in ("end", "fail")}
        output, status = self._collect(markers, deadline)
        if status not in markers:
            self.close()  # a call over its time, or a program that ended its process: the state is gone
        text = output.decode("utf-8", "replace")
        return Execution(0, 0, status == "end", status == "timeout", text, time.monotonic() - start, mode)

    def _send(self, data: bytes, deadline: float) -> bool:
        """Write `data` to the command pipe before `deadline`; False when the sandbox would not take it in time.
        OSError when the pipe is closed (the sandbox is gone)."""
        view = memoryview(data)
        with selectors.DefaultSelector() as selector:
            selector.register(self.command_fd, selectors.EVENT_WRITE)
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if selector.select(timeout=min(remaining, 0.05)):
                    try:
                        view = view[os.write(self.command_fd, view) :]
                    except BlockingIOError:
                        pass
                elif self.sandbox.proc.poll() is not None:
                    raise BrokenPipeError("the session's sandbox is gone")
        return True

    def _collect(self, markers: dict[str, bytes], deadline: float) -> tuple[bytes, str]:
        """Read the program's output (kept up to the output cap) until one of `markers` arrives on the verdict pipe
        (its key is returned), or the deadline: timeout, or the sandbox is gone: exited."""
        out, cap, proc = bytearray(), self.limits.output_bytes, self.sandbox.proc
        out_fd = proc.stdout.fileno()
        exited_at = None
        while True:
            found = next((name for name, marker in markers.items() if marker in self.verdict), None)
            if found is not None:
                self.verdict = self.verdict.split(markers[found], 1)[1]
                if out_fd in self.selector.get_map():  # written before the marker: already in the pipe
                    try:
                        while chunk := os.read(out_fd, 65536):
                            out += chunk[: max(0, cap - len(out))]
                    except BlockingIOError:
                        pass
                return bytes(out), found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(out), "timeout"
            events = self.selector.select(timeout=min(remaining, 0.05)) if self.selector.get_map() else []
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self.selector.unregister(key.fd)
                elif key.fd == self.sandbox.verdict_fd:
                    self.verdict += chunk
                else:
                    out += chunk[: max(0, cap - len(out))]
            if not events and proc.poll() is not None:
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 0.2 or not self.selector.get_map():
                    return bytes(out), "exited"

    def close(self) -> None:
        """Kill the sandbox (every process in it) and remove its files; a later run() starts a new one."""
        if self.sandbox is None:
            return
        sandbox, self.sandbox = self.sandbox, None
        self.selector.close()
        os.close(self.command_fd)
        sandbox.kill()
