"""Every failure a user can cause or suffer, through the real command line: it ends in one message (no traceback)
that names the file and line, or the key, and the fix; and nothing is lost (input data untouched, the previous
checkpoint intact and loadable, metrics.jsonl complete).

Sections: data, stages (preemption and resume), checkpoints, output directory and full disk, rewards (code
timeouts, the sandbox mode), the algorithm on 2 ranks, and the cluster script.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepseek_rl.infra.checkpoint import damage

from .conftest import REPO, run_cli
from .test_distributed import COMMON, STEPS, free_port, launch, metrics, rank_reports

SMOKE = ["--config-name", "smoke", "logger=none"]
ROWS = [{"prompt": f"Q:{i}+1=", "answer": str(i + 1)} for i in range(20)]


def train(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("train", *SMOKE, *overrides, cwd=cwd, env=env)


def message(result: subprocess.CompletedProcess, status: int) -> str:
    """The one line the run ended with; fails on another exit status or a traceback."""
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("deepseek-rl")]
    assert lines, result.stderr[-3000:]
    return lines[-1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder (to show that a failed run changed nothing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def steps(run: Path) -> list[int]:
    return [m["step"] for m in metrics(run)]


# ---------------------------------------------------------------------------------------------------------- data


def _non_utf8(path: Path) -> None:
    lines = [json.dumps(r).encode() for r in ROWS]
    lines[5] = b'{"prompt": "Q:\xff+1=", "answer": "2"}'
    path.write_bytes(b"\n".join(lines) + b"\n")


def _malformed(path: Path) -> None:
    lines = [json.dumps(r) for r in ROWS]
    lines[6] = '{"prompt": "Q:1+1=", "answer": '
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_non_utf8, r"data file \S+train.jsonl, line 6: byte 0xff at column 15 is not UTF-8; save the file as UTF-8"),
        (lambda p: p.write_text(""), r"data file \S+train.jsonl is empty: it has no rows"),
        (lambda p: p.write_text("\n\n"), r"data file \S+train.jsonl is empty"),
        (_malformed, r"data file \S+train.jsonl, line 7: not valid JSON \(Expecting value, column 32\); fix or"),
    ],
    ids=["non-utf8", "empty", "blank-lines", "malformed-line"],
)
def test_a_bad_data_file_names_the_file_and_line(make, expected, tmp_path):
    path = tmp_path / "train.jsonl"
    make(path)
    before = path.read_bytes()
    result = train("data.task=null", f"data.path={path}", f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    line = message(result, 2)
    assert line.startswith("deepseek-rl: configuration error: data file")
    assert re.search(expected, line), line
    assert path.read_bytes() == before and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_bad_row_in_the_eval_file_is_blamed_on_the_eval_file(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", ROWS)
    eval_file = write_jsonl(tmp_path / "held_out.jsonl", [ROWS[0], ROWS[1], {"prompt": "", "answer": "1"}])
    result = train(
        "data.task=null", f"data.path={train_file}", f"data.eval_path={eval_file}", "eval.every=2",
        f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    line = message(result, 2)
    assert f"data file {eval_file}, line 3: column 'prompt' is empty" in line and "train.jsonl" not in line
    _malformed(eval_file)
    line = message(train("data.task=null", f"data.path={train_file}", f"data.eval_path={eval_file}", "eval.every=2",
                         f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path), 2)  # fmt: skip
    assert f"data file {eval_file}, line 7: not valid JSON" in line


def test_a_reward_whose_column_is_missing_stops_before_training(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": r["prompt"], "solution": r["answer"]} for r in ROWS])
    result = train("data.task=null", f"data.path={path}", f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    line = message(result, 2)
    assert "reward 'answer_match' needs the column 'answer'" in line
    assert "['prompt', 'solution']" in line and "++data.columns.solution=answer" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    result = train("data.task=null", f"data.path={path}", "++data.columns.solution=answer", "trainer.max_steps=1",
                   f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]  # the fix the message names works


# -------------------------------------------------------------------------------------------------------- stages

PIPELINE = [
    "logger=none", "model=tiny", "data.num_digits=2", "data.num_train=200", "data.num_eval=100", "sft.max_steps=6",
    "sft.eval_every=0", "sft.batch_size=16", "trainer.max_steps=10", "trainer.batch_size=16",
    "trainer.micro_batch_size=16", "algorithm.num_generations=4", "trainer.save_every=2", "eval.every=0",
    "eval.num_prompts=100", "eval.samples=4",
]  # fmt: skip


def interrupted(args: list[str], cwd: Path, ready, stdout: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI and send it SIGTERM once `ready()` is true (as Slurm or a spot reclaim would); with `stdout`, the
    run's standard output goes to that file while it runs (for `ready` to read)."""
    with open(stdout, "w") if stdout else contextlib.nullcontext(subprocess.PIPE) as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "deepseek_rl.cli", *args], cwd=cwd, text=True,
                                stdout=out_file, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if ready():
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    out = stdout.read_text() if stdout else out
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lines_in(path: Path, count: int):
    return lambda: path.exists() and len(path.read_text().splitlines()) >= count


