"""Run tracking: metrics.jsonl in the run directory always, and wandb unless logger.kind=none.

wandb runs online only when an API key is configured (WANDB_API_KEY or a netrc login) and offline otherwise,
so a run never fails or sends traffic for want of an account. This is the only module that imports wandb.
"""

from __future__ import annotations

import json
import math
import netrc
import os
from pathlib import Path
from typing import Any

from deepseek_rl.checkpoint import TrainerState
from deepseek_rl.config import LoggerConfig


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


class RunTracker:
    """Writes one JSON line per logged step and mirrors it to wandb.

    On resume, lines logged after the checkpoint's step (by the run that was interrupted) are dropped, and the
    same wandb run continues (its id is kept in the trainer state that checkpoints save).
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
        self.path = output_dir / "metrics.jsonl"
        self.wandb_run = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        resumed_step = state.step if state is not None else 0
        self._drop_lines_after(resumed_step)
        if cfg.kind == "wandb":
            import wandb

            self.wandb_run = wandb.init(
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

    def _drop_lines_after(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: _clean(v) for k, v in metrics.items()}}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
