"""Tool-integrated reasoning: the multi-turn loop (scripted engine and real sandbox), the masking of environment
tokens out of the loss, demonstrations that do not train on tool outputs, and the demo and real-model recipes."""

import json
import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deepseek_rl.algo.losses import StepNormaliser, policy_loss
from deepseek_rl.algo.update import build_loss_inputs
from deepseek_rl.batch import PromptBatch, RolloutBatch, ScoredBatch
from deepseek_rl.config import AlgorithmConfig, RolloutConfig, ToolsConfig
from deepseek_rl.data.examples import tokenize_examples
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.rollout import tools
from deepseek_rl.rollout.engine import RolloutEngine
from deepseek_rl.rollout.seeds import RowNoise
from deepseek_rl.rollout.tools import ToolEngine, last_code_block, run_tool
from deepseek_rl.sandbox.sandbox import Limits, isolation
from deepseek_rl.sandbox.session import SandboxSession

from .conftest import run_cli

TOK = build_char_tokenizer()
EOS = TOK.eos_token_id
CALL = "```python\nprint(6*7)\n```\n```output"


class ScriptedEngine(RolloutEngine):
    """Answers each turn from a script: row -> list of texts, one per turn (EOS appended to the last one)."""

    def __init__(self, script: dict[int, list[str]]):
        self.tokenizer, self.script, self.calls = TOK, script, []

    def generate(self, prompts, group_size, cfg, noise):
        seed, rows = noise.seed, list(noise.rows)
        self.calls.append((seed, list(rows), cfg.max_completion_length))
        texts = []
        for row in rows:
            turn = sum(1 for _, called, _ in self.calls if row in called) - 1
            texts.append(self.script[row][turn])
        ids = [TOK(t, add_special_tokens=False)["input_ids"] for t in texts]
        ids = [i + [EOS] if not t.endswith("```output") else i for i, t in zip(ids, texts, strict=True)]
        ids = [i[: cfg.max_completion_length] for i in ids]
        width = max(len(i) for i in ids)
        out = torch.full((len(ids), width), TOK.pad_token_id)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, i in enumerate(ids):
            out[r, : len(i)], mask[r, : len(i)] = torch.tensor(i), 1
        n = len(ids)
        return RolloutBatch(
            out[:, :1], mask[:, :1], out, mask, torch.zeros(n, dtype=torch.bool), texts, [""] * n, {}, 1
        )


def prompts(n: int) -> PromptBatch:
    ids = torch.tensor([TOK("Q:6*7=", add_special_tokens=False)["input_ids"]] * n)
    return PromptBatch(ids, torch.ones_like(ids), ["Q:6*7="] * n, {"answer": ["42"] * n})


def test_code_blocks_and_sandbox_outputs():
    assert last_code_block("```python\nx=1\n```\n```output\n1\n```\n```python\ny=2\n```\n```output") == "y=2\n"
    assert last_code_block("no code ```output") is None
    cfg = ToolsConfig(enabled=True, timeout=1.0, max_output_chars=40)
    assert run_tool("print(6*7)", cfg, "auto") == ("\n42\n```\n", "ok")
    text, status = run_tool("1/0", cfg, "auto")
    assert status == "error" and "ZeroDivisionError" in text and "_sandbox_init" not in text
    text, status = run_tool("while True: pass", cfg, "auto")
    assert status == "timeout" and "TimeoutError: the call ran over 1 s" in text
    text, status = run_tool("print('x' * 1000)", cfg, "auto")  # a flood is cut and says so
    assert status == "ok" and text == "\n" + "x" * 40 + "\n... [960 more characters cut]\n```\n"
    assert run_tool(None, cfg, "auto")[1] == "error"
    text, _ = run_tool("import os; print(os.path.exists('/work/main'), os.getuid())", cfg, "auto")
    assert "False" in text or "True" in text  # it ran; the sandbox's own isolation is tested in test_sandbox.py


