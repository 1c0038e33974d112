"""The cold start of the R1 pipeline: supervised fine-tuning on worked traces, stopped early.

The examples come from the train split (data/examples.py: chat `messages`, or prompt and completion columns) and
train on the shared fine-tuning machinery (finetune.py), under any launch backend. The cold start is deliberately
stopped early (`sft.stop_accuracy`): every `sft.eval_every` steps each validation problem is decoded greedily and
sampled once at temperature 1, and training stops at the first check where `sft.stop_metric` reaches the threshold
and the greedy accuracy lies inside `sft.stop_greedy_band`, so the model is right only part of the time and RL has
something to learn. Near the threshold the curve is steep and noisy (a check can read 0.3 and the next 0.8); the
band turns a check that overshoots into "not yet" instead of a cold start with no room left for RL. With
`sft.stop_accuracy: null` the checks are logged and never stop it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from deepseek_rl.config.schema import Config
from deepseek_rl.config.stages import SFTConfig
from deepseek_rl.data.examples import Examples, load_examples
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.data.sources import source_name
from deepseek_rl.rewards import check_reward_columns
from deepseek_rl.stages.evaluate import HeldOutEval, shard_of
from deepseek_rl.stages.finetune import FineTuner, FineTuneSpec


def sft_examples(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> Examples:
    """The train split's demonstrations, tokenized; tool outputs in them (after rollout.tools.call_marker) are
    context, not targets: during rollouts the sandbox writes them."""
    max_length = cfg.sft.max_length or cfg.rollout.max_prompt_length + cfg.rollout.max_completion_length
    sft, marker = cfg.sft, cfg.rollout.tools.call_marker
    return load_examples(cfg.data, tokenizer, "train", sft.messages_column, sft.completion_column, max_length, marker)


def reached(metrics: dict[str, float], sft: SFTConfig) -> bool:
    """Whether a validation check's metrics stop the cold start: the stop metric at its threshold, and the greedy
    accuracy inside the band when there is one."""
    if sft.stop_accuracy is None or metrics[f"eval/{sft.stop_metric}"] < sft.stop_accuracy:
        return False
    band = sft.stop_greedy_band
    return band is None or band[0] <= metrics["eval/greedy_accuracy"] <= band[1]


def run_sft(cfg: Config, output_dir: Path) -> Path:
    """Fine-tune on the train split's traces with the early-stop rule; returns the HF export directory."""
    tuner = FineTuner(cfg, FineTuneSpec.of(cfg, "sft"), output_dir)
    examples = sft_examples(cfg, tuner.tokenizer)
    check = None
    if cfg.sft.eval_every:
        validation = build_prompt_set(cfg.data, tuner.tokenizer, cfg.rollout.max_prompt_length, split="validation")
        check_reward_columns(cfg.reward.subset([cfg.eval.correctness]), list(validation.columns),
                             source_name(cfg.data, "validation"))  # fmt: skip
        settings = replace(cfg.eval, num_prompts=cfg.sft.num_validation, samples=1, temperature=1.0)
        evaluator = HeldOutEval(validation.subset(settings.num_prompts), settings, cfg.rollout, 0, cfg.reward)

        def check(step: int) -> bool:
            metrics = evaluator(tuner.engine, shard_of(tuner.accelerator), seed=step)
            tuner.tracker.log(step, {k.replace("eval/", "validation/"): v for k, v in metrics.items()})
            return reached(metrics, cfg.sft)

    steps = tuner.train(examples, check)
    final = tuner.finish()
    tuner.accelerator.print(f"deepseek-rl: cold start stopped after {steps} steps; checkpoint in {final}")
    if check is not None and cfg.sft.stop_accuracy is not None and steps >= cfg.sft.max_steps:
        band = f" with greedy accuracy in {cfg.sft.stop_greedy_band}" if cfg.sft.stop_greedy_band else ""
        tuner.accelerator.print(
            f"deepseek-rl: warning: no validation check met sft.stop_accuracy={cfg.sft.stop_accuracy} "
            f"({cfg.sft.stop_metric}){band} within sft.max_steps={cfg.sft.max_steps}: the cold start ran to the end "
            "and may leave RL little to learn (validation/* in sft/metrics.jsonl has the curve)"
        )
    return final
