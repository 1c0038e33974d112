"""Resuming a stage: the newest intact checkpoint, of the same run, restored; or one message saying why not.

`trainer.resume=auto` tries the complete checkpoints newest first. One that is damaged (a file missing or not the
size it was saved with, an unreadable trainer state, or one that fails to load) is moved aside to
`checkpoints/damaged-step-<N>` (kept for inspection, never picked or pruned again) and the next older one is tried;
the run says which it skipped and why, and which it resumed. With none intact it stops (CheckpointError) rather
than start over silently. `trainer.resume=<dir>` names one checkpoint: it is verified, never replaced.

Before anything loads, the checkpoint's `config.json` (the resolved config it was saved with) is compared with the
run's: a key that changes the run (the learning rate, the seed, num_generations, the data, the rewards, ...) stops
the resume with the list of keys, old and new values, because the restored optimizer and data position belong to
the old values. `trainer.resume_override=true` continues anyway with the new values; the optimizer's
hyperparameters (lr, betas, eps, weight decay) and the schedule's peak lr are then set from the new config, so what
`summary.json` records is what runs. Keys that only say where or how the run writes, logs, evaluates or fits in
memory never count (`RUN_NEUTRAL`), nor do the groups of other stages (`OTHER_STAGES`). `trainer.max_steps` may
change: a longer run continues, and a decaying schedule decays over the new length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from deepseek_rl.errors import CheckpointError
from deepseek_rl.infra.checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    TrainerState,
    complete_checkpoints,
    damage,
    load_checkpoint,
)
from deepseek_rl.infra.distributed import any_rank

# Dotted keys (and every key below them) that do not change what a run computes.
RUN_NEUTRAL = (
    "logger",
    "stages",
    "eval",
    "trainer.output_dir",
    "trainer.resume",
    "trainer.resume_override",
    "trainer.overwrite",
    "trainer.max_steps",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.save_final",
    "trainer.preflight",
    "trainer.micro_batch_size",
    "sft.max_steps",
    "rft.max_steps",
    "reward.num_workers",
    "model.attn_implementation",
    "model.gradient_checkpointing",
    "algorithm.logprob_chunk_size",
    "rollout.vllm.gpu_memory_utilization",
    "rollout.vllm.max_num_seqs",
    "rollout.vllm.enable_prefix_caching",
    "rollout.vllm.sleep_level",
    "rollout.vllm.enforce_eager",
    "rollout.vllm.cpu_kv_cache_gib",
)
# Config groups a stage does not read, so a change there does not concern its checkpoints.
OTHER_STAGES = {"grpo": ("sft", "rft"), "sft": ("rft", "algorithm"), "rft": ("sft", "algorithm")}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves.

    >>> flatten({"algorithm": {"lr": 0.1, "betas": [0.9, 0.99]}, "stages": ["grpo"]})
    {'algorithm.lr': 0.1, 'algorithm.betas': [0.9, 0.99], 'stages': ['grpo']}
    """
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _ignored(key: str, stage: str) -> bool:
    skip = RUN_NEUTRAL + OTHER_STAGES.get(stage, ())
    return any(key == s or key.startswith(s + ".") for s in skip)


def changed_keys(saved: dict[str, Any], current: dict[str, Any], stage: str) -> list[str]:
    """'key: old -> new' for every run-changing key whose value differs (or exists on one side only).

    >>> changed_keys({"algorithm": {"lr": 1e-3}, "logger": {"name": "a"}},
    ...              {"algorithm": {"lr": 2e-3}, "logger": {"name": "b"}}, "grpo")
    ['algorithm.lr: 0.001 -> 0.002']
    """
    old, new = (
        flatten(json.loads(json.dumps(saved, default=str))),
        flatten(json.loads(json.dumps(current, default=str))),
    )
    missing = "(not set)"
    return [
        f"{key}: {old.get(key, missing)} -> {new.get(key, missing)}"
        for key in sorted(old.keys() | new.keys())
        if not _ignored(key, stage) and old.get(key, missing) != new.get(key, missing)
    ]


def check_same_run(path: Path, config: dict[str, Any], stage: str, override: bool) -> list[str]:
    """The run-changing differences from the checkpoint's config; CheckpointError unless `override`."""
    saved_file = path / CONFIG_FILE
    if not saved_file.is_file():
        return []  # saved before checkpoints kept their config: nothing to compare
    return require_same_run(json.loads(saved_file.read_text()), config, stage, override, f"checkpoint {path}")


