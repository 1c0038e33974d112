"""Rejection-sampling fine-tuning (DeepSeek-R1's stage 3): sample, keep what the rewards verify, fine-tune on it.

From the current policy (usually the RL checkpoint): `rft.samples` completions at `rft.temperature` for each of the
first `rft.num_prompts` train prompts; a completion is kept when every reward in `rft.verifiers` scores it 1.0;
per prompt at most `rft.max_per_prompt` distinct kept completions. The kept pairs are written to `kept.jsonl`
(searchable after the run), then the policy is fine-tuned on them with the SFT loss.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from deepseek_rl.config import Config, RewardConfig
from deepseek_rl.data import build_prompt_set
from deepseek_rl.models import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.rollout import Sampler
from deepseek_rl.scoring import RewardSet
from deepseek_rl.sft import FineTuneSettings, fine_tune, tokenize_pairs
from deepseek_rl.tracking import RunTracker


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


def run_rft(cfg: Config, output_dir: Path) -> Path:
    """Sample, verify, fine-tune; returns the fine-tuned policy's HF directory."""
    torch.manual_seed(cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed).to(device)
    prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="train")
    sampler = Sampler(model, tokenizer, eos_token_ids(tokenizer, model))
    rollout = replace(cfg.rollout, temperature=cfg.rft.temperature)
    verifiers = RewardSet(RewardConfig(weights={name: 1.0 for name in cfg.rft.verifiers}))
    kept: list[tuple[str, str]] = []
    sampled = 0
    try:
        model.eval()
        for out in sampler.complete(prompts, cfg.rft.num_prompts, cfg.rft.samples, rollout, cfg.trainer.seed):
            terms = verifiers.score(out.completions, out.reward_columns())
            verified = (terms == 1.0).all(dim=1).tolist()
            kept += select_verified(out.prompts, out.completions, verified, cfg.rft.samples, cfg.rft.max_per_prompt)
            sampled += len(out)
    finally:
        verifiers.close()
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "kept.jsonl").open("w") as f:
        for prompt, completion in kept:
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    print(f"deepseek-rl: rejection sampling kept {len(kept)} of {sampled} completions")
    if not kept:
        raise RuntimeError("rejection sampling kept no completion: the policy solves none of the sampled prompts")

    tracker = RunTracker(cfg.logger, output_dir, asdict(cfg))
    tracker.log(0, {"rft/kept": len(kept), "rft/sampled": sampled, "rft/kept_share": len(kept) / sampled})
    pairs = tokenize_pairs(tokenizer, [p for p, _ in kept], [c for _, c in kept])
    settings = FineTuneSettings(cfg.rft.lr, cfg.rft.batch_size, cfg.rft.max_steps, seed=cfg.trainer.seed)
    fine_tune(model, pairs, tokenizer.pad_token_id, settings, tracker, "rft")
    tracker.finish()
    final = output_dir / "final"
    model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    return final
