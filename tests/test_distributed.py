"""Real 2-process runs on CPU (DDP, DeepSpeed ZeRO-2 and ZeRO-3) against a single-process run, and exact resume.

Each run writes one report per rank (world size, backend, sha256 of the full parameters), so the tests check
that both processes joined one process group and ended with identical parameters.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from deepseek_rl.infra.distributed import parameter_digest
from deepseek_rl.stages.async_rollouts import free_port

from .conftest import REPO, run_cli

STEPS = 4
COMMON = ["--config-name", "smoke", "logger=none", f"trainer.max_steps={STEPS}"]


def launch_cmd(config: str, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "launch" / config),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        "-m", "deepseek_rl.train", *overrides,
    ]  # fmt: skip


def launch(config: str, overrides: list[str], cwd: Path, cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` of the training entry with `overrides` (or of `cmd`, a script and its arguments)."""
    command = launch_cmd(config, overrides) if cmd is None else launch_cmd(config, [])[:-2] + cmd
    # faulthandler: a rank that aborts (SIGABRT) prints where each of its threads was
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def rank_reports(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "rank_reports").glob("rank-*.json"))]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("single")
    result = run_cli("train", *COMMON, f"trainer.output_dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "zero2.yaml", "zero3.yaml"])
def test_two_processes_match_one(config, single_run: Path, tmp_path: Path):
    result = launch(config, [*COMMON, f"trainer.output_dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = rank_reports(tmp_path / "run")
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 for r in reports)
    assert reports[0]["parameter_sha256"] == reports[1]["parameter_sha256"]  # ranks agree after training
    expected_backend = "MULTI_CPU" if config == "cpu_ddp.yaml" else "DEEPSPEED"
    assert all(r["distributed_type"].endswith(expected_backend) for r in reports)

    single, double = metrics(single_run), metrics(tmp_path / "run")
    assert [m["step"] for m in double] == list(range(1, STEPS + 1))
    for a, b in zip(single, double, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-6)
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-3, abs=1e-7)

    if config == "zero3.yaml":
        (single_report,) = rank_reports(single_run)
        assert reports[0]["local_parameter_elements"] < single_report["local_parameter_elements"]  # partitioned
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
        assert parameter_digest(exported)[0] == reports[0]["parameter_sha256"]  # export = trained parameters


def _stop_after(proc: subprocess.Popen, run: Path, lines: int, sig: int) -> None:
    """Send `sig` once the run has logged `lines` steps."""
    deadline = time.time() + 600
    path = run / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    proc.wait(timeout=600)


def _interrupted_then_resumed(cmd: list[str], run: Path, cwd: Path, sig: int, lines: int = 3) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _stop_after(proc, run, lines, sig)
    stopped_at = len(metrics(run))
    assert stopped_at < 12, "the run finished before it could be interrupted"
    assert list((run / "checkpoints").glob("step-*"))
    resumed = subprocess.run(
        [*cmd, "trainer.resume=auto"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]


RESUME = [
    "--config-name",
    "smoke",
    "logger=none",
    "trainer.max_steps=12",
    "trainer.save_every=2",
    "trainer.keep_last=2",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The RESUME run without interruption, once for both kinds of interruption."""
    work = tmp_path_factory.mktemp("uninterrupted")
    full = run_cli("train", *RESUME, f"trainer.output_dir={work / 'full'}", cwd=work)
    assert full.returncode == 0, full.stderr[-3000:]
    return work / "full"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["preempted", "killed"])
def test_resume_single_process_is_exact(sig, tmp_path: Path, uninterrupted: Path):
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *RESUME, f"trainer.output_dir={tmp_path / 'cut'}"]
    _interrupted_then_resumed(cmd, tmp_path / "cut", tmp_path, sig)

    assert [m["loss"] for m in metrics(tmp_path / "cut")] == [m["loss"] for m in metrics(uninterrupted)]
    assert rank_reports(tmp_path / "cut")[0]["parameter_sha256"] == rank_reports(uninterrupted)[0]["parameter_sha256"]
    assert len(list((tmp_path / "cut" / "checkpoints").glob("step-*"))) <= 2  # keep_last


def test_resume_under_ddp_is_exact(tmp_path: Path):
    full = launch("cpu_ddp.yaml", [*RESUME, f"trainer.output_dir={tmp_path / 'full'}"], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    cmd = launch_cmd("cpu_ddp.yaml", [*RESUME, f"trainer.output_dir={tmp_path / 'cut'}"])
    _interrupted_then_resumed(cmd, tmp_path / "cut", tmp_path, signal.SIGTERM)

    assert [m["loss"] for m in metrics(tmp_path / "cut")] == [m["loss"] for m in metrics(tmp_path / "full")]
    digests = {r["parameter_sha256"] for r in rank_reports(tmp_path / "cut") + rank_reports(tmp_path / "full")}
    assert len(digests) == 1


RANK_REWARD = '''
import os

from deepseek_rl.rewards import group_reward


@group_reward
def differs_by_rank(completions, **kwargs):
    # rank 1's groups all agree (zero std); rank 0's never do
    if os.environ.get("RANK") == "1":
        return [0.0] * len(completions)
    return [float(i % 2) for i in range(len(completions))]
'''


def test_zero_std_groups_is_the_global_share_on_two_ranks(tmp_path: Path):
    """Rank 0's groups all vary, rank 1's all agree: the logged share is 0.5 (it was rank 0's own 0.0)."""
    (tmp_path / "by_rank.py").write_text(RANK_REWARD)
    overrides = [*COMMON, "trainer.max_steps=2", "reward.num_workers=0", "reward.weights={differs_by_rank: 1.0}",
                 "+reward.functions.differs_by_rank=by_rank.py:differs_by_rank",
                 f"trainer.output_dir={tmp_path / 'run'}"]  # fmt: skip
    result = launch("cpu_ddp.yaml", overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["world_size"] for r in rank_reports(tmp_path / "run")] == [2, 2]
    assert [m["zero_std_groups"] for m in metrics(tmp_path / "run")] == [0.5, 0.5]


def test_rejection_sampling_keeps_the_same_pairs_on_one_and_two_ranks(tmp_path: Path):
    """RFT's samples are seeded by (seed, batch), split at whole batches: two ranks keep exactly what one keeps."""
    from .test_trainer_keys import STAGES

    (tmp_path / "anything.py").write_text("def anything(completions, **kw):\n    return [1.0] * len(completions)\n")
    args = [*STAGES["rft"], "logger=none", "eval.batch_size=16", "rft.max_steps=1"]
    one = run_cli("train", *args, f"trainer.output_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("cpu_ddp.yaml", [*args, f"trainer.output_dir={tmp_path / 'two'}"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert [r["world_size"] for r in rank_reports(tmp_path / "two")] == [2, 2]
    kept = [(tmp_path / run / "kept.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert len(kept[0]) > 16 and kept[0] == kept[1]  # 16 prompts, up to 2 distinct completions each


def test_a_zero3_pipeline_evaluates_the_weights_it_trained(tmp_path: Path):
    """sft -> grpo -> eval in one ZeRO-3 launch. Each stage lets go of its model before the next one loads: DeepSpeed
    kept a finished ZeRO-3 model reachable (the next stage trained beside it), and the eval stage, still seeing
    ZeRO-3 through the last stage's DeepSpeed config, loaded its models partitioned and failed ("'weight' must be
    2-D"). The pipeline's evaluation of the trained policy equals a single process's of the exported weights."""
    run = tmp_path / "run"
    done = launch("zero3.yaml", [*COMMON, "stages=[sft,grpo,eval]", f"trainer.output_dir={run}"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"sft", "grpo"}
    alone = run_cli("train", *COMMON, "stages=[eval]", f"model.path={run / 'grpo' / 'final'}",
                    f"trainer.output_dir={tmp_path / 'alone'}", cwd=tmp_path)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    single = json.loads((tmp_path / "alone" / "results.json").read_text())["base"]
    assert results["grpo"] == single
    assert results["grpo"] != results["sft"]  # two models were evaluated, not one twice


def test_a_finished_zero3_run_leaves_no_model_behind(tmp_path: Path):
    """After `train` returns in a ZeRO-3 launch, no model of the run is alive in either process (DeepSpeed kept the
    policy and the reference reachable: 4 models per rank, with the process groups their parameters hold)."""
    done = launch("zero3.yaml", [], tmp_path, cmd=[str(REPO / "tests" / "probe_stage_release.py"), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"alive-{rank}.json").read_text()) for rank in (0, 1)]
    assert reports == [{"world_size": 2, "alive": 0}] * 2
