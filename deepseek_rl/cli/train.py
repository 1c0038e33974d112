"""`deepseek-rl train`: compose a recipe with Hydra, validate it, run its stages.

    deepseek-rl train [--config-name RECIPE] [key=value ...]
    deepseek-rl train --config-name RECIPE -m algorithm.lr=1e-3,3e-3       (a sweep: one job per value)
    accelerate launch --config_file launch/zero2.yaml -m deepseek_rl.train --config-name RECIPE

A configuration, data or launch error ends in one line on stderr and exit status 2 (a mistyped recipe or key
before Hydra composes: cli/recipes.py), and so does a checkpoint that cannot be resumed; a full disk in one line and
exit status 74; a preempted run (SIGTERM) in one line and exit status 75 after its checkpoint was written; Ctrl-C
likewise with exit status 130 (a second Ctrl-C stops at once, also 130).

In a multirun (-m) a job that fails that way, or with an unexpected exception (its traceback is printed), does not
stop the sweep: its line names the job, the next job runs, and the end of the sweep lists the failed jobs and exits
1 (infra/sweep.py). A preemption or Ctrl-C stops the whole sweep with its own status.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from deepseek_rl.cli.recipes import prepare
from deepseek_rl.config.overrides import check_composed
from deepseek_rl.config.schema import Config
from deepseek_rl.errors import ConfigError, UserError
from deepseek_rl.infra.distributed import release_accelerator
from deepseek_rl.infra.preemption import INTERRUPTED_EXIT, Preempted
from deepseek_rl.infra.sweep import HydraJob, SweepReport, check_job_output_dir, current_job, job_logger
from deepseek_rl.paths import recipes_dir
from deepseek_rl.stages.pipeline import run_stages

SWEEP = SweepReport()  # the outcomes of this process's multirun jobs
ABORTED = (
    "interrupted (Ctrl-C twice): stopped at once, without a checkpoint of the step in progress; resume from the "
    "last checkpoint with trainer.resume=auto"
)


def run(dcfg: DictConfig) -> Path | None:
    """Validate the composed recipe and run its stages (GRPO alone by default)."""
    job = current_job()
    try:
        try:
            check_composed(dcfg)  # a key the schema lacks (a recipe file, a `++` override) is an error, never ignored
            cfg: Config = OmegaConf.to_object(dcfg)
        except ConfigError:
            discard_hydra_folder(job)
            raise
        check_job_output_dir(cfg.trainer.output_dir, job)  # every job of a sweep writes into a folder of its own
        cfg.logger = job_logger(cfg.logger, job)  # a multirun job logs to its sweep's wandb group
        output_dir = Path(cfg.trainer.output_dir or HydraConfig.get().runtime.output_dir)
        say(f"run folder {output_dir}")  # whatever the logger
        run_stages(cfg, output_dir)
        say(f"finished; results in {output_dir}")
        if in_sweep(job):
            SWEEP.record(job, 0)
        return output_dir
    except UserError as err:  # configuration, data, launch, checkpoint, full disk: each its kind and exit status
        stop(job, err.exit_status, f"{err.kind}: {err}")
    except Preempted as err:
        stop(job, err.exit_status, f"{err}; resume with trainer.resume=auto", whole_sweep=True)
    except KeyboardInterrupt:
        stop(job, INTERRUPTED_EXIT, ABORTED, whole_sweep=True)
    except Exception as err:
        if not in_sweep(job):
            raise  # a bug: Hydra prints its traceback
        traceback.print_exc()
        stop(job, 1, f"failed with {type(err).__name__}: {err}".splitlines()[0][:300])
    finally:
        release_accelerator()  # the next job of a multirun (same process) starts from a clean accelerate state
    return None


def say(message: str) -> None:
    """A line on stdout from the first process (RANK 0, or a run without a launcher)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"deepseek-rl: {message}", flush=True)


def discard_hydra_folder(job: HydraJob | None) -> None:
    """A run whose config is wrong leaves no run folder: Hydra made one for it (its .hydra/ and log) before the
    config was validated; it is removed when that is all it holds."""
    if in_sweep(job):
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", f"{HydraConfig.get().job.name}.log"}:
        shutil.rmtree(folder, ignore_errors=True)
        cwd, parent = Path.cwd().resolve(), folder.resolve().parent
        while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):  # runs/<recipe>/, if empty
            parent.rmdir()
            parent = parent.parent


def in_sweep(job: HydraJob | None) -> bool:
    return job is not None and job.sweep_dir is not None


def stop(job: HydraJob | None, status: int, message: str, whole_sweep: bool = False) -> None:
    """Print the run's one line; exit with `status`, except in a sweep, which goes on with its next job (unless
    `whole_sweep`)."""
    if not in_sweep(job):
        print(f"deepseek-rl: {message}", file=sys.stderr)
        sys.exit(status)
    print(f"deepseek-rl: job {job.num}: {message}", file=sys.stderr)
    SWEEP.record(job, status, message)
    if whole_sweep:
        sys.exit(status)


@hydra.main(config_path=str(recipes_dir()), config_name="default", version_base="1.3")
def hydra_main(dcfg: DictConfig) -> None:
    run(dcfg)


def main() -> None:
    """Check the command line (recipe name, keys; --help lists the recipes) before Hydra composes and runs it."""
    try:
        if prepare(sys.argv[1:]):
            return
    except ConfigError as err:
        print(f"deepseek-rl: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("deepseek-rl: interrupted (Ctrl-C) before the run started", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    status = 0
    try:
        hydra_main()
    except SystemExit as end:
        if isinstance(end.code, str):
            print(end.code, file=sys.stderr)
        status = end.code if isinstance(end.code, int) else int(end.code is not None)
    except KeyboardInterrupt:  # outside a run's handlers: while Hydra composes, or between the jobs of a sweep
        print("deepseek-rl: interrupted (Ctrl-C)", file=sys.stderr)
        status = INTERRUPTED_EXIT
    if SWEEP.jobs:
        status = SWEEP.finish(stopped=status)
    if status:
        sys.exit(status)
