"""`deepseek-rl train`: compose a recipe with Hydra, validate it, run its stages.

    deepseek-rl train [--config-name RECIPE] [key=value ...]
    accelerate launch --config_file launch/zero2.yaml -m deepseek_rl.train --config-name RECIPE

A configuration, data or launch error ends in one line on stderr and exit status 2 (a mistyped recipe or key
before Hydra composes: cli/recipes.py), and so does a checkpoint that cannot be resumed; a full disk in one line and
exit status 74; a preempted run (SIGTERM) in one line and exit status 75 after its checkpoint was written; Ctrl-C
likewise with exit status 130 (a second Ctrl-C stops at once, also 130).
"""

from __future__ import annotations

import sys
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
from deepseek_rl.infra.sweep import current_job, job_logger
from deepseek_rl.paths import recipes_dir
from deepseek_rl.stages.pipeline import run_stages

ABORTED = (
    "interrupted (Ctrl-C twice): stopped at once, without a checkpoint of the step in progress; resume from the "
    "last checkpoint with trainer.resume=auto"
)


def run(dcfg: DictConfig) -> Path:
    """Validate the composed recipe and run its stages (GRPO alone by default)."""
    try:
        check_composed(dcfg)  # a key the schema lacks (a recipe file, a `++` override) is an error, never ignored
        cfg: Config = OmegaConf.to_object(dcfg)
        cfg.logger = job_logger(cfg.logger, current_job())  # a multirun job logs to its sweep's wandb group
        output_dir = Path(cfg.trainer.output_dir or HydraConfig.get().runtime.output_dir)
        run_stages(cfg, output_dir)
        return output_dir
    except UserError as err:  # configuration, data, launch, checkpoint, full disk: each its kind and exit status
        print(f"deepseek-rl: {err.kind}: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
    except Preempted as stop:  # SIGTERM (75) or Ctrl-C (130), after the checkpoint
        print(f"deepseek-rl: {stop}; resume with trainer.resume=auto", file=sys.stderr)
        sys.exit(stop.exit_status)
    except KeyboardInterrupt:  # the second Ctrl-C
        print(f"deepseek-rl: {ABORTED}", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    finally:
        release_accelerator()  # the next job of a multirun (same process) starts from a clean accelerate state


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
    try:
        hydra_main()
    except KeyboardInterrupt:  # outside a run's handlers: while Hydra composes
        print("deepseek-rl: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
