"""Rollout observability without a training run: alarms on synthetic metric streams (each fires on the stream built
to trigger it, once, and stays silent on healthy ones), rollout-table rows and rollout metrics from hand-built
batches, sweep identity of Hydra jobs, and run summaries."""

import doctest
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from deepseek_rl.batch import RolloutBatch, ScoredBatch
from deepseek_rl.config import DataConfig, load_recipe
from deepseek_rl.data.sources import load_rows
from deepseek_rl.errors import DataError
from deepseek_rl.infra import sweep
from deepseek_rl.infra.distributed import release_accelerator
from deepseek_rl.infra.sweep import HydraJob, job_logger, run_name
from deepseek_rl.infra.tracking import RunTracker, config_hash, summarize
from deepseek_rl.stages import observability
from deepseek_rl.stages.alarms import (
    AlarmMonitor,
    completion_dominance,
    default_detectors,
    format_without_accuracy,
    length_without_accuracy,
    repetition_rising,
)
from deepseek_rl.stages.observability import (
    RolloutObserver,
    dominant_groups,
    group_rows,
    length_by_correctness,
    repeated_ngram_share,
    source_metrics,
)

ACC, FMT = "reward/answer_match/mean", "reward/format/mean"


def stream(steps: int, **curves) -> list[dict[str, float]]:
    """`steps` metric dicts; each keyword maps a metric to a function of the step index (with a little wobble)."""
    wobble = [0.01 * math.sin(3.7 * t) for t in range(steps)]
    return [{key: f(t) + wobble[t] for key, f in curves.items()} for t in range(steps)]


BASE = {
    ACC: lambda t: 0.3,
    FMT: lambda t: 0.5,
    "completion_length/mean": lambda t: 40.0,
    "completions/repetition": lambda t: 0.05,
    "completions/dominant_groups": lambda t: 0.1,
    "reward": lambda t: 0.4,
}

STREAMS = {
    # learning: accuracy and format up, length up a little, nothing repetitive or collapsed
    "healthy": stream(60, **{**BASE, ACC: lambda t: 0.2 + 0.01 * t, FMT: lambda t: min(0.99, 0.3 + 0.03 * t)}),
    # R1-style: reasoning gets much longer and it pays off
    "healthy_long_reasoning": stream(
        60, **{**BASE, ACC: lambda t: 0.2 + 0.01 * t, "completion_length/mean": lambda t: 40.0 + 2.0 * t}
    ),
    "format_without_accuracy": stream(
        40, **{**BASE, FMT: lambda t: 0.97, ACC: lambda t: 0.6 if t < 15 else max(0.2, 0.6 - 0.03 * (t - 15))}
    ),
    "length_without_accuracy": stream(40, **{**BASE, "completion_length/mean": lambda t: 40.0 + 3.0 * t}),
    "repetition_rising": stream(40, **{**BASE, "completions/repetition": lambda t: 0.05 if t < 20 else 0.45}),
    "completion_dominance": stream(40, **{**BASE, "completions/dominant_groups": lambda t: 0.1 if t < 20 else 0.8}),
}


def fired(metrics: list[dict[str, float]]) -> list[tuple[int, str]]:
    """(step, alarm) for every alarm the monitor reports over the stream."""
    monitor = AlarmMonitor(default_detectors(["answer_match", "format"], "answer_match", "format"))
    return [(step, alarm.name) for step, m in enumerate(metrics, start=1) for alarm in monitor.update(m)]


@pytest.mark.parametrize("name", ["healthy", "healthy_long_reasoning"])
def test_alarms_stay_silent_on_healthy_streams(name):
    assert fired(STREAMS[name]) == []


@pytest.mark.parametrize(
    "name", ["format_without_accuracy", "length_without_accuracy", "repetition_rising", "completion_dominance"]
)
def test_each_alarm_fires_once_on_the_stream_built_to_trigger_it(name):
    reports = fired(STREAMS[name])
    assert [alarm for _, alarm in reports] == [name]
    step = reports[0][0]
    assert step < len(STREAMS[name])
    assert fired(STREAMS[name][: step - 1]) == []  # it fires at the first step its pattern is in the window


def test_detectors_state_their_numbers():
    """Each detector looks at the latest window: mid-trend it reports, once the metric has settled it no longer does."""
    message = format_without_accuracy(STREAMS["format_without_accuracy"][:25], FMT, ACC)
    assert message is not None and "fell" in message and FMT in message
    assert format_without_accuracy(STREAMS["format_without_accuracy"], FMT, ACC) is None  # accuracy settled at 0.2
    assert length_without_accuracy(STREAMS["length_without_accuracy"][:25], ACC) is not None
    assert repetition_rising(STREAMS["repetition_rising"][:25]) is not None
    assert completion_dominance(STREAMS["completion_dominance"]) is not None
    assert completion_dominance(STREAMS["completion_dominance"][:22]) is None  # high for 2 steps only
    assert repetition_rising([{}] * 50) is None  # metric never logged


