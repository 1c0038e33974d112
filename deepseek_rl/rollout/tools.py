"""Tool-integrated reasoning: multi-turn rollouts in which the model runs Python in the sandbox mid-thought.

`ToolEngine` wraps either engine (built-in or vLLM) and keeps its contract; a completion becomes a trajectory of
model turns and tool outputs. For the B x G trajectories of a batch:

  1. every running trajectory continues from its prompt plus everything so far, until EOS, a stop string, the call
     marker (`rollout.tools.call_marker`, "```output" by default: ToRL's convention) or the end of its completion
     budget: one call of the inner engine for all of them, each row seeded by its row in the step's global batch and
     the turn, so 1 or N ranks sample alike;
  2. each trajectory that ended with the marker, with calls left, has its last ```python block run in a fresh
     sandbox or in its session (sandbox/sandbox.py: no network, limits, a timeout), all of them at once on a thread
     pool, never one after another; the output (stdout and stderr, a traceback or a timeout as text; cut to
     max_output_chars, keeping the beginning of a flood and the end of an error) is appended as
     `\\n<output>\\n```\\n`, tokenized: environment tokens;
  3. repeat until no trajectory runs. A trajectory whose tokens (its own and the environment's) reach
     max_completion_length is cut there and marked truncated.

Environment tokens are marked in `RolloutBatch.tool_mask`: they are context for the tokens after them, but the loss,
the KL and the entropy never count them (`RolloutBatch.sampled_mask`). Rewards see the whole trajectory as text.

State: by default each call is a new program and nothing persists. With `rollout.tools.session`, each trajectory
gets one sandbox process at its first call (sandbox/session.py) that runs its calls one after another in the same
namespace; it is killed when the trajectory ends (and at the end of generate, whatever happens). A call that runs
over its time kills its session; the output says so and the next call starts with no state.

Isolation: the calls run as `reward.sandbox` says (strong, weak, auto: sandbox/sandbox.py), resolved once when the
engine is built, and by the pipeline before any model loads (`check_isolation`). A mode this machine cannot provide
(strong, or auto without strong isolation) stops the run with the sandbox's ConfigError; it is never turned into a
tool output that the model would read on every call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedTokenizerBase

from deepseek_rl.batch import PromptBatch, RolloutBatch
from deepseek_rl.config.rollout import RolloutConfig, ToolsConfig
from deepseek_rl.errors import ConfigError
from deepseek_rl.rollout.engine import RolloutEngine
from deepseek_rl.rollout.seeds import RowNoise, turn_seed
from deepseek_rl.sandbox.sandbox import Limits, SandboxError, execute, resolve_mode
from deepseek_rl.sandbox.session import SandboxSession

CODE_RE = re.compile(r"```python\n(.*?)```", re.DOTALL)
STATS = ("calls", "errors", "timeouts")


def last_code_block(text: str) -> str | None:
    """The code of the last complete ```python block in `text`.

    >>> last_code_block("```python\\nx = 1\\n```\\n```output\\n1\\n```\\n```python\\nprint(2*3)\\n```\\n```output")
    'print(2*3)\\n'
    """
    found = CODE_RE.findall(text)
    return found[-1] if found else None


def run_tool(code: str | None, cfg: ToolsConfig, mode: str, session: SandboxSession | None = None) -> tuple[str, str]:
    """Run one call, in a fresh sandbox or in the trajectory's `session`; returns (text to append after the
    marker, status: ok | error | timeout)."""
    if code is None:
        return "\nno ```python block to run before the call\n```\n", "error"
    try:  # 16 kB of output kept: an error's end too
        if session is not None:
            result = session.run(code, cfg.timeout)
        else:
            result = execute(code, [], limits=Limits(timeout=cfg.timeout), mode=mode)
    except ConfigError:
        raise  # the isolation cannot be had here: the run stops (never a tool output for the model to read)
    except (SandboxError, ValueError) as err:
        return f"\nthe tool could not run: {err}\n```\n", "error"
    # the harness's own frame is not the model's business (and would show a host path)
    text = "\n".join(line for line in result.output.strip().splitlines() if "_sandbox_init.py" not in line)
    status = "ok"
    if result.timed_out:
        text, status = (text + "\n" if text else "") + f"TimeoutError: the call ran over {cfg.timeout:g} s", "timeout"
    elif not result.finished:
        status = "error"
    if session is not None and not session.alive:
        text += "\n[the session ended: the next call starts with no state]"
    cut, keep = len(text) - cfg.max_output_chars, cfg.max_output_chars
    if cut > 0 and status == "ok":  # a flood: its beginning
        text = text[:keep] + f"\n... [{cut} more characters cut]"
    elif cut > 0:  # a traceback or a timeout: its end, where the error is
        text = f"[{cut} characters cut] ...\n" + text[-keep:]
    return f"\n{text}\n```\n", status


@dataclass
class Trajectory:
    """One row's completion so far: tokens with their origin, the engine's log-probs, and its calls."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    tool: list[int] = field(default_factory=list)  # 1 on environment tokens
    logprobs: list[float] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATS, 0))
    running: bool = True
    truncated: bool = False


