"""Held-out evaluation: greedy and sampled accuracy, pass@k (unbiased), maj@k, format rate, completion length.

For each problem: one greedy completion, and n sampled ones at the evaluation temperature. A completion is correct
when the verifier reward (`eval.correctness`, e.g. `answer_match` or `accuracy`) scores it 1.0.
  pass@k   = mean over problems of 1 - C(n - c, k) / C(n, k), c correct among n samples (Chen et al., 2021)
  maj@n    = share of problems whose most frequent answer among the n samples is a correct one; answers are
             counted by equivalence, as the verifier judges it (`answer_classes`): sample i votes with sample j when
             the verifier scores i's completion 1.0 against j's final answer as the gold answer, so with `accuracy`
             (math-verify) \frac{1}{2}, 0.5 and 1/2 are one answer; without an `answer` column (code) or with a
             reward model as the verifier, equal final-answer strings are one answer
  format   = share of sampled completions that the format reward scores 1.0
Sampling noise is seeded, so an evaluation of the same model is reproducible.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from statistics import fmean as mean
from typing import Any

from accelerate import Accelerator
from accelerate.utils import gather_object

from deepseek_rl.batch import RolloutBatch
from deepseek_rl.config.reward import RewardConfig
from deepseek_rl.config.rollout import RolloutConfig
from deepseek_rl.config.stages import EvalConfig
from deepseek_rl.data.prompts import PromptSet
from deepseek_rl.rewards.math_answer import extract_answer
from deepseek_rl.rollout.engine import RolloutEngine, complete
from deepseek_rl.stages.reward_set import RewardSet


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n - c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(answers: list[Hashable | None], correct: list[bool]) -> bool:
    """Is the most frequent answer (an answer string or class; ties: the first seen) one of the correct ones?"""
    counted = Counter(a for a in answers if a is not None)
    if not counted:
        return False
    top = max(counted, key=lambda a: (counted[a], -answers.index(a)))
    return any(ok for a, ok in zip(answers, correct, strict=True) if a == top)


def final_answer(completion: str) -> str | None:
    found = extract_answer(completion)
    return None if found is None else found[1].strip()


def identity(items: list) -> list:
    return items


@dataclass(frozen=True)
class Shard:
    """This rank's part of an evaluation split over `world` ranks; `gather` returns every rank's list in rank order.
    Problems are split at whole generation batches, so N ranks sample exactly what one process would."""

    rank: int = 0
    world: int = 1
    gather: Callable[[list], list] = identity

    def span(self, count: int, per_batch: int) -> tuple[int, int]:
        """(first problem, number of problems) of this rank among `count`, in whole batches of `per_batch`."""
        batches = -(-count // per_batch)
        share = -(-batches // self.world) * per_batch
        first = min(self.rank * share, count)
        return first, min(share, count - first)


def shard_of(accelerator: Accelerator) -> Shard:
    """The evaluation shard of this process (the whole evaluation on one process)."""
    if accelerator.num_processes == 1:
        return Shard()
    return Shard(accelerator.process_index, accelerator.num_processes, gather_object)


@dataclass
class EvalReport:
    metrics: dict[str, float]  # eval/greedy_accuracy, eval/pass@k, ...
    samples: list[dict[str, Any]]  # one row per completion: prompt, completion, kind, correct, format, length


def evaluate(
    engine: RolloutEngine,
    prompts: PromptSet,
    cfg: EvalConfig,
    rollout: RolloutConfig,
    seed: int = 0,
    reward: RewardConfig | None = None,
    shard: Shard = Shard(),
) -> EvalReport:
    """Evaluate the engine's model on the first `cfg.num_prompts` prompts (greedy only when cfg.samples is 0);
    with a `shard`, every rank samples and scores its part and gets the whole report.

    `reward` is the recipe's reward config: the verifier and format reward are scored with its arguments (e.g.
    `accuracy: {sources: [boxed]}`), functions and worker settings, so evaluation and training agree on what counts
    as correct.
    """
    count = min(cfg.num_prompts, len(prompts))
    names = [cfg.correctness] + ([cfg.format_reward] if cfg.format_reward else [])
    rewards = RewardSet((reward or RewardConfig(weights={cfg.correctness: 1.0})).subset(names))
    sampled: list[dict[str, Any]] = []
    try:
        first, size = shard.span(count, cfg.batch_size)
        greedy_cfg = replace(rollout, temperature=0.0)
        batches = complete(engine, prompts, size, 1, greedy_cfg, seed, cfg.batch_size, first)
        greedy = shard.gather(score_samples(batches, rewards))
        if cfg.samples:
            first, size = shard.span(count, max(1, cfg.batch_size // cfg.samples))
            sampling = replace(rollout, temperature=cfg.temperature)
            batches = complete(engine, prompts, size, cfg.samples, sampling, seed, cfg.batch_size, first)
            sampled = shard.gather(score_samples(batches, rewards))
    finally:
        rewards.close()
    for row in greedy:
        row["kind"] = "greedy"
    metrics = {
        "eval/greedy_accuracy": mean(s["correct"] for s in greedy),
        "eval/greedy_format_rate": mean(s["format"] for s in greedy),
        "eval/greedy_length": mean(s["length"] for s in greedy),
    }
    if sampled:
        metrics |= sampled_metrics(sampled, count, cfg.samples)
    if rollout.tools.enabled:  # the share of completions that called the tool at least once
        metrics["eval/greedy_tool_use"] = mean(s["tool_calls"] > 0 for s in greedy)
        if sampled:
            metrics["eval/tool_use"] = mean(s["tool_calls"] > 0 for s in sampled)
    return EvalReport(metrics=metrics, samples=greedy + sampled)


def sampled_metrics(sampled: list[dict[str, Any]], count: int, n: int) -> dict[str, float]:
    """Accuracy, pass@1 / pass@n, maj@n, format rate and length over n samples for each of `count` problems."""
    correct = [s["correct"] for s in sampled]
    by_problem = [correct[i * n : (i + 1) * n] for i in range(count)]
    answers = [[s["answer_class"] for s in sampled[i * n : (i + 1) * n]] for i in range(count)]
    metrics = {
        "eval/sampled_accuracy": mean(correct),
        f"eval/maj@{n}": mean(majority_correct(a, c) for a, c in zip(answers, by_problem, strict=True)),
        "eval/format_rate": mean(s["format"] for s in sampled),
        "eval/completion_length": mean(s["length"] for s in sampled),
    }
    for k in sorted({1, n}):
        metrics[f"eval/pass@{k}"] = mean(pass_at_k(n, sum(c), k) for c in by_problem)
    return metrics


def score_samples(batches: Iterator[RolloutBatch], rewards: RewardSet) -> list[dict[str, Any]]:
    """One row per completion: the first reward is the verifier (correct = 1.0), the second the format."""
    rows: list[dict[str, Any]] = []
    for out in batches:
        terms = rewards.score(out.completions, out.reward_columns(), out.group_size).terms  # [N, F]
        classes = answer_classes(out, rewards)
        for i, completion in enumerate(out.completions):
            rows.append(
                {
                    "kind": "sampled",
                    "prompt": out.prompts[i],
                    "completion": completion,
                    "correct": bool(terms[i, 0] == 1.0),
                    "format": bool(terms.shape[1] > 1 and terms[i, 1] == 1.0),
                    "length": int(out.completion_mask[i].sum()),
                    "truncated": bool(out.truncated[i]),
                    "tool_calls": int(out.tool_stats["calls"][i]) if out.tool_stats is not None else 0,
                    "answer_class": classes[i],
                }
            )
    return rows


def answer_classes(out: RolloutBatch, rewards: RewardSet) -> list[int | None]:
    """For each completion, which answer it gives within its group, as an index (None: no final answer): the first
    of the group's distinct final answers that the verifier (the first reward) accepts as the same answer, i.e.
    scores the completion 1.0 against it as the gold `answer`. Equal answer strings are one answer without asking;
    without an `answer` column, or with a reward model as the verifier, only equal strings are."""
    answers = [final_answer(c) for c in out.completions]
    columns = out.reward_columns()
    g = out.group_size
    distinct = [list(dict.fromkeys(a for a in answers[k : k + g] if a is not None)) for k in range(0, len(answers), g)]
    pairs = []  # (row of a completion giving answer d_i, its group, i, j) for every j < i among distinct answers
    for k, group in enumerate(distinct):
        first = {a: answers.index(a, k * g) for a in group}
        pairs += [(first[a], k, i, j) for i, a in enumerate(group) for j in range(i)]
    same: set[tuple[int, int, int]] = set()
    if pairs and "answer" in columns and rewards.names[0] not in rewards.models:
        rows = [row for row, _, _, _ in pairs]
        pair_columns = {key: [values[r] for r in rows] for key, values in columns.items()}
        pair_columns["answer"] = [distinct[k][j] for _, k, _, j in pairs]
        terms = rewards.score([out.completions[r] for r in rows], pair_columns).terms  # [pairs, F]
        same = {(k, i, j) for (_, k, i, j), t in zip(pairs, terms[:, 0].tolist(), strict=True) if t == 1.0}
    classes: list[int | None] = []
    for k, group in enumerate(distinct):
        merged: list[int] = []  # distinct answer i -> the first earlier answer it equals (or itself)
        for i in range(len(group)):
            merged.append(next((merged[j] for j in range(i) if (k, i, j) in same), i))
        index = {a: merged[i] for i, a in enumerate(group)}
        classes += [None if a is None else index[a] for a in answers[k * g : (k + 1) * g]]
    return classes


class HeldOutEval:
    """Evaluation on a held-out split during training with the stage's engine: every rank samples its shard of the
    problems (inside one engine session: under ZeRO-3 the parameters are gathered once), and all get the metrics."""

    def __init__(self, prompts: PromptSet, settings: EvalConfig, rollout: RolloutConfig, seed: int, reward):
        self.prompts, self.settings, self.rollout, self.seed, self.reward = (
            prompts, settings, rollout, seed, reward
        )  # fmt: skip

    def __call__(self, engine: RolloutEngine, shard: Shard, seed: int | None = None) -> dict[str, float]:
        """The metrics (the same on every rank). Every rank must call this."""
        seed = self.seed if seed is None else seed
        with engine.session():
            report = evaluate(engine, self.prompts, self.settings, self.rollout, seed, self.reward, shard)
        return report.metrics