def test_a_preempted_pipeline_stops_and_resumes_where_it_stopped(tmp_path):
    """SFT -> GRPO -> eval, interrupted by SIGTERM in each stage in turn: every time the run stops with exit status
    75 and one line, after saving what it had; each resume skips the finished stages and continues the interrupted
    one from its checkpoint (the evaluation keeps the models it finished); the last one completes."""
    run = tmp_path / "run"
    args = ["train", *PIPELINE, f"trainer.output_dir={run}"]
    resumed = [*args, "trainer.resume=auto"]
    line = message(interrupted(args, tmp_path, lines_in(run / "sft" / "metrics.jsonl", 2)), 75)
    assert re.fullmatch(r"deepseek-rl: sft stage preempted after step \d+; checkpoint saved; resume with "
                        r"trainer.resume=auto", line), line  # fmt: skip
    sft_stop = int(re.search(r"after step (\d+)", line).group(1))
    assert steps(run / "sft") == list(range(1, sft_stop + 1)) and not (run / "sft" / "stage.json").exists()

    first = interrupted(resumed, tmp_path, lines_in(run / "grpo" / "metrics.jsonl", 3))
    line = message(first, 75)
    assert re.fullmatch(r"deepseek-rl: grpo stage preempted after step (\d+); checkpoint saved; resume with "
                        r"trainer.resume=auto", line), line  # fmt: skip
    assert f"resuming from {run / 'sft' / 'checkpoints' / f'step-{sft_stop:08d}'}" in first.stderr
    assert steps(run / "sft") == list(range(1, 7))  # SFT continued from its checkpoint to sft.max_steps
    stopped = int(re.search(r"after step (\d+)", line).group(1))
    assert (run / "sft" / "stage.json").exists() and not (run / "grpo" / "stage.json").exists()
    assert (run / "grpo" / "checkpoints" / f"step-{stopped:08d}").is_dir() and not (run / "grpo" / "final").exists()
    assert steps(run / "grpo") == list(range(1, stopped + 1)) and not (run / "results.md").exists()
    sft_before = digest(run / "sft")

    second = interrupted(resumed, tmp_path, lambda: (run / "eval" / "metrics-sft.json").exists())
    line = message(second, 75)
    assert line == ("deepseek-rl: eval stage preempted during evaluation; the results of sft are saved; resume "
                    "with trainer.resume=auto"), line  # fmt: skip
    assert "stage sft already finished" in second.stdout
    assert f"resuming from {run / 'grpo' / 'checkpoints' / f'step-{stopped:08d}'} (step {stopped})" in second.stderr
    assert digest(run / "sft") == sft_before  # SFT was not run again
    assert steps(run / "grpo") == list(range(1, 11)) and (run / "grpo" / "stage.json").exists()
    evaluated = (run / "eval" / "samples-sft.jsonl").read_bytes()

    third = run_cli(*resumed, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "stage grpo already finished" in third.stdout and steps(run / "grpo") == list(range(1, 11))
    assert (run / "eval" / "samples-sft.jsonl").read_bytes() == evaluated  # sft's evaluation was kept, not redone
    assert set(json.loads((run / "results.json").read_text())) == {"sft", "grpo"}


def test_sigterm_while_a_stage_loads_is_honoured_at_its_first_step(tmp_path):
    """A SIGTERM that arrives before the first step (while the model loads) is not lost: the stage checkpoints
    after its first step and stops with the preemption status."""
    run, out = tmp_path / "run", tmp_path / "stdout.txt"

    def loading() -> bool:  # the stage has started (a SIGTERM before that stops the run before the stage begins)
        return out.exists() and "deepseek-rl: grpo: loading" in out.read_text()

    result = interrupted(["train", *SMOKE, "trainer.max_steps=50", f"trainer.output_dir={run}"], tmp_path, loading,
                         stdout=out)  # fmt: skip
    line = message(result, 75)
    assert "grpo stage preempted after step" in line
    assert (run / "checkpoints").is_dir() and len(steps(run)) < 50


# --------------------------------------------------------------------------------------------------- checkpoints

CHECKPOINTED = ["trainer.max_steps=3", "trainer.save_every=1", "trainer.keep_last=3"]


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A 3-step smoke run with a checkpoint after every step (step-1, step-2, step-3)."""
    work = tmp_path_factory.mktemp("checkpointed")
    result = train(*CHECKPOINTED, f"trainer.output_dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def copy_run(source: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(source, run)
    return run


def checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def truncate(path: Path, size: int = 100) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "trainer_state.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(name, checkpointed, tmp_path):
    run = copy_run(checkpointed, tmp_path)
    truncate(checkpoint(run, 3) / name, 20)
    damaged = digest(checkpoint(run, 3))
    result = train(*CHECKPOINTED[1:], "trainer.max_steps=4", "trainer.resume=auto", f"trainer.output_dir={run}",
                   cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    aside = run / "checkpoints" / "damaged-step-00000003"
    why = f"{name} is 20 bytes but was saved with"
    if name == "trainer_state.json":
        why = "trainer_state.json cannot be read"
    assert f"checkpoint {checkpoint(run, 3)} is damaged ({why}" in result.stderr
    assert f"moved it to {aside}" in result.stderr
    assert f"resuming from the newest intact checkpoint, {checkpoint(run, 2)} (step 2)" in result.stderr
    assert digest(aside) == damaged  # kept as it was, for inspection
    assert steps(run) == [1, 2, 3, 4]  # step 3 trained again from step 2's state, then step 4
    assert damage(checkpoint(run, 4)) is None


def test_no_intact_checkpoint_is_one_message_and_touches_nothing(checkpointed, tmp_path):
    run = copy_run(checkpointed, tmp_path)
    for step in (1, 2, 3):
        truncate(checkpoint(run, step) / "model.safetensors")
    before = digest(run)
    result = train(*CHECKPOINTED, "trainer.resume=auto", f"trainer.output_dir={run}", "trainer.max_steps=4",
                   cwd=tmp_path)  # fmt: skip
    line = message(result, 2)
    assert line.startswith(f"deepseek-rl: checkpoint error: no intact checkpoint to resume in {run / 'checkpoints'}")
    assert "step-00000003: model.safetensors is 100 bytes but was saved with" in line and "trainer.resume=never" in line
    assert digest(run) == before


def test_resuming_with_a_changed_config_lists_the_keys_unless_overridden(checkpointed, tmp_path):
    run = copy_run(checkpointed, tmp_path)
    before = digest(run)
    changed = ["algorithm.lr=0.003", "trainer.seed=7", "algorithm.num_generations=8"]
    result = train(*CHECKPOINTED, "trainer.max_steps=5", "trainer.resume=auto", f"trainer.output_dir={run}",
                   *changed, cwd=tmp_path)  # fmt: skip
    line = message(result, 2)
    assert line.startswith("deepseek-rl: checkpoint error: the config differs from the one checkpoint")
    for key in ("algorithm.lr: 0.001 -> 0.003", "trainer.seed: 0 -> 7", "algorithm.num_generations: 4 -> 8"):
        assert key in line
    assert "trainer.max_steps" not in line and "trainer.resume_override=true" in line
    assert digest(run) == before  # the checkpoints and metrics are untouched

    result = train(*CHECKPOINTED, "trainer.max_steps=5", "trainer.resume=auto", f"trainer.output_dir={run}",
                   *changed, "trainer.resume_override=true", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming with changed settings (trainer.resume_override): algorithm.lr: 0.001 -> 0.003" in result.stderr
    logged = metrics(run)
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5]
    assert logged[2]["lr"] == pytest.approx(1e-3) and logged[3]["lr"] == pytest.approx(3e-3)  # the new lr runs
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["lr"] == pytest.approx(3e-3)


# -------------------------------------------------------------------------------------------- output and storage


def mount_tmpfs(where: Path, options: str) -> None:
    """A small tmpfs (root only): a read-only folder, or a disk that fills up."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()[-300:]}")


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("place", ["proc", "under-a-file", "read-only"])
def test_an_unwritable_output_dir_stops_before_anything_loads(place, tmp_path):
    if place == "proc":
        target = Path("/proc/deepseek-rl-run")
        why = "No such file or directory"
    elif place == "under-a-file":
        (tmp_path / "notes.txt").write_text("mine")
        target, why = tmp_path / "notes.txt" / "run", "a part of the path is a file, not a directory"
    else:
        mount_tmpfs(tmp_path / "ro", "ro,size=1m")
        target, why = tmp_path / "ro" / "run", "Read-only file system"
    try:
        start = time.monotonic()
        result = train(f"trainer.output_dir={target}", cwd=tmp_path)
        line = message(result, 2)
    finally:
        if place == "read-only":
            umount(tmp_path / "ro")
    assert line == (f"deepseek-rl: configuration error: trainer.output_dir={target} is not writable ({why}); choose a "
                    "directory you can write to, e.g. trainer.output_dir=runs/<name>")  # fmt: skip
    assert time.monotonic() - start < 60  # no model, data or worker was loaded first
    if place == "under-a-file":
        assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_full_disk_says_so_and_names_what_is_intact(tmp_path):
    """The run directory on a 3 MiB tmpfs: the first checkpoint (1.7 MB) fits, the second does not."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=3m")
    run = disk / "run"
    try:
        overrides = [
            "trainer.max_steps=4",
            "trainer.save_every=1",
            "trainer.keep_last=2",
            "logger.rollout_table_every=0",
        ]
        result = train(*overrides, f"trainer.output_dir={run}", cwd=tmp_path)
        line = message(result, 74)
        assert line.startswith(f"deepseek-rl: storage error: no space left on the device holding {run}")
        assert f"while writing checkpoint step-00000002; intact: checkpoint {checkpoint(run, 1)}" in line
        assert "Free space, then rerun with trainer.resume=auto" in line
        assert damage(checkpoint(run, 1)) is None  # the previous checkpoint is whole
        assert not list((run / "checkpoints").glob(".tmp-*"))  # the partial one gave its space back
        assert steps(run) == [1, 2]  # metrics.jsonl complete and valid up to the failure

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        resumed = train(*overrides, "trainer.resume=auto", f"trainer.output_dir={run}", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert steps(run) == [1, 2, 3, 4] and (run / "final" / "model.safetensors").exists()
    finally:
        umount(disk)


# ------------------------------------------------------------------------------------------------------- rewards


def test_a_code_completion_that_hangs_is_reported_as_a_timeout(tmp_path):
    rows = [
        {"completion": "```python\nwhile True:\n    pass\n```", "tests": ["assert True"]},
        {"completion": "```python\nx = 1\n```", "tests": ["assert x == 2"]},  # wrong code: ok, score 0
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    result = run_cli("score", "--reward", "code", "--input", str(path), "--args", '{"code": {"timeout": 2}}',
                     "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    *records, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["status"] == {"code": "timeout"} and "ran past its 2 s limit" in records[0]["messages"]["code"]
    assert records[1]["status"] == {"code": "ok"} and records[1]["scores"] == {"code": 0.0}
    assert summary["rewards"]["code"]["timeouts"] == 1


def no_unshare_path(tmp_path: Path) -> dict:
    """An environment whose PATH has no `unshare`: strong isolation is unavailable (as on a machine without
    namespaces)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    return {"PATH": str(bin_dir)}