def test_the_loop_appends_outputs_as_environment_tokens():
    script = {  # by global row
        10: [f"<think>{CALL}", "</think><answer>42</answer>"],  # one call, then the answer
        11: ["<think></think><answer>41</answer>"],  # no call
        12: [CALL, CALL, CALL],  # keeps calling: stopped after max_tool_calls
    }
    inner = ScriptedEngine(script)
    engine = ToolEngine(inner, ToolsConfig(enabled=True, max_tool_calls=2), [EOS])
    cfg = RolloutConfig(max_prompt_length=16, max_completion_length=200)
    out = engine.generate(prompts(3), 1, cfg, RowNoise(5, 40, 10))
    assert out.completions[0] == f"<think>{CALL}\n42\n```\n</think><answer>42</answer>"
    assert out.completions[1] == "<think></think><answer>41</answer>"
    assert out.tool_stats["calls"].tolist() == [1, 0, 2]
    env = TOK("\n42\n```\n", add_special_tokens=False)["input_ids"]
    row0 = out.completion_ids[0][out.completion_mask[0].bool()].tolist()
    start = len(TOK(f"<think>{CALL}", add_special_tokens=False)["input_ids"])
    assert row0[start : start + len(env)] == env  # the sandbox's output, tokenized apart
    assert out.tool_mask[0].tolist()[start - 1 : start + len(env) + 1] == [0] + [1] * len(env) + [0]
    assert out.tool_mask[1].sum() == 0 and out.tool_mask[2].sum() == 2 * len(env)
    assert out.sampled_mask.sum() == out.completion_mask.sum() - out.tool_mask.sum()
    # turn k asks the inner engine for the running rows only, by their global row, with a seed of its own
    assert [(rows, seed) for seed, rows, _ in inner.calls] == [([10, 11, 12], 155), ([10, 12], 156), ([12], 157)]
    assert not out.truncated.any()


def test_the_budget_cuts_a_trajectory_and_marks_it():
    inner = ScriptedEngine({0: [CALL, "</think><answer>42</answer>"]})
    engine = ToolEngine(inner, ToolsConfig(enabled=True), [EOS])
    budget = len(TOK(CALL, add_special_tokens=False)["input_ids"]) + 3  # the output does not fit
    out = engine.generate(prompts(1), 1, RolloutConfig(max_completion_length=budget), RowNoise(0, 1))
    assert out.truncated.tolist() == [True] and out.completion_mask.sum() == budget
    assert out.tool_mask[0].sum() == 3 and len(inner.calls) == 1


def test_calls_of_a_batch_run_at_once(monkeypatch):
    """Four trajectories call the tool in the same turn: the four sandbox runs wait on each other (a barrier that
    would time out if they ran one after another)."""
    barrier = threading.Barrier(4, timeout=20)

    def together(code, cfg, mode, session=None):
        barrier.wait()
        return "\nok\n```\n", "ok"

    monkeypatch.setattr(tools, "run_tool", together)
    engine = ToolEngine(ScriptedEngine({i: [CALL, "done"] for i in range(4)}), ToolsConfig(enabled=True), [EOS])
    out = engine.generate(prompts(4), 1, RolloutConfig(max_completion_length=100), RowNoise(0, 4))
    assert out.tool_stats["calls"].tolist() == [1, 1, 1, 1]


def test_a_session_keeps_state_until_it_ends():
    """sandbox/session.py: variables, imports and files persist between calls; an error leaves the state; a call
    over its time kills the sandbox (every process in it), and the next call starts with no state."""
    session = SandboxSession(isolation(), Limits())
    assert session.run("import math\nx = 6\nopen('f', 'w').write('kept')", 2.0).finished
    first = session.sandbox.proc.pid
    result = session.run("print(x * 7, math.isqrt(49), open('f').read())\n1/0", 2.0)
    assert result.output.startswith("42 7 kept\n") and "ZeroDivisionError" in result.output and not result.finished
    assert session.run("print(x)", 2.0).output == "6\n" and session.sandbox.proc.pid == first
    slow = session.run("import subprocess\nsubprocess.Popen(['sleep', '60'])\nwhile True: pass", 1.0)
    assert slow.timed_out and not session.alive
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # the sandbox's first process is gone (and with it its pid namespace or session)
    fresh = session.run("print('x' in dir())", 2.0)
    assert fresh.output == "False\n" and session.restarts == 1
    session.close()
    assert not session.alive