def test_a_resumed_monitor_does_not_fire_again():
    metrics = STREAMS["repetition_rising"]
    detectors = default_detectors(["answer_match", "format"], "answer_match", "format")
    step, _ = fired(metrics)[0]
    history = [dict(m) for m in metrics[:step]]
    history[-1]["alarm/repetition_rising"] = 1.0  # what metrics.jsonl holds after the alarm
    resumed = AlarmMonitor(detectors, history)
    assert [a for m in metrics[step:] for a in resumed.update(m)] == []


def test_detectors_follow_the_recipe_rewards():
    assert set(default_detectors(["answer_match", "format"], "answer_match", "format")) == {
        "format_without_accuracy", "length_without_accuracy", "repetition_rising", "completion_dominance",
    }  # fmt: skip
    without_verifier = default_detectors(["format", "tag_count"], "answer_match", "format")
    assert "format_without_accuracy" not in without_verifier
    # no verifier: length is judged against the total reward
    grows = stream(25, **{**BASE, "completion_length/mean": lambda t: 40.0 + 3.0 * t})
    assert without_verifier["length_without_accuracy"](grows) is not None


# ---- rollout rows and metrics ----


def scored_batch(completions: list[str], terms: list[list[float]], group_size: int, **columns) -> ScoredBatch:
    n = len(completions)
    ids = torch.tensor([[ord(c) for c in text.ljust(8)[:8]] for text in completions])
    lengths = torch.tensor([min(len(text), 8) for text in completions])
    mask = (torch.arange(8).unsqueeze(0) < lengths.unsqueeze(1)).long()
    rollout = RolloutBatch(
        prompt_ids=torch.ones(n, 2, dtype=torch.long),
        prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=ids,
        completion_mask=mask,
        truncated=lengths == 8,
        completions=completions,
        prompts=[f"Q{i // group_size}" for i in range(n)],
        columns={k: list(v) for k, v in columns.items()},
        group_size=group_size,
    )
    reward_terms = torch.tensor(terms, dtype=torch.float32)
    total = torch.nan_to_num(reward_terms).sum(dim=1)
    return ScoredBatch(rollout, ["answer_match", "format"], reward_terms, total, total - 0.5, torch.ones(n))


BATCH = scored_batch(
    ["12", "12", "12", "7", "abababab", "x", "y", "z"],
    [[1, 1], [1, 1], [1, float("nan")], [0, 1], [0, 0], [0, 1], [0, 0], [1, 0]],
    group_size=4,
    answer=["12"] * 4 + ["9"] * 4,
    source=["gsm8k"] * 4 + ["math/algebra"] * 4,
    tests=[[1, 2]] * 8,  # not a scalar column: left out of the table
)


def test_repeated_ngram_share_ignores_padding():
    ids = torch.tensor([[1, 2, 1, 2, 0, 0], [5, 5, 5, 5, 5, 5], [1, 2, 3, 0, 0, 0]])
    share = repeated_ngram_share(ids, torch.tensor([4, 6, 1]), n=2)
    assert share.tolist() == pytest.approx([1 - 2 / 3, 1 - 1 / 5, 0.0])


def test_dominant_groups_and_lengths_by_correctness():
    assert dominant_groups(BATCH.rollout.completions, 4).tolist() == [1.0, 0.0]
    correct = torch.tensor([True, False, True, False])
    assert length_by_correctness(torch.tensor([10.0, 20.0, 30.0, 50.0]), correct) == {
        "completion_length/correct": 20.0, "completion_length/incorrect": 35.0,
    }  # fmt: skip
    assert math.isnan(length_by_correctness(torch.tensor([1.0]), torch.tensor([False]))["completion_length/correct"])


def test_source_metrics_split_by_value():
    out = source_metrics(["a", "b", "a", "b"], torch.tensor([1.0, 0.0, 0.5, 0.0]), torch.tensor([2.0, 4, 6, 8]), None)
    assert out == {
        "source/a/reward": 0.75, "source/a/completion_length": 4.0, "source/a/share": 0.5,
        "source/b/reward": 0.0, "source/b/completion_length": 6.0, "source/b/share": 0.5,
    }  # fmt: skip


def test_group_rows_hold_every_field():
    rows = group_rows(BATCH, step=7, num_groups=1, verifier="answer_match")
    assert len(rows) == 4 and {r["group"] for r in rows} == {0} and [r["sample"] for r in rows] == [0, 1, 2, 3]
    first = rows[2]
    assert first["reward/format"] is None and first["reward/answer_match"] == 1.0 and first["correct"] is True
    assert first["step"] == 7 and first["prompt"] == "Q0" and first["completion"] == "12"
    assert first["advantage"] == pytest.approx(0.5) and first["length"] == 2 and first["truncated"] is False
    assert first["data/answer"] == "12" and first["data/source"] == "gsm8k" and "data/tests" not in first
    assert "correct" not in group_rows(BATCH, 7, 1, verifier="accuracy")[0]


@pytest.fixture
def accelerator():
    yield Accelerator()
    release_accelerator()