def test_auto_sandbox_refuses_untrusted_code_without_isolation(tmp_path):
    env = no_unshare_path(tmp_path)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"completion": "```python\nx = 1\n```", "tests": ["assert x == 1"]}])
    result = run_cli("score", "--reward", "code", "--input", str(rows), "--workers", "0", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "reward.sandbox=auto: refusing to run untrusted code without isolation" in result.stderr
    assert "set reward.sandbox=weak to run it weakly on purpose" in result.stderr
    weak = run_cli("score", "--reward", "code", "--input", str(rows), "--workers", "0", "--sandbox", "weak",
                   cwd=tmp_path, env=env)  # fmt: skip
    assert weak.returncode == 0 and json.loads(weak.stdout.splitlines()[0])["scores"] == {"code": 1.0}

    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Q{i}", "tests": ["assert True"]} for i in range(8)])
    code_run = ["data.task=null", f"data.path={data}", "reward=code_think", "eval.every=0",
                f"trainer.output_dir={tmp_path / 'run'}"]  # fmt: skip
    line = message(train(*code_run, cwd=tmp_path, env=env), 2)
    assert line.startswith("deepseek-rl: configuration error: reward.sandbox=auto: refusing to run untrusted code")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training
    line = message(train(*code_run, "reward.sandbox=strong", cwd=tmp_path, env=env), 2)
    assert "reward.sandbox=strong: strong isolation is not available here (util-linux `unshare` not found)" in line


# ----------------------------------------------------------------------------------------------------- algorithm
def rollout_table(run: Path, step: int) -> list[dict]:
    path = run / "rollouts" / "jsonl" / f"step_{step:06d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def per_rank_std_advantages(rows: list[dict], group_size: int, eps: float = 1e-4) -> list[float]:
    """What a rank would compute from its own rewards alone (the bug this test guards against)."""
    import torch

    rewards = torch.tensor([r["reward"] for r in rows])
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(dim=1, keepdim=True)) / (rewards.std() + eps)).flatten().tolist()


