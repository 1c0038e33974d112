"""Padding-free packed updates and token-budget micro-batches give the padded path's log-probs, losses and gradients
(fp32; tolerances measured: differences are float reordering, ~1e-6), for every aggregation and policy loss, with
tool outputs masked out of the loss, with LoRA, and over a whole short run."""

import copy
import json
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from deepseek_rl.algo.logprobs import completion_logprobs
from deepseek_rl.algo.update import UpdateSettings, add_old_and_ref_logprobs, micro_batches, update_policy
from deepseek_rl.batch import LossInputs
from deepseek_rl.config import AlgorithmConfig, ModelConfig, grpo_plan
from deepseek_rl.config.lora import LoraConfig
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model

from .conftest import run_cli


def ragged_inputs(tok, n=8, prompt=7, completion=9, seed=0) -> LossInputs:
    """Left-padded prompts and right-padded completions of random lengths; the loss mask leaves out a span of
    "tool output" tokens inside some completions (they stay in the attention, as in multi-turn rollouts)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, len(tok), (n, prompt + completion), generator=g)
    attention = torch.zeros_like(ids)
    loss_mask = torch.zeros(n, completion)
    for row in range(n):
        p = int(torch.randint(2, prompt + 1, (1,), generator=g))
        c = int(torch.randint(1, completion + 1, (1,), generator=g))
        attention[row, prompt - p : prompt + c] = 1
        loss_mask[row, :c] = 1
        if c > 4 and row % 2:
            loss_mask[row, 2:4] = 0  # tool output tokens: attended to, never in the loss
    ids = ids * attention  # pad id 0 on padding
    return LossInputs(ids, attention, loss_mask, torch.randn(n, generator=g), None, None)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("lora", [False, True])
def test_packed_logprobs_equal_padded(arch, lora):
    tok = build_char_tokenizer()
    cfg = ModelConfig(arch=arch, num_kv_heads=2, lora=LoraConfig(r=4) if lora else LoraConfig())
    model = load_model(cfg, tok, seed=1, trainable=True)
    inputs = ragged_inputs(tok)
    c = inputs.completion_length
    padded, padded_entropy = completion_logprobs(model, inputs.input_ids, inputs.attention_mask, c, 0.7, 4, True)
    packed, packed_entropy = completion_logprobs(
        model, inputs.input_ids, inputs.attention_mask, c, 0.7, 4, True, packed=True
    )
    real = inputs.attention_mask[:, -c:].bool()
    torch.testing.assert_close(packed[real], padded[real], rtol=0, atol=2e-5)
    torch.testing.assert_close(packed_entropy[real], padded_entropy[real], rtol=0, atol=2e-5)
    assert (packed[~real] == 0).all()
    # gradients through the packed path match too
    grads = []
    for flag in (False, True):
        model.zero_grad()
        logp, _ = completion_logprobs(model, inputs.input_ids, inputs.attention_mask, c, 1.0, packed=flag)
        (logp * inputs.loss_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def fresh_accelerator(steps: int) -> Accelerator:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(gradient_accumulation_steps=steps, cpu=True)


def one_update(base, inputs, alg: AlgorithmConfig, micro: int, packed: bool, budget: int | None = None):
    plan = grpo_plan(8, micro, 2, alg.num_iterations, 10, 1)
    accelerator = fresh_accelerator(plan.micro_batches)
    model = copy.deepcopy(base)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    settings = UpdateSettings(alg, plan, 0.9, 9, None, packed, budget)
    reference = copy.deepcopy(base) if alg.kl_coef else None
    with_logprobs = add_old_and_ref_logprobs(model, reference, inputs, settings, accelerator)
    sums = update_policy(accelerator, model, optimizer, scheduler, with_logprobs, settings)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), sums


VARIANTS = [
    AlgorithmConfig(num_generations=2, loss_type=loss_type, policy_loss=policy, kl_coef=kl, num_iterations=passes)
    for loss_type, policy, kl, passes in [
        ("grpo", "clip", 0.0, 1), ("bnpo", "clip", 0.05, 2), ("dr_grpo", "clip", 0.0, 1), ("dapo", "clip", 0.05, 1),
        ("dapo", "cispo", 0.0, 2), ("grpo", "sapo", 0.0, 2),
    ]
] + [AlgorithmConfig(num_generations=2, loss_type="grpo", importance_sampling="sequence", num_iterations=2)]


@pytest.mark.parametrize("alg", VARIANTS, ids=lambda a: f"{a.loss_type}-{a.policy_loss}-{a.importance_sampling}")
def test_packed_update_equals_padded_for_every_loss(alg):
    tok = build_char_tokenizer()
    base = load_model(ModelConfig(), tok, seed=2)
    inputs = ragged_inputs(tok)
    padded, padded_sums = one_update(base, inputs, alg, micro=4, packed=False)
    packed, packed_sums = one_update(base, inputs, alg, micro=4, packed=True)
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    assert not torch.equal(padded, start)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-6)
    for name in ("loss", "tokens", "kl_sum", "entropy_sum", "ratio_sum"):
        a, b = getattr(padded_sums, name).item(), getattr(packed_sums, name).item()
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("packed", [False, True])
def test_token_budget_micro_batches_step_like_row_micro_batches(loss_type, packed):
    """The normalisers cover the whole step, so regrouping the rows into token-budget micro-batches gives the
    same step (bnpo's per-micro-batch mean is the exception, by its definition)."""
    tok = build_char_tokenizer()
    base = load_model(ModelConfig(), tok, seed=2)
    inputs = ragged_inputs(tok)
    alg = AlgorithmConfig(num_generations=2, loss_type=loss_type)
    rows, _ = one_update(base, inputs, alg, micro=4, packed=packed)
    budgeted, sums = one_update(base, inputs, alg, micro=4, packed=packed, budget=24)
    torch.testing.assert_close(budgeted, rows, rtol=0, atol=1e-6)
    lengths = inputs.attention_mask.sum(1).tolist()
    settings = UpdateSettings(alg, grpo_plan(8, 4, 2, 1, 10, 1), 1.0, 9, None, packed, 24)
    batches = micro_batches(None, inputs, settings)
    assert sorted(int(r) for b in batches for r in b) == list(range(8))  # every row once
    for b in batches:
        cost = sum(lengths[int(r)] for r in b) if packed else len(b) * max(lengths[int(r)] for r in b)
        assert cost <= 24 or len(b) == 1


def test_a_short_run_is_the_same_padded_and_packed(tmp_path):
    losses = {}
    for packed in ("false", "true"):
        run = tmp_path / packed
        done = run_cli(
            "train", "--config-name", "smoke", f"trainer.padding_free={packed}", "trainer.max_steps=3",
            "logger=none", "eval.every=0", "trainer.save_final=false", f"trainer.output_dir={run}", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[packed] = [(m["loss"], m["kl"], m["reward"]) for m in metrics]
    assert len(losses["true"]) == 3
    for (a, kl_a, r_a), (b, kl_b, r_b) in zip(losses["false"], losses["true"], strict=True):
        assert r_a == r_b and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) and math.isclose(kl_a, kl_b, abs_tol=1e-6)


@pytest.mark.parametrize("stage", ["sft", "rft"])
def test_fine_tuning_is_the_same_padded_and_packed(stage: str, tmp_path):
    """The cold start and rejection-sampling fine-tuning on the packed path: the same losses step for step."""
    from .test_trainer_keys import STAGES

    (tmp_path / "anything.py").write_text("def anything(completions, **kw):\n    return [1.0] * len(completions)\n")
    losses = {}
    for packed in ("false", "true"):
        run = tmp_path / packed
        done = run_cli("train", *STAGES[stage], f"trainer.padding_free={packed}", "logger=none",
                       "trainer.save_final=false", f"trainer.output_dir={run}", cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[packed] = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)
