"""Checkpoints that survive preemption, and the final export in Hugging Face format.

A checkpoint is `<output_dir>/checkpoints/step-<N>/`: accelerate's state (model, optimizer, the registered LR
scheduler, every rank's RNG states; DeepSpeed shards under DeepSpeed) plus `trainer_state.json` (step, wandb run id).
The data position and the sampling noise are functions of (seed, step), so the step restores them too.

Writes are atomic: every rank writes into `.tmp-step-<N>/`, then rank 0 writes `trainer_state.json` last and renames
the folder. A run killed mid-save leaves only a `.tmp-*` folder, which is never picked, and the previous checkpoint
stays loadable. After a successful save, all but the newest `keep_last` checkpoints are deleted.
The output directory must be on a filesystem every rank sees (one machine, or shared storage across nodes).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from deepseek_rl.models.lora import is_lora, save_lora_export

STATE_FILE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    wandb_run_id: str | None = None
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


def find_resume_checkpoint(resume: str, output_dir: Path) -> Path | None:
    """`never` -> None; `auto` -> the newest complete checkpoint in output_dir (or None); else that folder."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: not a complete checkpoint (no {STATE_FILE} there)")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainerState, keep_last: int) -> Path:
    """Save the full training state atomically; every rank must call this."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(vars(state)))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in complete_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states; returns the trainer state saved with them."""
    accelerator.load_state(str(path))
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


def export_hf(accelerator: Accelerator, model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write the policy so that `AutoModelForCausalLM.from_pretrained(directory)` loads it unchanged.

    `get_state_dict` gathers sharded parameters (ZeRO-3) on every rank; only the main process writes. A LoRA policy
    is written with its adapters merged, and the adapters alone go to `<directory>/../adapter` (see lora.py).
    """

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        unwrapped = accelerator.unwrap_model(model)
        if is_lora(unwrapped):
            save_lora_export(unwrapped, state_dict, directory, directory.parent / "adapter")
        else:
            unwrapped.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(directory)
    accelerator.wait_for_everyone()
