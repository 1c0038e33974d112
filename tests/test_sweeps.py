"""Sweeps end to end: a 2-run Hydra multirun of the smoke recipe (wandb offline), its wandb group and run names
read back from wandb's own run files, the rollout tables and summaries it writes, `deepseek-rl sweeps` over it,
a sweep with a failed job (reported; the others run), a preempted sweep, and the wandb sweep files in
recipes/sweeps/ (every parameter value composes with its recipe)."""

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from deepseek_rl.config import load_recipe
from deepseek_rl.infra.distributed import release_accelerator
from deepseek_rl.paths import recipes_dir

from .conftest import run_cli
from .test_config import required_overrides

LRS = ("0.001", "0.003")
STEPS = 2


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """`deepseek-rl train --config-name smoke -m algorithm.lr=1e-3,3e-3` for 2 steps, into <tmp>/sweep."""
    work = tmp_path_factory.mktemp("multirun")
    result = run_cli(
        "train", "--config-name", "smoke", "-m", "algorithm.lr=1e-3,3e-3", f"trainer.max_steps={STEPS}",
        f"hydra.sweep.dir={work / 'sweep'}",
        cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "sweep"


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir())


def wandb_records(path: Path):
    """The protobuf records of a wandb transaction log (`run-<id>.wandb`, what `wandb sync` uploads): a 7-byte file
    header, then 32 KiB blocks of chunks, each with a 7-byte header (crc32c, length, type: full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run_record(run_dir: Path):
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    (run,) = [r.run for r in wandb_records(log) if r.WhichOneof("record_type") == "run"]
    return run


def test_multirun_writes_one_run_directory_per_job(sweep: Path):
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == [f"{i}_algorithm.lr={lr},trainer.max_steps={STEPS}" for i, lr in enumerate(LRS)]
    for job, lr in zip(jobs, LRS, strict=True):
        lines = (job / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
        assert yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[0] == f"algorithm.lr={lr}"
        assert (job / "final" / "model.safetensors").exists()


def test_multirun_jobs_share_one_wandb_group_named_after_the_sweep(sweep: Path):
    runs = [wandb_run_record(job) for job in job_dirs(sweep)]
    assert {run.run_group for run in runs} == {sweep.name}
    assert [run.display_name for run in runs] == [f"algorithm.lr={lr}" for lr in LRS]
    assert len({run.run_id for run in runs}) == 2
    for run, lr in zip(runs, LRS, strict=True):
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["algorithm"]["lr"] == float(lr)
        assert config["logger"]["overrides"] == [f"algorithm.lr={lr}", f"trainer.max_steps={STEPS}"]
        assert config["logger"]["group"] == sweep.name


def test_rollout_table_holds_every_field(sweep: Path):
    cfg = load_recipe("smoke")
    g, groups = cfg.algorithm.num_generations, cfg.logger.rollout_table_groups
    job = job_dirs(sweep)[0]
    assert sorted(p.name for p in (job / "rollouts").rglob("step_*")) == ["step_000001.jsonl", "step_000001.parquet"]
    rows = [json.loads(line) for line in (job / "rollouts" / "jsonl" / "step_000001.jsonl").read_text().splitlines()]
    assert len(rows) == groups * g
    fields = {"step", "group", "sample", "prompt", "completion", "reward", "advantage", "length", "truncated"}
    fields |= {f"reward/{name}" for name in cfg.reward.weights} | {"correct", "data/answer"}
    for row in rows:
        assert fields <= set(row)
        total = sum(cfg.reward.weights[n] * row[f"reward/{n}"] for n in cfg.reward.weights)
        assert row["reward"] == pytest.approx(total, abs=1e-5)
        assert row["correct"] == (row["reward/answer_match"] == 1.0)
    for group in range(groups):
        members = [r for r in rows if r["group"] == group]
        assert [r["sample"] for r in members] == list(range(g)) and len({r["prompt"] for r in members}) == 1
        assert sum(r["advantage"] for r in members) == pytest.approx(0.0, abs=1e-4)  # group-relative
    frame = pd.read_parquet(job / "rollouts" / "parquet")
    assert len(frame) == len(rows) and fields <= set(frame.columns)
    # wandb got its own table for the step (a new key per step, never an overwrite)
    assert list(job.glob("wandb/offline-run-*/files/media/table/rollouts/step_000001_*.table.json"))


def test_rollout_metrics_are_logged_every_step(sweep: Path):
    for line in (job_dirs(sweep)[0] / "metrics.jsonl").read_text().splitlines():
        metrics = json.loads(line)
        for key in ("completions/repetition", "completions/dominant_groups", "completion_length/incorrect"):
            assert 0 <= metrics[key] <= 64
        assert "completion_length/correct" in metrics and "zero_std_groups" in metrics and "truncated" in metrics


def test_summary_has_final_and_best_metrics(sweep: Path):
    jobs = job_dirs(sweep)
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    for job, summary in zip(jobs, summaries, strict=True):
        lines = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        rewards = [m["reward"] for m in lines]
        assert summary["steps"] == STEPS and summary["wall_time_s"] > 0
        assert summary["final"]["reward"] == rewards[-1]
        assert summary["max"]["reward"] == max(rewards) and summary["min"]["reward"] == min(rewards)
    hashes = [s["config_hash"] for s in summaries]
    assert hashes[0] != hashes[1] and all(len(h) == 16 for h in hashes)  # the runs differ in algorithm.lr


def test_sweeps_command_prints_a_sorted_table_and_a_png(sweep: Path, tmp_path: Path):
    png = tmp_path / "sweep.png"
    result = run_cli("sweeps", str(sweep), "--metric", "reward", "--png", str(png), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 2
    assert f"fixed: trainer.max_steps={STEPS}" in result.stdout
    assert "| algorithm.lr |" in result.stdout and "trainer.max_steps |" not in result.stdout
    best = {
        str(i): json.loads((job / "summary.json").read_text())["max"]["reward"] for i, job in enumerate(job_dirs(sweep))
    }
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == ["1", "2"]
    assert best[cells[0][1]] >= best[cells[1][1]]
    assert {c[2] for c in cells} == set(LRS)
    assert png.stat().st_size > 10_000


def test_sweeps_command_rejects_an_unknown_metric(sweep: Path, tmp_path: Path):
    result = run_cli("sweeps", str(sweep), "--metric", "rewrd", cwd=tmp_path)
    assert result.returncode == 2 and "no run logged 'rewrd'" in result.stderr


def test_a_failed_job_is_reported_and_the_others_still_run(tmp_path: Path):
    """Job 0 cannot run (3 does not divide the batch): it is reported in one line and in failed.json, job 1 still
    runs, the end lists the failed job and the sweep exits 1; `deepseek-rl sweeps` lists it under its table."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train", "--config-name", "smoke", "-m", "logger=none", "trainer.max_steps=1",
        "algorithm.num_generations=3,4", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    bad = ("configuration error: trainer.batch_size=16 does not divide into whole groups of "
           "algorithm.num_generations=3: use a multiple of 3 (e.g. 15)")  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.startswith("deepseek-rl")]
    assert lines == [
        f"deepseek-rl: job 0: {bad}",
        "deepseek-rl: sweep finished: 1 of 2 jobs failed",
        f"deepseek-rl:   job 0 (algorithm.num_generations=3): {bad}",
    ]
    failed, done = job_dirs(sweep_dir)
    assert json.loads((failed / "failed.json").read_text())["status"] == 2
    assert [m["step"] for m in map(json.loads, (done / "metrics.jsonl").read_text().splitlines())] == [1]

    table = run_cli("sweeps", str(sweep_dir), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"failed jobs (1):\n- 0 (algorithm.num_generations=3): exit status 2, {bad}" in table.stdout


def test_a_job_that_fails_mid_run_is_reported_and_the_next_still_runs(tmp_path: Path):
    """Job 0 trains, then diverges (a learning rate of 1e30): its numerical error is one line and in failed.json,
    its checkpoint stays; job 1 still runs to the end; the sweep exits 1."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train", "--config-name", "smoke", "-m", "logger=none", "trainer.max_steps=3", "trainer.save_every=1",
        "algorithm.lr=1e30,1e-5", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("deepseek-rl")]
    assert lines[0].startswith("deepseek-rl: job 0: numerical error: grpo step ")
    assert lines[1] == "deepseek-rl: sweep finished: 1 of 2 jobs failed"
    failed, done = job_dirs(sweep_dir)
    assert json.loads((failed / "failed.json").read_text())["status"] == 2
    assert list(failed.glob("checkpoints/step-*")) and not (failed / "final").exists()
    assert [m["step"] for m in map(json.loads, (done / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]


def test_a_preempted_sweep_stops_and_its_rerun_continues(tmp_path: Path):
    """SIGTERM during job 0 stops the whole sweep (75) after job 0's checkpoint; the same command with
    trainer.resume=auto resumes job 0 and runs job 1."""
    sweep_dir = tmp_path / "sweep"
    args = ["train", "--config-name", "smoke", "-m", "logger=none", "trainer.max_steps=40", "trainer.save_every=50",
            "algorithm.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "deepseek_rl.cli", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        logged = list(sweep_dir.glob("0_*/metrics.jsonl"))
        if logged and len(logged[0].read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    assert "deepseek-rl: sweep stopped after job 0; the jobs after it did not run" in err
    assert [p.name[0] for p in job_dirs(sweep_dir)] == ["0"]  # job 1 never started
    again = run_cli(*args, "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "deepseek-rl: sweep finished: all 2 jobs completed" in again.stdout
    assert "resuming from" in again.stderr and not list(sweep_dir.glob("*/failed.json"))
    for job in job_dirs(sweep_dir):
        assert [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()] == list(
            range(1, 41)
        )


def test_a_multirun_with_one_output_dir_for_every_job_is_refused(tmp_path: Path):
    result = run_cli(
        "train", "--config-name", "smoke", "-m", "logger=none", "algorithm.lr=1e-3,3e-3",
        f"trainer.output_dir={tmp_path / 'one'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    refused = (
        f"trainer.output_dir={tmp_path / 'one'} is set for every job of this multirun, which would all write into "
        "one folder; leave it unset (each job writes into its folder under hydra.sweep.dir) or sweep it too"
    )
    assert result.stderr.count(refused) == 4  # each job's line and the summary's
    assert not (tmp_path / "one").exists()


def test_release_accelerator_lets_the_next_run_start_clean():
    first = Accelerator(gradient_accumulation_steps=2)
    first.gradient_state._set_sync_gradients(False)  # as a run can leave it mid-accumulation
    release_accelerator()
    assert not AcceleratorState._shared_state and not GradientState._shared_state
    second = Accelerator(gradient_accumulation_steps=4)
    assert second.gradient_accumulation_steps == 4 and second.sync_gradients
    assert second.device == torch.device("cpu")
    release_accelerator()


# ---- wandb sweep files ----

SWEEP_FILES = sorted((recipes_dir() / "sweeps").glob("*.yaml"))


def sweep_recipe(doc: dict) -> str:
    """The recipe a sweep file runs: `deepseek-rl train --config-name <recipe> ${args_no_hyphens}`."""
    command = doc["command"]
    start = command.index("deepseek-rl")
    assert command[start + 1 : start + 3] == ["train", "--config-name"] and command[-1] == "${args_no_hyphens}"
    return command[start + 3]


def parameter_values(spec: dict) -> list:
    """The values a wandb sweep parameter can take, or the ends of its range."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def check_sweep(doc: dict, tmp_path_factory) -> None:
    """Every parameter value is a valid Hydra override of the sweep's recipe (composition raises otherwise)."""
    recipe = sweep_recipe(doc)
    assert doc["method"] in ("grid", "random", "bayes")
    assert doc["metric"]["goal"] in ("maximize", "minimize") and doc["metric"]["name"]
    base = required_overrides(recipe, tmp_path_factory)  # a real model for recipes that need model.path
    for key, spec in doc["parameters"].items():
        if key == "model.path" and base:
            continue  # a placeholder for the user's checkpoint; the composed runs below get a real one
        for value in parameter_values(spec):
            cfg = load_recipe(recipe, [*base, f"{key}={value}"])
            group, _, field = key.partition(".")
            assert str(getattr(getattr(cfg, group), field)) == str(value)
    if doc["metric"]["name"].startswith("eval/"):
        assert load_recipe(recipe, base).eval.every > 0, "the metric is only logged with eval.every > 0"


def test_sweep_files_are_found():
    assert {p.stem for p in SWEEP_FILES} >= {"smoke", "r1_grpo"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_parameters_compose_with_its_recipe(path: Path, tmp_path_factory):
    check_sweep(yaml.safe_load(path.read_text()), tmp_path_factory)


def test_a_typo_in_a_sweep_parameter_fails(tmp_path_factory):
    doc = yaml.safe_load((recipes_dir() / "sweeps" / "smoke.yaml").read_text())
    doc["parameters"]["algorithm.lrr"] = doc["parameters"].pop("algorithm.lr")
    with pytest.raises(Exception, match="algorithm.lrr"):
        check_sweep(doc, tmp_path_factory)