def test_a_session_that_stops_reading_cannot_block_the_next_call():
    """A program that stops itself after its call (so it never reads the next command) must not make the trainer
    block in the write: a call larger than the pipe buffer times out within its own timeout and kills the session."""
    session = SandboxSession(isolation(), Limits())
    stop_later = (
        "import os, signal, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), os.kill(os.getpid(), signal.SIGSTOP))).start()"
    )
    try:
        assert session.run(stop_later, 2.0).finished
        time.sleep(0.8)  # the program has stopped itself
        results = []
        call = threading.Thread(target=lambda: results.append(session.run("x = '" + "a" * 300_000 + "'", 1.0)))
        start = time.monotonic()
        call.start()
        call.join(10.0)
        seconds = time.monotonic() - start
        if call.is_alive():  # blocked in the write: free the thread before failing
            session.sandbox.kill()
            call.join()
        assert seconds < 3.0, f"the call blocked for {seconds:.1f} s"
        assert results[0].timed_out and not results[0].finished and not session.alive
        text, status = run_tool("print(1)", ToolsConfig(enabled=True, timeout=2.0), isolation(), session)
        assert (text, status) == ("\n1\n```\n", "ok") and session.restarts == 1  # the next call starts afresh
    finally:
        session.close()


def test_tool_sessions_follow_their_trajectories():
    """With rollout.tools.session, a trajectory's second call sees its first call's variables, another
    trajectory's calls do not, and every session is closed when generate returns."""
    define, use = "```python\nv = 7\n```\n```output", "```python\nprint(v * 6)\n```\n```output"
    script = {0: [define, use, "done"], 1: [use, "done"]}
    cfg = ToolsConfig(enabled=True, session=True, timeout=2.0)
    engine = ToolEngine(ScriptedEngine(script), cfg, [EOS], sandbox_mode=isolation())
    before = set(Path(tempfile.gettempdir()).glob("deepseek-rl-sandbox-*"))
    out = engine.generate(prompts(2), 1, RolloutConfig(max_completion_length=300), RowNoise(0, 2))
    assert f"{use}\n42\n```\n" in out.completions[0]
    assert "NameError: name 'v' is not defined" in out.completions[1]
    assert out.tool_stats["calls"].tolist() == [2, 1] and out.tool_stats["errors"].tolist() == [0, 1]
    assert set(Path(tempfile.gettempdir()).glob("deepseek-rl-sandbox-*")) == before  # closed and removed
    # without a session the same trajectory's second call runs alone
    engine = ToolEngine(ScriptedEngine(script), replace(cfg, session=False), [EOS], sandbox_mode=isolation())
    out = engine.generate(prompts(2), 1, RolloutConfig(max_completion_length=300), RowNoise(0, 2))
    assert "NameError" in out.completions[0]


def scored(rollout: RolloutBatch) -> ScoredBatch:
    n = len(rollout)
    return ScoredBatch(rollout, ["x"], torch.zeros(n, 1), torch.zeros(n), torch.tensor([1.0, -1.0][:n]), torch.ones(n))