def test_batch_scaled_advantages_use_the_whole_batch_std(tmp_path: Path):
    """scale_rewards=batch on 2 ranks divides by the std of every rank's rewards, as one process does: rank 0's
    advantages equal the single-process run's for the same groups, and differ from its own-std values."""
    batch = [*COMMON, "algorithm.scale_rewards=batch", "logger.rollout_table_every=1", "logger.rollout_table_groups=4"]
    single = run_cli("train", *batch, f"trainer.output_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch("cpu_ddp.yaml", [*batch, f"trainer.output_dir={tmp_path / 'two'}"], tmp_path)
    assert double.returncode == 0, double.stderr[-4000:]
    assert [r["world_size"] for r in rank_reports(tmp_path / "two")] == [2, 2]

    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    largest_gap = 0.0
    for step in range(1, STEPS + 1):
        one, two = rollout_table(tmp_path / "one", step), rollout_table(tmp_path / "two", step)
        assert len(one) == 16 and len(two) == 8  # 4 groups of 4 on one process; rank 0's 2 groups on two
        assert [r["completion"] for r in two] == [r["completion"] for r in one[:8]]  # the same samples
        assert [r["advantage"] for r in two] == pytest.approx([r["advantage"] for r in one[:8]], abs=1e-5)
        own = per_rank_std_advantages(two, group_size=4)
        largest_gap = max(largest_gap, max(abs(x - r["advantage"]) for x, r in zip(own, two, strict=True)))
    assert largest_gap > 1e-2  # a rank's own std would have given other advantages


# ------------------------------------------------------------------------------------------------------ clusters

FAKE_SRUN = """#!/usr/bin/env bash
# srun on one node: the command is the only task; SIGTERM sent to srun is forwarded to it, as Slurm's srun does
while [[ "$1" == --* ]]; do shift; done
export SLURM_NODEID=0
"$@" &
task=$!
trap 'kill -TERM $task' TERM
while true; do
    wait $task && exit 0 || status=$?
    kill -0 $task 2>/dev/null || exit $status
done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1" in
    show) echo 127.0.0.1 ;;
    requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;
esac
"""


def test_slurm_script_forwards_sigterm_to_every_rank_and_requeues(tmp_path):
    """launch/slurm.sh under a stand-in srun (one node, 2 CPU ranks): SIGTERM to the batch shell only (Slurm's
    --signal=B:TERM) reaches the ranks, which checkpoint and stop; the job requeues itself and exits 75; the
    requeued job resumes and finishes."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    run = tmp_path / "run"
    env = {
        **os.environ, "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
        "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "t", "SLURM_JOB_ID": "42",
        "GPUS_PER_NODE": "2", "ACCELERATE_CONFIG": str(REPO / "launch" / "cpu_ddp.yaml"), "OUTPUT_DIR": str(run),
        "MAIN_PORT": str(free_port()), "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
    }  # fmt: skip
    job = ["bash", str(REPO / "launch" / "slurm.sh"), "smoke", "logger=none", "trainer.max_steps=12",
           "trainer.save_every=4"]  # fmt: skip
    proc = subprocess.Popen(job, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, deadline = lines_in(run / "metrics.jsonl", 2), time.time() + 600
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the batch shell only
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err[-4000:]
    assert "requeueing job 42" in err and (tmp_path / "scontrol.log").read_text() == "requeue 42\n"
    assert err.count("grpo stage preempted after step") == 2  # both ranks stopped at the same step, with a message
    stopped = len(steps(run))
    assert stopped < 12 and checkpoint(run, stopped).is_dir()

    env["MAIN_PORT"] = str(free_port())
    again = subprocess.run(job, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert steps(run) == list(range(1, 13)) and [r["world_size"] for r in rank_reports(run)] == [2, 2]


def test_launch_files_and_docs_name_recipes_that_exist():
    recipes = {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    texts = [*(REPO / "launch").iterdir(), REPO / "README.md", *(REPO / "docs").glob("*.md")]
    named = set()
    for path in texts:
        text = path.read_text()
        named |= set(re.findall(r"--config-name[ =]([A-Za-z0-9_]+)", text))
        named |= set(re.findall(r"slurm\.sh ([A-Za-z0-9_]+)", text))
    placeholders = {"RECIPE", "mine"}  # `--config-dir my_recipes --config-name mine`: the user's own recipe
    assert "math_dapo_r1_distill" in named and named - placeholders <= recipes, named - recipes
