"""Run tracking: metrics.jsonl in the run directory always, plus the tracker of `logger.kind`.

- wandb (the default): online only when an API key is configured (WANDB_API_KEY or a netrc login) and offline
  otherwise, so a run never fails or sends traffic for want of an account; tables, alerts and resumed runs too.
  This is the only module that imports wandb; a wandb that cannot be imported (missing, or broken by a dependency
  conflict) is a ConfigError naming the fix, checked before any model loads (`check_logger`).
- tensorboard and mlflow: accelerate's trackers (`accelerate.tracking`, what `Accelerator(log_with=...)` builds):
  scalar metrics per step and the flattened config as hyperparameters. TensorBoard writes event files to
  `<run>/tensorboard/<run name>/` (`tensorboard --logdir runs`); MLflow logs to `logger.tracking_uri`, else
  MLFLOW_TRACKING_URI, else MLflow's default (a local store in the working directory), into the experiment named
  `logger.project`, with '/' in metric names written as '.' (`reward.format.mean`: MLflow's file store keeps a
  metric in a file at its name's path, so `reward` and `reward/format/mean` cannot both exist there). Rollout tables
  stay local files with these two; a resumed run continues its MLflow run (its id is kept in the checkpoints).

Besides metrics:
- tables (`log_table`): one wandb table per step under its own key, `<name>/step_<N>`, so a new table never replaces
  an earlier one; locally `<run>/<name>/jsonl/step_<N>.jsonl` and `<run>/<name>/parquet/step_<N>.parquet` (pandas
  reads all steps as one frame with `pd.read_parquet("<run>/<name>/parquet")`);
- alerts (`alert`): a wandb alert;
- at the end of a completed run, `summary.json`: the final, min and max value of every metric in metrics.jsonl,
  the wall time, the run's overrides and a hash of its resolved config (`config_hash`), for comparing runs without
  wandb (`deepseek-rl sweeps`).
"""

from __future__ import annotations

import hashlib
import json
import math
import netrc
import os
import time
from pathlib import Path
from typing import Any

from deepseek_rl.config.schema import LoggerConfig
from deepseek_rl.errors import ConfigError
from deepseek_rl.infra.checkpoint import TrainerState
from deepseek_rl.infra.metric_names import named
from deepseek_rl.infra.resume import flatten


def import_wandb() -> Any:
    """The wandb module, or a ConfigError that says why it cannot be imported and what to do."""
    try:
        import wandb
    except ImportError as err:
        raise ConfigError(
            f"logger=wandb needs the wandb package, which cannot be imported ({type(err).__name__}: {err}); "
            "install it (pip install wandb) or choose another logger: logger=none (metrics.jsonl only), "
            "logger=tensorboard or logger=mlflow"
        ) from None
    return wandb


def check_logger(cfg: LoggerConfig) -> None:
    """Before any model loads: the tracker's package can be imported (wandb; the others are checked by the config)."""
    if cfg.kind == "wandb":
        import_wandb()


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg: LoggerConfig) -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if has_wandb_key() else "offline"


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl line, or None for a blank or cut line (a write interrupted by a full disk)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


# Where a run writes, and how it is labelled: not part of what makes two runs the same experiment.
UNHASHED = ("logger", "trainer.output_dir", "trainer.resume", "trainer.overwrite")