class ToolEngine:
    """Multi-turn rollouts with a Python tool on top of `inner` (see the module docstring)."""

    def __init__(self, inner: RolloutEngine, cfg: ToolsConfig, eos_ids: list[int], sandbox_mode: str = "auto"):
        # strong or weak, decided now: ConfigError when reward.sandbox asks for isolation this machine lacks
        self.inner, self.cfg, self.eos_ids, self.mode = inner, cfg, set(eos_ids), resolve_mode(sandbox_mode)
        self.tokenizer: PreTrainedTokenizerBase = inner.tokenizer
        self.pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="tool")

    @contextmanager
    def session(self) -> Iterator[None]:
        with self.inner.session():
            yield

    def policy_updated(self) -> None:
        self.inner.policy_updated()

    def pop_sync_seconds(self) -> float | None:
        return self.inner.pop_sync_seconds()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.inner.close()

    def generate(self, prompts: PromptBatch, group_size: int, cfg: RolloutConfig, noise: RowNoise) -> RolloutBatch:
        global_rows = noise.global_rows(len(prompts) * group_size)
        unpadded = [
            ids[mask.bool()].tolist() for ids, mask in zip(prompts.input_ids, prompts.attention_mask, strict=True)
        ]
        trajectories = [Trajectory(unpadded[i // group_size]) for i in range(len(global_rows))]
        sessions: dict[int, SandboxSession] = {}  # rollout.tools.session: trajectory -> its sandbox
        with_logprobs, device = True, prompts.input_ids.device
        try:
            for turn in range(self.cfg.max_tool_calls + 1):
                self.end_sessions(sessions, [i for i in sessions if not trajectories[i].running])
                active = [i for i, t in enumerate(trajectories) if t.running]
                if not active:
                    break
                budget = max(cfg.max_completion_length - len(trajectories[i].tokens) for i in active)
                segment_cfg = replace(
                    cfg, max_completion_length=budget, stop_strings=[*cfg.stop_strings, self.cfg.call_marker]
                )
                batch = context_batch([trajectories[i] for i in active], self.tokenizer.pad_token_id)
                rows_now = [global_rows[i] for i in active]
                out = self.inner.generate(batch, 1, segment_cfg, noise.for_rows(turn_seed(noise.seed, turn), rows_now))
                with_logprobs, device = with_logprobs and out.sampling_logprobs is not None, out.completion_ids.device
                calls = self.extend(trajectories, active, out, cfg.max_completion_length)
                for i, (text, status) in zip(calls, self.run_calls(trajectories, calls, sessions), strict=True):
                    self.append_output(trajectories[i], text, status, cfg.max_completion_length)
        finally:
            self.end_sessions(sessions, list(sessions))  # whatever happens, no sandbox outlives the rollout
        return self.assemble(prompts, group_size, trajectories, with_logprobs, device)

    def run_calls(
        self, trajectories: list[Trajectory], calls: list[int], sessions: dict[int, SandboxSession]
    ) -> list[tuple[str, str]]:
        """Run the last code block of each calling trajectory, all at once (in its session with
        rollout.tools.session, started at its first call); (output text, status) for each."""
        if self.cfg.session:
            sessions.update({i: SandboxSession(self.mode) for i in calls if i not in sessions})

        def call(i: int) -> tuple[str, str]:
            return run_tool(last_code_block(self.text(trajectories[i])), self.cfg, self.mode, sessions.get(i))

        return list(self.pool.map(call, calls))

    def end_sessions(self, sessions: dict[int, SandboxSession], rows: list[int]) -> None:
        """Kill the sessions of these trajectories (they ended)."""
        list(self.pool.map(SandboxSession.close, [sessions.pop(i) for i in rows]))

    def text(self, trajectory: Trajectory) -> str:
        return self.tokenizer.decode(trajectory.tokens, skip_special_tokens=True)

    def extend(self, trajectories: list[Trajectory], active: list[int], out: RolloutBatch, limit: int) -> list[int]:
        """Append each active row's new model tokens; returns the rows that made a tool call."""
        calls = []
        for row, i in enumerate(active):
            t = trajectories[i]
            mask = out.completion_mask[row].bool()
            new = out.completion_ids[row][mask].tolist()[: limit - len(t.tokens)]
            t.tokens += new
            t.tool += [0] * len(new)
            if out.sampling_logprobs is not None:
                t.logprobs += out.sampling_logprobs[row][mask].tolist()[: len(new)]
            tail = self.tokenizer.decode(new[-len(self.cfg.call_marker) - 4 :], skip_special_tokens=True)
            called = bool(new) and new[-1] not in self.eos_ids and self.cfg.call_marker in tail
            if len(t.tokens) >= limit and not (new and new[-1] in self.eos_ids):
                t.running, t.truncated = False, True
            elif called and t.stats["calls"] < self.cfg.max_tool_calls:
                calls.append(i)
            else:
                t.running = False
        return calls

    def append_output(self, t: Trajectory, text: str, status: str, limit: int) -> None:
        """The tool's output as environment tokens (cut at the budget, which then ends the trajectory)."""
        t.stats["calls"] += 1
        t.stats["errors"] += status == "error"
        t.stats["timeouts"] += status == "timeout"
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: limit - len(t.tokens)]
        t.tokens += ids
        t.tool += [1] * len(ids)
        t.logprobs += [0.0] * len(ids)
        if len(t.tokens) >= limit:
            t.running, t.truncated = False, True

    def assemble(
        self,
        prompts: PromptBatch,
        group_size: int,
        trajectories: list[Trajectory],
        with_logprobs: bool,
        device: torch.device,
    ) -> RolloutBatch:
        n = len(trajectories)
        width = max(1, max(len(t.tokens) for t in trajectories))
        ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask, tool = torch.zeros((n, width), dtype=torch.long), torch.zeros((n, width), dtype=torch.long)
        logprobs = torch.zeros((n, width))
        for i, t in enumerate(trajectories):
            k = len(t.tokens)
            ids[i, :k], mask[i, :k], tool[i, :k] = torch.tensor(t.tokens, dtype=torch.long), 1, torch.tensor(t.tool)
            if with_logprobs:
                logprobs[i, :k] = torch.tensor(t.logprobs)
        return RolloutBatch.of_prompts(
            prompts, group_size, ids, mask, torch.tensor([t.truncated for t in trajectories]),
            [self.text(t) for t in trajectories], device,
            sampling_logprobs=logprobs if with_logprobs else None, tool_mask=tool,
            tool_stats={k: torch.tensor([t.stats[k] for t in trajectories]) for k in STATS},
        )  # fmt: skip


def context_batch(trajectories: list[Trajectory], pad_id: int) -> PromptBatch:
    """Each trajectory's prompt plus everything so far, left-padded: the next turn's prompts."""
    contexts = [t.prompt + t.tokens for t in trajectories]
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, context in enumerate(contexts):
        ids[row, width - len(context) :] = torch.tensor(context, dtype=torch.long)
        mask[row, width - len(context) :] = 1
    return PromptBatch(input_ids=ids, attention_mask=mask, texts=[""] * len(contexts), columns={})


def check_isolation(cfg: RolloutConfig, sandbox_mode: str) -> None:
    """With rollout.tools.enabled, decide the sandbox's isolation now (before any model loads): ConfigError when
    `sandbox_mode` (reward.sandbox) cannot be had on this machine, as for code rewards."""
    if cfg.tools.enabled:
        resolve_mode(sandbox_mode)


def with_tools(engine: RolloutEngine, cfg: RolloutConfig, eos_ids: list[int], sandbox_mode: str = "auto"):
    """The engine itself, or wrapped for multi-turn tool use when rollout.tools.enabled."""
    return ToolEngine(engine, cfg.tools, eos_ids, sandbox_mode) if cfg.tools.enabled else engine