def test_environment_tokens_get_exactly_zero_gradient():
    """The loss over a trajectory with a tool output equals the loss over its model tokens alone; the gradient of
    every environment token's log-prob is exactly 0 and the model tokens' gradients equal the single-turn ones."""
    c = 8
    tool = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 8, [1] * 6 + [0, 0]])
    rollout = RolloutBatch(
        torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long), torch.ones(2, c, dtype=torch.long),
        mask, torch.zeros(2, dtype=torch.bool), ["a", "b"], ["p", "p"], {}, 2, tool_mask=tool,
    )  # fmt: skip
    inputs = build_loss_inputs(scored(rollout), mask_truncated=False)
    assert inputs.loss_mask.tolist()[0] == [1, 1, 0, 0, 0, 1, 1, 1]
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(2, c, generator=g)).requires_grad_()
    ref = -torch.rand(2, c, generator=g)
    for loss_type in ("grpo", "dapo", "bnpo"):
        cfg = AlgorithmConfig(num_generations=2, loss_type=loss_type, kl_coef=0.1)
        norm = StepNormaliser(2, 1, float(inputs.loss_mask.sum()), c)
        terms = policy_loss(logp, None, ref, None, inputs.advantages, inputs.loss_mask, cfg, norm)
        (grad,) = torch.autograd.grad(terms.loss, logp)
        assert (grad[0, 2:5] == 0).all() and (grad[1, 6:] == 0).all()
        # single-turn: the same model tokens packed without the tool output, as if it had never been there
        keep = inputs.loss_mask[0].bool()
        packed = torch.zeros(2, c)
        packed[0, : int(keep.sum())] = logp.detach()[0, keep]
        packed[1] = logp.detach()[1]
        packed.requires_grad_()
        packed_ref = torch.zeros(2, c)
        packed_ref[0, : int(keep.sum())], packed_ref[1] = ref[0, keep], ref[1]
        packed_mask = torch.zeros(2, c)
        packed_mask[0, : int(keep.sum())], packed_mask[1] = 1, inputs.loss_mask[1]
        single = policy_loss(packed, None, packed_ref, None, inputs.advantages, packed_mask, cfg, norm)
        (single_grad,) = torch.autograd.grad(single.loss, packed)
        assert terms.loss.item() == pytest.approx(single.loss.item(), rel=1e-6)
        assert torch.allclose(grad[0, keep], single_grad[0, : int(keep.sum())]) and torch.allclose(
            grad[1], single_grad[1]
        )
        assert terms.tokens.item() == 5 + 6 and terms.kl_sum.item() == pytest.approx(single.kl_sum.item())


def test_demonstrations_do_not_train_on_tool_outputs():
    completion = "<think>```python\nprint(6*7)\n```\n```output\n42\n```\n</think><answer>42</answer>"
    examples, _ = tokenize_examples(TOK, ["Q:6*7="], [completion], tool_marker="```output")
    ids, _, loss_mask = examples.batch([0], TOK.pad_token_id)
    p = ids.shape[1] - loss_mask.shape[1]
    untrained = TOK.decode(ids[0, p:][loss_mask[0] == 0].tolist())
    assert untrained == "\n42\n```\n"
    assert loss_mask[0].sum() == len(examples.completion_ids[0]) - len("\n42\n```\n")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tool_demo_runs_and_logs_tool_use(tmp_path: Path):
    result = run_cli(
        "train", "--config-name", "tool_demo", "logger=none", "model=tiny", "data.num_train=200",
        "data.num_validation=8", "data.num_eval=16", "sft.max_steps=4", "sft.eval_every=2", "sft.num_validation=8",
        "trainer.max_steps=2", "trainer.batch_size=16", "trainer.micro_batch_size=8", "eval.every=2",
        "eval.every_prompts=8", "eval.num_prompts=8", "eval.samples=2", "eval.batch_size=16",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [m for m in _lines(tmp_path / "run" / "grpo" / "metrics.jsonl") if "reward" in m]
    for key in ("tools/calls_per_trajectory", "tools/used_share", "tools/errors", "tools/timeouts", "tools/env_tokens"):
        assert key in steps[-1]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "eval/tool_use" in results["grpo"] and "eval/greedy_tool_use" in results["grpo"]


def test_the_real_tool_recipe_runs_on_a_tiny_model(tmp_path: Path, shared):
    result = run_cli(
        "train", "--config-name", "math_tir_qwen25_math", "model=tiny_like", "rollout.engine=builtin", "logger=none",
        "trainer.max_steps=2", "rollout.max_completion_length=16", "algorithm.num_generations=4",
        "trainer.batch_size=8", "trainer.micro_batch_size=4", "data.max_rows=16", "eval.every=2",
        "eval.every_prompts=2", "eval.every_samples=2", "eval.batch_size=4", f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tools/used_share" in _lines(tmp_path / "run" / "metrics.jsonl")[-1]
