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

A failed job does not end the sweep: `SweepReport` keeps each job's outcome, the command line prints the job's one
line and goes on with the next job, and at the end prints which jobs failed and exits 1 (jobs ran with Hydra's basic
launcher, in this process). A failed job also leaves `failed.json` (exit status and message) in its job folder, for
`deepseek-rl sweeps`. A preemption or Ctrl-C stops the whole sweep (the machine is going away, or the user said
stop): the jobs after it do not start. Each job needs a folder of its own: `trainer.output_dir` set alike for every
job is refused (`check_job_output_dir`); left unset, each job writes into its Hydra job folder.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf

from deepseek_rl.config.schema import LoggerConfig
from deepseek_rl.errors import ConfigError

FAILED_FILE = "failed.json"


@dataclass
class HydraJob:
    """What Hydra knows about the running job."""

    overrides: list[str]  # the job's command-line overrides, "key=value" (sweeps already expanded)
    sweep_dir: Path | None  # the sweep directory in a multirun, else None
    num: int  # job number within the sweep (0 in a single run)
    folder: Path | None = None  # the job's Hydra output folder (.hydra/ is there)


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
        folder=Path(hydra.runtime.output_dir),
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


def check_job_output_dir(output_dir: str | None, job: HydraJob | None) -> None:
    """In a multirun, a `trainer.output_dir` that every job shares (set, not swept) is a ConfigError."""
    if job is None or job.sweep_dir is None or output_dir is None:
        return
    keys = swept_keys(job.sweep_dir)
    if keys is not None and "trainer.output_dir" not in keys:
        raise ConfigError(
            f"trainer.output_dir={output_dir} is set for every job of this multirun, which would all write into one "
            "folder; leave it unset (each job writes into its folder under hydra.sweep.dir) or sweep it too"
        )


@dataclass
class JobOutcome:
    num: int
    label: str  # the job's values of the swept keys, "algorithm.lr=0.001"
    status: int  # the job's exit status (0: completed)
    message: str  # its one line, without "deepseek-rl: " ("" when it completed)


@dataclass
class SweepReport:
    """The outcomes of the multirun jobs this process ran (see the module docstring)."""

    jobs: list[JobOutcome] = field(default_factory=list)

    def record(self, job: HydraJob, status: int, message: str = "") -> None:
        label = run_name(job.overrides, swept_keys(job.sweep_dir) if job.sweep_dir else None, job.num)
        self.jobs.append(JobOutcome(job.num, label, status, message))
        if not status and job.folder is not None:
            (job.folder / FAILED_FILE).unlink(missing_ok=True)  # an earlier attempt's, now rerun
        if status and job.folder is not None:
            try:
                record = {"status": status, "message": message, "job": label, "overrides": list(job.overrides)}
                (job.folder / FAILED_FILE).write_text(json.dumps(record) + "\n")
            except OSError:
                pass  # the folder itself may be what failed; the summary still lists the job

    def finish(self, stopped: int = 0) -> int:
        """Print the summary (stderr when a job failed); the sweep's exit status: `stopped` (a preemption or Ctrl-C
        ended it early), else 1 when a job failed, else 0."""
        failed = [j for j in self.jobs if j.status]
        if not failed and not stopped:
            print(f"deepseek-rl: sweep finished: all {len(self.jobs)} jobs completed")
            return 0
        ended = f"stopped after job {self.jobs[-1].num}; the jobs after it did not run" if stopped else "finished"
        lines = [f"deepseek-rl: sweep {ended}: {len(failed)} of {len(self.jobs)} jobs failed"]
        lines += [f"deepseek-rl:   job {j.num} ({j.label}): {j.message}" for j in failed]
        print("\n".join(lines), file=sys.stderr)
        return stopped or 1