def test_observer_metrics_tables_and_alarms(accelerator, tmp_path: Path, capsys):
    cfg = load_recipe("smoke", ["logger=none", "data.source_column=source", "logger.rollout_table_every=3"])
    tracker = RunTracker(cfg.logger, tmp_path, {}, enabled=True)
    observer = RolloutObserver(cfg.logger, cfg.eval, cfg.data.source_column, ["answer_match", "format"], tracker)
    from dataclasses import fields

    from deepseek_rl.algo.losses import LossTerms
    from deepseek_rl.config import RewardConfig
    from deepseek_rl.stages.collect import RolloutStats
    from deepseek_rl.stages.metrics import step_metrics
    from deepseek_rl.stages.reward_set import RewardSet

    rewards = RewardSet(RewardConfig(weights={"answer_match": 1.0, "format": 1.0}))
    sums = LossTerms(**{f.name: torch.zeros(()) for f in fields(LossTerms)})
    stats = RolloutStats(first_round_zero_std=torch.tensor([False, True]))
    metrics = step_metrics(accelerator, BATCH, stats, sums, rewards, "dapo", cfg.eval.correctness, "source")
    rewards.close()
    assert metrics["zero_std_groups"] == 0.5
    assert metrics["completions/dominant_groups"] == 0.5
    assert metrics["completion_length/correct"] == pytest.approx((2 + 2 + 2 + 1) / 4)
    assert metrics["source/gsm8k/accuracy"] == 0.75 and metrics["source/math_algebra/accuracy"] == 0.25
    assert metrics["completions/repetition"] > 0  # "abababab"

    for step in range(1, 7):
        observer.log_table(step, BATCH)
    assert sorted(p.name for p in (tmp_path / "rollouts" / "jsonl").glob("*.jsonl")) == [
        "step_000001.jsonl", "step_000003.jsonl", "step_000006.jsonl",
    ]  # fmt: skip

    logged = [observer.alarms(step, m) for step, m in enumerate(STREAMS["repetition_rising"], start=1)]
    assert [m for m in logged if m] == [{"alarm/repetition_rising": 1.0}]
    assert capsys.readouterr().err.count("ALARM") == 1


def test_source_column_must_exist():
    with pytest.raises(DataError, match="data.source_column"):
        load_rows(DataConfig(num_train=20, num_validation=5, num_eval=5, num_digits=2, source_column="task"))


# ---- sweep identity and summaries ----


def test_run_name_uses_the_swept_keys():
    overrides = ["algorithm.lr=1e-06", "algorithm.num_generations=8", "trainer.max_steps=2"]
    assert run_name(overrides, {"algorithm.lr", "algorithm.num_generations"}, 0) == (
        "algorithm.lr=1e-06,algorithm.num_generations=8"
    )
    assert run_name(overrides, None, 0) == ",".join(overrides)
    assert run_name(["+x=1"], {"x"}, 0) == "+x=1"


def test_job_logger_fills_group_and_name_in_a_multirun(tmp_path: Path):
    sweep_dir = tmp_path / "smoke_2026-01-01_00-00-00"
    sweep_dir.mkdir()
    (sweep_dir / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['algorithm.lr=1e-3,3e-3', 'seed=1']\n")
    logger = load_recipe("smoke").logger
    job = HydraJob(overrides=["algorithm.lr=0.003", "seed=1"], sweep_dir=sweep_dir, num=1)
    swept = job_logger(logger, job)
    assert (swept.group, swept.name, swept.overrides) == (sweep_dir.name, "algorithm.lr=0.003", job.overrides)
    chosen = job_logger(load_recipe("smoke", ["logger.group=mine", "logger.name=n"]).logger, job)
    assert (chosen.group, chosen.name) == ("mine", "n")
    single = job_logger(logger, HydraJob(overrides=["seed=1"], sweep_dir=None, num=0))
    assert (single.group, single.name, single.overrides) == (None, None, ["seed=1"])
    assert job_logger(logger, None) is logger


def test_summarize_and_config_hash():
    lines = [
        {"step": 1, "reward": 0.2, "loss": 1.0, "eval/x": None},
        {"step": 2, "reward": 0.5, "loss": float("nan"), "flag": True},
        {"step": 3, "reward": 0.3, "eval/x": 0.9},
    ]
    assert summarize(lines) == {
        "final": {"reward": 0.3, "loss": 1.0, "eval/x": 0.9},
        "min": {"reward": 0.2, "loss": 1.0, "eval/x": 0.9},
        "max": {"reward": 0.5, "loss": 1.0, "eval/x": 0.9},
    }
    config = {"algorithm": {"lr": 1e-3}, "trainer": {"output_dir": "a", "seed": 0}, "logger": {"name": "x"}}
    moved = {"algorithm": {"lr": 1e-3}, "trainer": {"output_dir": "b", "seed": 0}, "logger": {"name": "y"}}
    changed = {"algorithm": {"lr": 3e-3}, "trainer": {"output_dir": "a", "seed": 0}, "logger": {"name": "x"}}
    assert config_hash(config) == config_hash(moved) != config_hash(changed)


def test_doctests():
    assert doctest.testmod(observability).failed == 0 and doctest.testmod(sweep).failed == 0
