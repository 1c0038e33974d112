"""Rejection-sampling fine-tuning (DeepSeek-R1's stage 3): sample, keep what the rewards verify, fine-tune on it.

From the current policy (usually the RL checkpoint): `rft.samples` completions at `rft.temperature` for each of the
first `rft.num_prompts` train prompts; a completion is kept when every reward in `rft.verifiers` scores it 1.0;
per prompt at most `rft.max_per_prompt` distinct kept completions. Sampling is split over the ranks and the kept pairs
gathered; they are written to `kept.jsonl` (searchable after the run), then the policy is fine-tuned on them with the
SFT loss on the shared fine-tuning machinery (finetune.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from deepseek_rl.config.schema import Config
from deepseek_rl.data.examples import tokenize_examples
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.data.sources import source_name
from deepseek_rl.errors import DataError
from deepseek_rl.rewards import check_reward_columns
from deepseek_rl.rollout.engine import complete
from deepseek_rl.stages.evaluate import shard_of
from deepseek_rl.stages.finetune import FineTuner, FineTuneSpec
from deepseek_rl.stages.reward_set import RewardSet


def select_verified(
    prompts: list[str], completions: list[str], verified: list[bool], group_size: int, max_per_prompt: int
) -> list[tuple[str, str]]:
    """(prompt, completion) pairs that passed, at most max_per_prompt distinct completions per group of G.

    >>> select_verified(["p", "p", "q", "q"], ["a", "a", "b", "c"], [True, True, False, True], 2, 2)
    [('p', 'a'), ('q', 'c')]
    """
    kept: list[tuple[str, str]] = []
    for start in range(0, len(prompts), group_size):
        seen: set[str] = set()
        for i in range(start, start + group_size):
            if verified[i] and completions[i] not in seen and len(seen) < max_per_prompt:
                seen.add(completions[i])
                kept.append((prompts[i], completions[i]))
    return kept


def sample_and_verify(tuner: FineTuner, cfg: Config) -> tuple[list[tuple[str, str]], int]:
    """Each rank samples its share of the prompts and keeps what the verifiers pass; returns every rank's kept
    (prompt, completion) pairs in rank order, and the number sampled in all."""
    prompts = build_prompt_set(cfg.data, tuner.tokenizer, cfg.rollout.max_prompt_length, split="train")
    check_reward_columns(cfg.reward.subset(list(cfg.rft.verifiers)), list(prompts.columns), source_name(cfg.data))
    count = min(cfg.rft.num_prompts, len(prompts))
    # split at whole generation batches, seeded by the batch's first prompt: N ranks sample what one process would
    first, size = shard_of(tuner.accelerator).span(count, max(1, cfg.eval.batch_size // cfg.rft.samples))
    rollout = replace(cfg.rollout, temperature=cfg.rft.temperature)
    verifiers = RewardSet(cfg.reward.subset(list(cfg.rft.verifiers)))
    kept: list[tuple[str, str]] = []
    sampled = 0
    try:
        batches = complete(tuner.engine, prompts, size, cfg.rft.samples, rollout, cfg.trainer.seed,
                           cfg.eval.batch_size, first)  # fmt: skip
        for out in batches:
            terms = verifiers.score(out.completions, out.reward_columns(), out.group_size).terms
            verified = (terms == 1.0).all(dim=1).tolist()
            kept += select_verified(out.prompts, out.completions, verified, cfg.rft.samples, cfg.rft.max_per_prompt)
            sampled += len(out)
    finally:
        verifiers.close()
    return tuner.all_ranks(kept), sum(tuner.all_ranks([sampled]))


def run_rft(cfg: Config, output_dir: Path) -> Path:
    """Sample, verify, fine-tune; returns the fine-tuned policy's HF directory. The kept pairs are written to
    `kept.jsonl` before fine-tuning, and a resumed run reads them back instead of sampling again."""
    tuner = FineTuner(cfg, FineTuneSpec.of(cfg, "rft"), output_dir)
    kept_file = tuner.output_dir / "kept.jsonl"
    if tuner.state.step > 0 and kept_file.exists():
        rows = [json.loads(line) for line in kept_file.read_text().splitlines() if line.strip()]
        kept = [(row["prompt"], row["completion"]) for row in rows]
    else:
        kept, sampled = sample_and_verify(tuner, cfg)
        tuner.accelerator.print(f"deepseek-rl: rejection sampling kept {len(kept)} of {sampled} completions")
        if not kept:
            raise DataError(
                "rejection sampling kept no completion: the policy solves none of the sampled prompts under "
                f"rft.verifiers={list(cfg.rft.verifiers)}; raise rft.samples or rft.num_prompts, or start RFT from a "
                "stronger checkpoint (model.path)"
            )
        if tuner.is_main:
            kept_file.parent.mkdir(parents=True, exist_ok=True)
            with kept_file.open("w") as f:
                for prompt, completion in kept:
                    f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
        tuner.tracker.log(0, {"rft/kept": len(kept), "rft/sampled": sampled, "rft/kept_share": len(kept) / sampled})
    max_length = cfg.rollout.max_prompt_length + cfg.rollout.max_completion_length
    marker = cfg.rollout.tools.call_marker  # tool outputs in kept trajectories are context, not targets
    examples, _ = tokenize_examples(tuner.tokenizer, [p for p, _ in kept], [c for _, c in kept], max_length, marker)
    tuner.train(examples)
    return tuner.finish()
