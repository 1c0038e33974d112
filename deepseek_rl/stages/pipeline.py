"""Stages run in order, each from the previous one's checkpoint: the R1 pipeline is `stages: [sft, grpo, eval]`.

    sft      cold-start supervised fine-tuning on worked traces, stopped early (sft.py)
    grpo     group-relative RL with rule-based rewards (grpo.py)
    control  more SFT from the cold start with GRPO's budget, one run per control.budgets (control.py)
    rft      rejection-sampling fine-tuning on the policy's own verified samples (rft.py)
    eval     held-out evaluation of every checkpoint made so far (or of `model` alone), with a before/after table

Every stage runs in the processes the launcher started (one, or N under DDP/DeepSpeed), on the same process group.
A single stage writes into the run directory itself; several stages each write into `<run dir>/<stage>/`, and the
run directory also gets `results.json`, `results.md` (the table) and `curves.png` (GRPO's reward, held-out accuracy
and completion length over steps). Each stage is its own wandb run, grouped under the run directory's name.

A finished stage writes `<stage dir>/stage.json` (its checkpoint); with `trainer.resume=auto` a pipeline skips the
stages that finished and resumes the interrupted one from its newest checkpoint. A SIGTERM (or Ctrl-C) stops the run
with `Preempted` (exit status 75, or 130, from the command line) at the end of a training step after a checkpoint,
between stages, or in the evaluation stage before its next generation batch (each evaluated model's metrics are
saved as `metrics-<name>.json`, and a resumed run does not evaluate it again).

Before anything loads, rank 0 locks the run directory for this run and checks that a new run does not start over
an earlier one's outputs without `trainer.overwrite` (infra/rundir.py); the lock is given back when the run ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from deepseek_rl.config.schema import Config, ModelConfig
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.data.sources import source_name
from deepseek_rl.infra.checkpoint import storage_error
from deepseek_rl.infra.distributed import launched_world_size, on_rank_zero, release_accelerator
from deepseek_rl.infra.machine import machine_line
from deepseek_rl.infra.plots import plot_training_curves
from deepseek_rl.infra.preemption import Preempted, Preemption
from deepseek_rl.infra.resume import flatten, require_same_run
from deepseek_rl.infra.rundir import RunLock, claim
from deepseek_rl.infra.storage import check_writable
from deepseek_rl.infra.tracking import check_logger
from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.rewards import check_reward_columns
from deepseek_rl.rollout.engine import BuiltinEngine, RolloutEngine
from deepseek_rl.rollout.tools import check_isolation, with_tools
from deepseek_rl.stages.control import LABELS as CONTROL_LABELS
from deepseek_rl.stages.control import run_control
from deepseek_rl.stages.evaluate import Shard, evaluate
from deepseek_rl.stages.grpo import RewardFunctions, train
from deepseek_rl.stages.rft import run_rft
from deepseek_rl.stages.sft import run_sft

LABELS = {
    "base": "starting model",
    "sft": "cold start (SFT)",
    "grpo": "after RL (GRPO)",
    "rft": "after RFT",
    **{f"control_{kind}": label for kind, label in CONTROL_LABELS.items()},
}
STAGE_FILE = "stage.json"


MAX_STEPS = {"grpo": "trainer.max_steps", "sft": "sft.max_steps", "rft": "rft.max_steps"}


def finished_stage(stage_dir: Path, stage: str, config: dict, override: bool) -> Path | None:
    """The checkpoint a finished stage recorded, or None when there is none or the stage should continue (its
    max_steps was raised). A finished stage made with different run-changing settings stops the run
    (CheckpointError) unless trainer.resume_override."""
    record = stage_dir / STAGE_FILE
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    if "config" in saved:
        key = MAX_STEPS.get(stage, "")  # a control's budget is the RL stage's, not a step count
        before, now = flatten(saved["config"]).get(key), flatten(config).get(key)
        if before != now:
            print(f"deepseek-rl: stage {stage} finished with {MAX_STEPS[stage]}={before}; continuing it to {now}")
            return None
        require_same_run(saved["config"], config, stage, override, f"the finished {stage} stage in {stage_dir}")
    return Path(saved["checkpoint"])


def record_stage(stage_dir: Path, stage: str, checkpoint: Path, config: dict) -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    stage_dir.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "checkpoint": str(checkpoint), "config": config}
    (stage_dir / STAGE_FILE).write_text(json.dumps(record, default=str) + "\n")


def run_stage(stage: str, cfg: Config, stage_dir: Path, reward_funcs: RewardFunctions | None = None) -> Path:
    """One training stage; returns its HF checkpoint. `reward_funcs` (Python callables) are GRPO's extra rewards."""
    if stage == "sft":
        return run_sft(cfg, stage_dir)
    if stage == "grpo":
        return train(cfg, stage_dir, reward_funcs) / "final"
    return run_rft(cfg, stage_dir)