def require_same_run(saved: dict[str, Any], config: dict[str, Any], stage: str, override: bool, what: str) -> list[str]:
    """The run-changing differences between `saved` (the config `what` was made with) and `config`; raises
    CheckpointError listing them unless `override`."""
    changes = changed_keys(saved, config, stage)
    if changes and not override:
        raise CheckpointError(
            f"the config differs from the one {what} was made with, in keys that change the run: "
            f"{'; '.join(changes)}. Resume with the old values, start a new run (another trainer.output_dir or "
            "trainer.resume=never), or set trainer.resume_override=true to continue with the new values"
        )
    return changes


def hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[list[dict[str, Any]], list[float]]:
    """The optimizer's per-group settings and the schedule's peak learning rates, as built from the config."""
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return groups, list(scheduler.base_lrs)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any, saved: tuple) -> None:
    """Put the config's settings back after a checkpoint restored the old ones, and recompute the current lr at
    the restored schedule position (a LambdaLR)."""
    groups, base_lrs = saved
    for group, fresh in zip(optimizer.param_groups, groups, strict=True):
        group.update(fresh)
    scheduler.base_lrs = base_lrs
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _say(accelerator: Accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(f"deepseek-rl: {message}", file=sys.stderr)


def _try_load(accelerator: Accelerator, path: Path) -> tuple[TrainerState | None, str | None]:
    try:
        state, reason = load_checkpoint(accelerator, path), None
    except Exception as err:  # noqa: BLE001 - any failure to load makes the checkpoint unusable
        state, reason = None, f"it cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    if any_rank(accelerator, reason is not None):
        return None, reason or "it cannot be loaded on another rank"
    return state, None


def resume_stage(
    accelerator: Accelerator,
    resume: str,
    override: bool,
    output_dir: Path,
    config: dict[str, Any],
    stage: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> TrainerState | None:
    """Restore the newest intact checkpoint of this run (see the module docstring); None when there is none to
    resume (resume=never, or auto before the first checkpoint). Every rank must call this."""
    if resume == "never":
        return None
    explicit = resume != "auto"
    if explicit:
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise CheckpointError(f"trainer.resume={resume}: not a complete checkpoint (no {STATE_FILE} there)")
        candidates = [path]
    else:
        candidates = complete_checkpoints(output_dir)[::-1]
    skipped: list[tuple[Path, str]] = []
    for path in candidates:
        reason = damage(path)
        if reason is None:
            changes = check_same_run(path, config, stage, override)
            saved = hyperparameters(optimizer, scheduler)
            state, reason = _try_load(accelerator, path)
        if reason is None:
            if changes:
                apply_hyperparameters(optimizer, scheduler, saved)
                _say(accelerator, f"resuming with changed settings (trainer.resume_override): {'; '.join(changes)}")
            _set_aside(accelerator, skipped, path, state)
            return state
        if explicit:
            raise CheckpointError(
                f"trainer.resume={resume}: the checkpoint is damaged ({reason}); resume from another checkpoint "
                "(trainer.resume=auto picks the newest intact one)"
            )
        skipped.append((path, reason))
    if skipped:
        found = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise CheckpointError(
            f"no intact checkpoint to resume in {output_dir / 'checkpoints'} ({found}). Restore a checkpoint there, "
            "or start over with trainer.resume=never (or another trainer.output_dir)"
        )
    return None


def _set_aside(accelerator: Accelerator, skipped: list[tuple[Path, str]], resumed: Path, state: TrainerState) -> None:
    """Move the damaged checkpoints to damaged-step-<N> and say so, and which one the run resumes."""
    for path, reason in skipped:
        aside, n = path.with_name(f"damaged-{path.name}"), 1
        while aside.exists():
            aside, n = path.with_name(f"damaged-{path.name}.{n}"), n + 1
        if accelerator.is_main_process:
            path.rename(aside)
        _say(accelerator, f"checkpoint {path} is damaged ({reason}); moved it to {aside}")
    accelerator.wait_for_everyone()
    newest = "the newest intact checkpoint, " if skipped else ""
    _say(accelerator, f"resuming from {newest}{resumed} (step {state.step})")
