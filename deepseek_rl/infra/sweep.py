"""Which sweep a Hydra job belongs to, so that every run of a sweep lands in one wandb group.

`deepseek-rl train --config-name R -m algorithm.lr=1e-6,3e-6 algorithm.num_generations=8,16` runs one Hydra job
per combination (in one process with the basic launcher), each in `<sweep dir>/<job number>_<its overrides>/`.
For each job:
  group     `logger.group`, else the sweep directory's name (`<recipe>_<time>` by default, see recipes/_common.yaml)
  name      `logger.name`, else the job's values of the swept keys, `algorithm.lr=1e-06,algorithm.num_generations=8`
            (the swept keys are read from the sweep's `multirun.yaml`; without it, all of the job's overrides)
  overrides the job's command-line overrides, kept in `logger.overrides` (so in the wandb run config and summary.json)
A single run (no -m) keeps its name and group and only records its overrides. Outside Hydra (tests calling
`train()` directly) nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from deepseek_rl.config.schema import LoggerConfig


@dataclass
class HydraJob:
    """What Hydra knows about the running job."""

    overrides: list[str]  # the job's command-line overrides, "key=value" (sweeps already expanded)
    sweep_dir: Path | None  # the sweep directory in a multirun, else None
    num: int  # job number within the sweep (0 in a single run)


def current_job() -> HydraJob | None:
    """The running Hydra job, or None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    multirun = hydra.mode == RunMode.MULTIRUN
    return HydraJob(
        overrides=list(hydra.overrides.task),
        sweep_dir=Path(hydra.sweep.dir) if multirun else None,
        num=int(hydra.job.num) if multirun else 0,
    )


def swept_keys(sweep_dir: Path) -> set[str] | None:
    """Keys given several values on the sweep's command line (from `multirun.yaml`); None when it is not there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    overrides = OmegaConf.load(path).hydra.overrides.task
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def run_name(overrides: list[str], keys: set[str] | None, num: int) -> str:
    """The job's `key=value` overrides of the swept keys (all of them when `keys` is None), comma-separated.

    >>> run_name(["algorithm.lr=1e-06", "trainer.max_steps=2"], {"algorithm.lr"}, 0)
    'algorithm.lr=1e-06'
    >>> run_name([], None, 3)
    'job3'
    """
    chosen = [o for o in overrides if keys is None or o.split("=", 1)[0].lstrip("+~") in keys]
    return ",".join(chosen) or f"job{num}"


def job_logger(logger: LoggerConfig, job: HydraJob | None) -> LoggerConfig:
    """The logger settings of this job: its overrides recorded, and in a sweep its group and name filled in."""
    if job is None:
        return logger
    logger = replace(logger, overrides=logger.overrides or list(job.overrides))
    if job.sweep_dir is None:
        return logger
    name = logger.name or run_name(job.overrides, swept_keys(job.sweep_dir), job.num)
    return replace(logger, group=logger.group or job.sweep_dir.name, name=name)