def run_stages(cfg: Config, output_dir: Path, reward_funcs: RewardFunctions | None = None) -> dict[str, Path]:
    """Run cfg.stages; returns the checkpoint directory of each training stage. Before anything loads: the output
    directory is checked for writing and locked for this run (infra/rundir.py), the tools' sandbox mode and the
    tracker's package are checked; a SIGTERM is honoured in every stage and between them (Preempted); a
    write that fails for want of space becomes a StorageError naming what is intact. `reward_funcs` (Python
    callables) are GRPO's extra rewards."""
    preemption = Preemption()  # one flag for the whole run (infra/preemption.py)
    locks: list[RunLock] = []
    try:
        key = "trainer.output_dir" if cfg.trainer.output_dir is not None else "hydra.run.dir"
        check_writable(output_dir, key)
        check_isolation(cfg.rollout, cfg.reward.sandbox)  # tool calls: the sandbox mode, as code rewards decide it
        check_logger(cfg.logger)  # the tracker's package imports
        if cfg.rollout.engine == "vllm" and any(s in cfg.stages for s in ("grpo", "rft", "eval")):
            from deepseek_rl.rollout.vllm_engine import check_vllm_install

            check_vllm_install()  # before any model loads: vLLM is installed
        trainer = cfg.trainer  # one run at a time in the folder, never over an earlier one by accident
        on_rank_zero(lambda: locks.append(claim(output_dir, trainer.resume, trainer.overwrite, key)))
        start = time.perf_counter()
        checkpoints = _run_stages(cfg, output_dir, preemption, reward_funcs)
        if len(cfg.stages) > 1 and is_main_process():  # the wall time, with what scales it on another machine
            print(f"deepseek-rl: {' -> '.join(cfg.stages)} {machine_line(time.perf_counter() - start)}")
        return checkpoints
    except Exception as err:
        full = storage_error(err, output_dir, "writing the run's files")
        if full is not None:
            raise full from err
        raise
    finally:
        for lock in locks:
            lock.release()
        preemption.close()


def _run_stages(
    cfg: Config, output_dir: Path, preemption: Preemption, reward_funcs: RewardFunctions | None
) -> dict[str, Path]:
    several = len(cfg.stages) > 1
    group = cfg.logger.group or (output_dir.name if several else None)
    checkpoints: dict[str, Path] = {}
    model = cfg.model
    for stage in cfg.stages:
        stage_dir = output_dir / stage if several else output_dir
        logger = replace(
            cfg.logger,
            group=group,
            name=f"{cfg.logger.name or output_dir.name}-{stage}" if several else cfg.logger.name,
        )
        stage_cfg = replace(cfg, model=model, logger=logger)
        config = asdict(stage_cfg)
        done = None
        if cfg.trainer.resume == "auto" and stage != "eval":
            done = finished_stage(stage_dir, stage, config, cfg.trainer.resume_override)
        if done is not None:
            print(f"deepseek-rl: stage {stage} already finished ({done}); skipping it")
            checkpoints[stage] = done
        elif preemption.requested:
            raise Preempted(stage, detail="before it started; the stages before it finished and are recorded")
        elif stage == "control":
            start = ModelConfig(path=str(checkpoints["sft"]), tokenizer=None)
            for kind in cfg.control.budgets:
                name, control_dir = f"control_{kind}", output_dir / f"control_{kind}"
                control_cfg = replace(stage_cfg, model=start, logger=replace(logger, name=f"{logger.name}-{kind}"))
                control_config = asdict(control_cfg)
                done = None
                if cfg.trainer.resume == "auto":
                    done = finished_stage(control_dir, name, control_config, cfg.trainer.resume_override)
                checkpoints[name] = done or run_control(control_cfg, kind, control_dir, output_dir / "grpo")
                record_stage(control_dir, name, checkpoints[name], control_config)
        elif stage == "eval":
            # the starting checkpoint too (e.g. the RL policy before RFT), but not a tiny model's random init
            models = {"base": cfg.model} if cfg.model.path is not None else {}
            models |= {name: ModelConfig(path=str(path), tokenizer=None) for name, path in checkpoints.items()}
            run_eval_stage(stage_cfg, models or {"base": model}, stage_dir, output_dir, preemption)
        else:
            checkpoints[stage] = run_stage(stage, stage_cfg, stage_dir, reward_funcs)
            record_stage(stage_dir, stage, checkpoints[stage], config)
        if stage in ("grpo", "control") and is_main_process():
            controls = {LABELS[n]: output_dir / n / "metrics.jsonl" for n in checkpoints if n.startswith("control_")}
            grpo_metrics = (output_dir / "grpo" if several else stage_dir) / "metrics.jsonl"
            plot_training_curves(grpo_metrics, output_dir / "curves.png", controls)
        if stage in checkpoints:  # the next stage starts from this one's export (the controls branch off instead)
            model = ModelConfig(path=str(checkpoints[stage]), tokenizer=None)
    return checkpoints


