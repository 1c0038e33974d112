"""logger=tensorboard and logger=mlflow, through accelerate's trackers, offline: the metrics of every step and the
config arrive in the tracker's own files, read back with its own reader; metrics.jsonl is still written."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

from .conftest import run_cli

RUN = ["--config-name", "smoke", "trainer.max_steps=2", "trainer.save_final=false", "trainer.output_dir=out"]


def need(module: str) -> None:
    """Skip without the package, except in CI, where the dev extras install it."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI (pip install -e '.[dev]' installs it)")
        pytest.skip(f"{module} is not installed")


def jsonl_rewards(run: Path) -> list[float]:
    return [json.loads(line)["reward"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_logs_every_step_offline(tmp_path: Path):
    need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli("train", *RUN, "logger=tensorboard", "logger.name=tb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "out" / "tensorboard" / "tb"
    scalars = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
    assert [step for step, _ in scalars["reward"]] == [1, 2]
    assert [value for _, value in scalars["reward"]] == pytest.approx(jsonl_rewards(tmp_path / "out"))
    assert "reward/answer_match/mean" in scalars and "loss" in scalars
    assert list(run_dir.rglob("hparams.yml"))  # the config, as accelerate stores it
    assert not (tmp_path / "out" / "wandb").exists()


def test_mlflow_logs_every_step_to_a_local_store(tmp_path: Path):
    need("mlflow")
    import mlflow

    uri = f"file:{tmp_path / 'mlruns'}"
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"}  # MLflow 3 wants opting in to the file store
    result = run_cli("train", *RUN, "logger=mlflow", f"logger.tracking_uri={uri}", "logger.name=ml", cwd=tmp_path,
                     env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    os.environ.update(env)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("deepseek-rl")
        (run,) = client.search_runs([experiment.experiment_id])
        history = client.get_metric_history(run.info.run_id, "reward")
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]
    assert run.info.run_name == "ml" and run.info.status == "FINISHED"
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(jsonl_rewards(tmp_path / "out"))
    assert run.data.params["algorithm.num_generations"] == "4"
    assert "reward.answer_match.mean" in run.data.metrics  # '/' is '.' in MLflow (see infra/tracking.py)


def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path):
    """2 steps with a checkpoint, then trainer.resume=auto to step 4: one MLflow run holds steps 1-4."""
    need("mlflow")
    import mlflow

    uri = f"file:{tmp_path / 'mlruns'}"
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"}
    base = [*RUN, "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.save_every=2"]
    first = run_cli("train", *base, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli("train", *base, "trainer.max_steps=4", "trainer.resume=auto", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    os.environ.update(env)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("deepseek-rl").experiment_id])
        history = client.get_metric_history(run.info.run_id, "reward")
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(jsonl_rewards(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert saved["mlflow_run_id"] == run.info.run_id


def test_a_tracker_that_is_not_installed_fails_before_anything_loads(monkeypatch):
    from deepseek_rl.config import ConfigError, LoggerConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match="logger=mlflow needs the mlflow package: pip install mlflow"):
        LoggerConfig(kind="mlflow")
    with pytest.raises(ConfigError, match="logger.kind='tensorbord' is not one of .*did you mean 'tensorboard'"):
        LoggerConfig(kind="tensorbord")


@pytest.mark.parametrize("names", ["trl", "both"])
def test_trl_metric_names_in_the_tracker(names: str, tmp_path: Path):
    """logger.metric_names=trl: a dashboard built for TRL's GRPOTrainer finds its names; metrics.jsonl keeps ours.
    `both`: the tracker gets each metric under both names."""
    need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli("train", *RUN, "logger=tensorboard", "logger.name=tb", f"logger.metric_names={names}",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tags = set()
    for events in (tmp_path / "out" / "tensorboard" / "tb").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"rewards/answer_match/mean", "frac_reward_zero_std", "completions/mean_length", "learning_rate"} <= tags
    ours = {"reward/answer_match/mean", "zero_std_groups"}
    assert ours <= tags if names == "both" else not ours & tags
    line = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward/answer_match/mean" in line and "zero_std_groups" in line
