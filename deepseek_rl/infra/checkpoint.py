"""Checkpoints that survive preemption, and the final export in Hugging Face format.

A checkpoint is `<output_dir>/checkpoints/step-<N>/`: accelerate's state (model, optimizer, the registered LR
scheduler, every rank's RNG states; DeepSpeed shards under DeepSpeed) plus `trainer_state.json` (step, wandb run id).
The data position and the sampling noise are functions of (seed, step), so the step restores them too.

Writes are atomic: every rank writes into `.tmp-step-<N>/`, then rank 0 writes `config.json` (the run's resolved
config, which a resume compares with its own: infra/resume.py) and `trainer_state.json` last, with the size of
every file of the checkpoint (`files`), and renames the folder. A run killed mid-save leaves only a `.tmp-*` folder,
which is never picked, and the previous checkpoint stays loadable; a resume checks the sizes, so a file truncated
later (a copy cut short, a disk error) is found before anything loads. A save that fails for want of space removes
its partial folder and raises StorageError naming the intact checkpoints. After a successful save, all but the
newest `keep_last` checkpoints are deleted.
The output directory must be on a filesystem every rank sees (one machine, or shared storage across nodes).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from deepseek_rl.errors import StorageError
from deepseek_rl.infra.storage import is_disk_full
from deepseek_rl.models.lora import is_lora, save_lora_export

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    wandb_run_id: str | None = None  # the tracker's run, continued on resume
    mlflow_run_id: str | None = None
    train_seconds: float = 0.0  # seconds spent in training steps so far (evaluations excluded)
    train_tokens: float = 0.0  # completion tokens trained on so far, all ranks


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts only once its trainer_state.json exists)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    state: TrainerState,
    keep_last: int,
    config: dict[str, Any] | None = None,
) -> Path:
    """Save the full training state atomically, with the run's resolved `config`; every rank must call this.
    Raises StorageError (after removing the partial folder) when the disk fills up."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if config is not None:
                (tmp / CONFIG_FILE).write_text(json.dumps(config, default=str))
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / STATE_FILE).write_text(json.dumps({**vars(state), "files": files}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    except Exception as err:
        full = storage_error(err, output_dir, f"writing checkpoint {final.name}", writing=True)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint is never used: give its space back
        if full is not None:
            raise full from err
        raise
    if accelerator.is_main_process:
        for old in complete_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(path: Path) -> tuple[TrainerState, dict[str, int]]:
    """The trainer state of a checkpoint and the sizes of its files ({} for a checkpoint saved without them)."""
    saved = json.loads((path / STATE_FILE).read_text())
    known = {f.name for f in fields(TrainerState)}  # a checkpoint written before a field existed has its default
    state = TrainerState(**{k: v for k, v in saved.items() if k in known})
    state.step = int(state.step)
    return state, saved.get("files", {})


def load_checkpoint(accelerator: Accelerator, path: Path) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states; returns the trainer state saved with them."""
    accelerator.load_state(str(path))
    return read_state(path)[0]


def damage(path: Path) -> str | None:
    """Why a complete checkpoint cannot be trusted (an unreadable trainer state, a missing or truncated file),
    or None when every file has the size it was saved with."""
    try:
        _, files = read_state(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{STATE_FILE} cannot be read ({type(err).__name__}: {err})"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            cut = ": truncated" if actual < size else ""
            return f"{name} is {actual} bytes but was saved with {size}{cut}"
    return None


def intact_summary(run_dir: Path) -> str:
    """The newest complete checkpoint of each stage under `run_dir`, and the finished stages, for messages."""
    roots = [run_dir] + sorted(p.parent for p in run_dir.glob("*/checkpoints") if p.is_dir())
    parts = [f"checkpoint {found[-1]}" for root in roots if (found := complete_checkpoints(root))]
    parts += [f"finished stage {p.parent.name} ({p.parent})" for p in sorted(run_dir.glob("*/stage.json"))]
    return "; ".join(parts) if parts else "no checkpoint was written yet"


def storage_error(err: BaseException, run_dir: Path, doing: str, writing: bool = False) -> StorageError | None:
    """A StorageError to raise instead of `err` when it came from a full disk (see infra/storage.py), else None."""
    if isinstance(err, StorageError) or not is_disk_full(err, run_dir, writing):
        return None
    return StorageError(
        f"no space left on the device holding {run_dir} while {doing}; intact: {intact_summary(run_dir)}. "
        "Free space, then rerun with trainer.resume=auto"
    )


def export_hf(accelerator: Accelerator, model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write the policy so that `AutoModelForCausalLM.from_pretrained(directory)` loads it unchanged.

    `get_state_dict` gathers sharded parameters (ZeRO-3) on every rank; only the main process writes. A LoRA policy
    is written with its adapters merged, and the adapters alone go to `<directory>/../adapter` (see lora.py).
    """

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            unwrapped = accelerator.unwrap_model(model)
            if is_lora(unwrapped):
                save_lora_export(unwrapped, state_dict, directory, directory.parent / "adapter")
            else:
                unwrapped.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(directory)
        except Exception as err:
            full = storage_error(err, directory.parent, f"exporting the policy to {directory}", writing=True)
            if full is not None:
                raise full from err
            raise
    accelerator.wait_for_everyone()
