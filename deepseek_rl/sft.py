"""Supervised fine-tuning on (prompt, completion) pairs: the cold start of the R1 pipeline, and the fine-tuning step
of rejection sampling (rft.py).

The loss is the mean negative log-likelihood of the completion tokens (and the EOS that ends them); prompt tokens
are context only. Batches are drawn without replacement from seeded permutations, one device, AdamW with linear
warmup. The cold start is deliberately stopped early (`sft.stop_accuracy`): every `sft.eval_every` steps one
completion per validation problem is sampled at temperature 1, and training stops as soon as that accuracy
reaches the threshold, so the model is right only part of the time and RL has something to learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from deepseek_rl.config import Config
from deepseek_rl.data import DataError, build_prompt_set, load_rows, render_prompt, step_indices
from deepseek_rl.evaluate import evaluate
from deepseek_rl.logprobs import completion_logprobs
from deepseek_rl.models import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.rollout import Sampler
from deepseek_rl.tracking import RunTracker


@dataclass
class Pairs:
    """Tokenized training pairs; completions end with EOS."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def batch(self, indices: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> input_ids [B, P + C] (prompts left-padded, completions right-padded), attention_mask, loss_mask [B, C]."""
        p = max(len(self.prompt_ids[i]) for i in indices)
        c = max(len(self.completion_ids[i]) for i in indices)
        ids = torch.full((len(indices), p + c), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, i in enumerate(indices):
            prompt, completion = self.prompt_ids[i], self.completion_ids[i]
            ids[row, p - len(prompt) : p] = torch.tensor(prompt)
            ids[row, p : p + len(completion)] = torch.tensor(completion)
            attention[row, p - len(prompt) : p + len(completion)] = 1
        return ids, attention, attention[:, p:].float()


def tokenize_pairs(tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]) -> Pairs:
    eos = tokenizer.eos_token_id
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    return Pairs(encode(prompts), [ids + [eos] for ids in encode(completions)])


def sft_loss(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    logp, _ = completion_logprobs(model, ids, attention, loss_mask.shape[1])
    return -(logp * loss_mask).sum() / loss_mask.sum()


@dataclass
class FineTuneSettings:
    lr: float
    batch_size: int
    max_steps: int
    warmup_steps: int = 0
    eval_every: int = 0  # steps between calls of `check` (0: never)
    seed: int = 0


def fine_tune(
    model: PreTrainedModel,
    pairs: Pairs,
    pad_id: int,
    settings: FineTuneSettings,
    tracker: RunTracker,
    desc: str,
    check: Callable[[int], bool] | None = None,
) -> int:
    """Train on the pairs until max_steps, or until `check(step)` (run every eval_every steps) says stop.
    Returns the number of steps taken."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = lambda step: min(1.0, (step + 1) / (settings.warmup_steps + 1))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    device = next(model.parameters()).device
    model.train()
    progress = tqdm(range(settings.max_steps), desc=desc, dynamic_ncols=True)
    for step in progress:
        indices = step_indices(len(pairs), min(settings.batch_size, len(pairs)), step, settings.seed)
        ids, attention, loss_mask = (t.to(device) for t in pairs.batch(indices, pad_id))
        loss = sft_loss(model, ids, attention, loss_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        tracker.log(step + 1, {"loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if check is not None and settings.eval_every and (step + 1) % settings.eval_every == 0 and check(step + 1):
            return step + 1
    return settings.max_steps


def run_sft(cfg: Config, output_dir: Path) -> Path:
    """The cold-start stage: fine-tune on the task's worked solutions with the early-stop rule; returns the HF dir."""
    torch.manual_seed(cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed).to(_device())
    rows = load_rows(cfg.data, "train")
    if cfg.sft.completion_column not in rows.column_names:
        column = cfg.sft.completion_column
        raise DataError(f"sft.completion_column='{column}' is not a column of the data: {rows.column_names}")
    render = lambda text: render_prompt(text, cfg.data.template, tokenizer, cfg.data.system_prompt)  # noqa: E731
    prompts = [render(text) for text in list(rows[cfg.data.prompt_column])]
    pairs = tokenize_pairs(tokenizer, prompts, list(rows[cfg.sft.completion_column]))
    validation = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="validation")
    sampler = Sampler(model, tokenizer, eos_token_ids(tokenizer, model))
    tracker = RunTracker(cfg.logger, output_dir, asdict(cfg))

    check_settings = replace(cfg.eval, num_prompts=cfg.sft.num_validation, samples=1, temperature=1.0)

    def check(step: int) -> bool:
        metrics = evaluate(sampler, validation, check_settings, cfg.rollout, step, cfg.reward.args).metrics
        tracker.log(step, {k.replace("eval/", "validation/"): v for k, v in metrics.items()})
        model.train()
        return cfg.sft.stop_accuracy is not None and metrics["eval/sampled_accuracy"] >= cfg.sft.stop_accuracy

    settings = FineTuneSettings(
        cfg.sft.lr, cfg.sft.batch_size, cfg.sft.max_steps, cfg.sft.warmup_steps, cfg.sft.eval_every, cfg.trainer.seed
    )
    steps = fine_tune(model, pairs, tokenizer.pad_token_id, settings, tracker, "sft", check)
    tracker.finish()
    final = output_dir / "final"
    model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    print(f"deepseek-rl: cold start stopped after {steps} steps; checkpoint in {final}")
    return final


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