class InterruptibleEngine:
    """The evaluation stage's engine: raises Preempted before the next generation batch once a SIGTERM arrived
    (evaluation has no checkpoint; the models already evaluated keep their results)."""

    def __init__(self, inner: RolloutEngine, preemption: Preemption, done: list[str]):
        self.inner, self.preemption, self.done = inner, preemption, done
        self.tokenizer = inner.tokenizer

    def session(self):
        return self.inner.session()

    def generate(self, *args, **kwargs):
        if self.preemption.requested:
            kept = f"; the results of {', '.join(self.done)} are saved" if self.done else ""
            raise Preempted("eval", detail=f"during evaluation{kept}")
        return self.inner.generate(*args, **kwargs)

    def policy_updated(self) -> None:
        self.inner.policy_updated()

    def pop_sync_seconds(self) -> float | None:
        return self.inner.pop_sync_seconds()

    def close(self) -> None:
        self.inner.close()


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def eval_shard() -> Shard:
    """The evaluation stage runs outside any accelerator: split it over the launched processes directly."""
    if launched_world_size() == 1 or not torch.distributed.is_initialized():
        return Shard()

    def gather(items: list) -> list:
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size(), gather)


def eval_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def run_eval_stage(
    cfg: Config,
    models: dict[str, ModelConfig],
    stage_dir: Path,
    run_dir: Path,
    preemption: Preemption,
) -> dict[str, dict]:
    """Evaluate each model on the held-out split (each rank a shard of it); per-sample JSONL and metrics per model
    and a results table for the run, written by rank 0. With trainer.resume=auto a model whose metrics were saved
    (by a run preempted later in this stage) is not evaluated again."""
    # a training stage before this one: its model goes, and its DeepSpeed config, which made transformers load these
    # partitioned for ZeRO-3 (the built-in sampler cannot read partitioned weights)
    release_accelerator(keep_process_group=True)
    results: dict[str, dict[str, float]] = {}
    shard, main = eval_shard(), is_main_process()
    for name, model_cfg in models.items():
        saved = stage_dir / f"metrics-{name}.json"
        if cfg.trainer.resume == "auto" and saved.is_file():
            results[name] = json.loads(saved.read_text())
            continue
        tokenizer = load_tokenizer(model_cfg)
        prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="eval")
        check_reward_columns(cfg.reward.subset([cfg.eval.correctness]), list(prompts.columns),
                             source_name(cfg.data, "eval"))  # fmt: skip
        model = load_model(model_cfg, tokenizer, seed=cfg.trainer.seed).to(eval_device())
        eos = eos_token_ids(tokenizer, model)
        inner = with_tools(BuiltinEngine(model, tokenizer, eos), cfg.rollout, eos, cfg.reward.sandbox)
        engine = InterruptibleEngine(inner, preemption, list(results))
        report = evaluate(engine, prompts, cfg.eval, cfg.rollout, cfg.trainer.seed, cfg.reward, shard)
        engine.close()
        results[name] = report.metrics
        if main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            with (stage_dir / f"samples-{name}.jsonl").open("w") as f:
                for row in report.samples:
                    f.write(json.dumps(row) + "\n")
            saved.write_text(json.dumps(report.metrics, indent=2) + "\n")
        del model, engine
    table = results_table(results)
    if main:
        print(table)
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        (run_dir / "results.md").write_text(table + "\n")
    return results


def results_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per metric, one column per evaluated checkpoint."""
    names = list(results)
    metrics = list(next(iter(results.values())))
    header = "| metric | " + " | ".join(LABELS.get(n, n) for n in names) + " |"
    lines = [header, "|---|" + "---|" * len(names)]
    for metric in metrics:
        cells = " | ".join(_fmt(metric, results[n][metric]) for n in names)
        lines.append(f"| {metric.removeprefix('eval/')} | {cells} |")
    return "\n".join(lines)


def _fmt(metric: str, value: float) -> str:
    return f"{value:.1f}" if "length" in metric else f"{value:.3f}"