def config_hash(run_config: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of the resolved config without UNHASHED keys: equal for two runs of one experiment."""
    kept = {k: v for k, v in run_config.items() if k not in UNHASHED}
    for dotted in UNHASHED:
        group, _, key = dotted.partition(".")
        if key and isinstance(kept.get(group), dict):
            kept[group] = {k: v for k, v in kept[group].items() if k != key}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summarize(lines: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """final (last logged), min and max value of every numeric metric over metrics.jsonl lines."""
    final: dict[str, float] = {}
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for line in lines:
        for key, value in line.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            final[key] = value
            low[key] = min(value, low.get(key, value))
            high[key] = max(value, high.get(key, value))
    return {"final": final, "min": low, "max": high}


class RunTracker:
    """Writes one JSON line per logged step and mirrors it to wandb.

    On resume, lines logged after the checkpoint's step (by the run that was interrupted) are dropped, and the
    same wandb or MLflow run continues (its id is kept in the trainer state that checkpoints save).
    """

    def __init__(
        self,
        cfg: LoggerConfig,
        output_dir: Path,
        run_config: dict[str, Any],
        enabled: bool = True,
        state: TrainerState | None = None,
    ):
        self.enabled = enabled
        self.output_dir = output_dir
        self.path = output_dir / "metrics.jsonl"
        self.run_config = run_config
        self.started = time.time()
        self.resumed_step = state.step if state is not None else 0
        self.wandb_run = None
        self.tracker: Any = None  # accelerate's TensorBoard or MLflow tracker
        self.metric_names = cfg.metric_names  # ours | trl | both, for the trackers (infra/metric_names.py)
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        resumed_step = state.step if state is not None else 0
        self._drop_lines_after(resumed_step)
        if cfg.kind == "wandb":
            self.wandb_run = import_wandb().init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                name=cfg.name,
                tags=list(cfg.tags),
                config=run_config,
                dir=str(output_dir),
                mode=wandb_mode(cfg),
                id=state.wandb_run_id if state is not None else None,
                resume="allow" if state is not None and state.wandb_run_id else None,
            )
            if state is not None:
                state.wandb_run_id = self.wandb_run.id

        elif cfg.kind in ("tensorboard", "mlflow"):
            resumed = state.mlflow_run_id if state is not None and cfg.kind == "mlflow" else None
            self.tracker = accelerate_tracker(cfg, output_dir, run_config, resumed)
            if state is not None and cfg.kind == "mlflow":
                state.mlflow_run_id = self.tracker.active_run.info.run_id

    def _drop_lines_after(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if len(kept) != len(lines):
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **{k: _clean(v) for k, v in metrics.items()}}) + "\n"
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with self.path.open("a") as f:
                f.write(line)
        except OSError:
            os.truncate(self.path, size)  # never leave half a line (a full disk): the file stays valid JSON lines
            raise
        metrics = named(metrics, self.metric_names)  # the trackers' names (metrics.jsonl keeps ours)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.tracker is not None:
            numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
            if self.tracker.name == "mlflow":
                numbers = {k.replace("/", "."): v for k, v in numbers.items()}
            self.tracker.log(numbers, step=step)

    def history(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl (after a resume: up to the checkpoint's step); [] on other ranks."""
        if not self.enabled or not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        """`<run>/<name>/jsonl/step_<N>.jsonl` and `<run>/<name>/parquet/step_<N>.parquet`, and a wandb table under
        the key `<name>/step_<N>`."""
        if not self.enabled or not rows:
            return
        import pandas as pd

        stem = f"step_{step:06d}"
        for kind in ("jsonl", "parquet"):
            (self.output_dir / name / kind).mkdir(parents=True, exist_ok=True)
        with (self.output_dir / name / "jsonl" / f"{stem}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        pd.DataFrame(rows).to_parquet(self.output_dir / name / "parquet" / f"{stem}.parquet", index=False)
        if self.wandb_run is not None:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[_clean(row.get(c)) for c in columns] for row in rows])
            self.wandb_run.log({f"{name}/{stem}": table}, step=step)

    def alert(self, title: str, text: str) -> None:
        """A wandb alert (email/Slack when the run is online and alerts are set up); nothing without wandb."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.alert(title=title, text=text, level=wandb.AlertLevel.WARN)

    def write_summary(self) -> dict[str, Any]:
        """summary.json in the run directory (see the module docstring); returns it."""
        lines = self.history()
        summary = {
            "steps": max((line["step"] for line in lines), default=0),
            "wall_time_s": round(time.time() - self.started, 3),
            "resumed_from_step": self.resumed_step,
            "config_hash": config_hash(self.run_config),
            "overrides": list(self.run_config.get("logger", {}).get("overrides", [])),
            **summarize(lines),
        }
        if self.enabled:
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def finish(self, summary: bool = False) -> None:
        """End the wandb run; with `summary`, write summary.json first (a run that completed)."""
        if summary and self.enabled:
            self.write_summary()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None


def accelerate_tracker(
    cfg: LoggerConfig, output_dir: Path, run_config: dict[str, Any], mlflow_run_id: str | None = None
) -> Any:
    """accelerate's TensorBoard or MLflow tracker for this run, started, with the config as hyperparameters;
    `mlflow_run_id` continues that MLflow run (a resume: its parameters are already logged)."""
    name = cfg.name or output_dir.name
    if cfg.kind == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        tracker = TensorBoardTracker(name, output_dir / "tensorboard")
    else:
        import mlflow
        from accelerate.tracking import MLflowTracker

        if cfg.tracking_uri:
            mlflow.set_tracking_uri(cfg.tracking_uri)
        tags = {"group": cfg.group} if cfg.group else {}
        tags |= dict.fromkeys(cfg.tags, "true")
        tracker = MLflowTracker(cfg.project, run_id=mlflow_run_id, run_name=name, tags=tags)
    tracker.start()
    if mlflow_run_id is None:  # MLflow refuses to change a logged parameter (trainer.resume_override may have)
        scalars = (str, int, float, bool)  # what trackers take as hyperparameters; lists and None as text
        tracker.store_init_configuration(
            {k: v if isinstance(v, scalars) else str(v) for k, v in flatten(run_config).items()}
        )
    return tracker
