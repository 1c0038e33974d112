"""The update path through accelerate: 4 accumulated micro-batches step the policy like one batch of 4x."""

import copy
from dataclasses import fields

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from deepseek_rl.algo.update import UpdateSettings, build_loss_inputs, update_policy
from deepseek_rl.batch import LossInputs, RolloutBatch, ScoredBatch
from deepseek_rl.config import AlgorithmConfig, Config, ModelConfig, TrainerConfig, grpo_plan
from deepseek_rl.infra.optim import lr_schedule
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model


def _fresh_accelerator(gradient_accumulation_steps: int) -> Accelerator:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(gradient_accumulation_steps=gradient_accumulation_steps, cpu=True)


def _inputs(tok, n=8, prompt=6, completion=5) -> LossInputs:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tok), (n, prompt + completion), generator=g)
    mask = torch.ones(n, prompt + completion, dtype=torch.long)
    loss_mask = (torch.rand(n, completion, generator=g) > 0.3).float()
    loss_mask[:, 0] = 1
    mask[:, prompt:] = loss_mask.long()
    return LossInputs(ids, mask, loss_mask, torch.randn(n, generator=g), None, None)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_accumulated_micro_batches_equal_one_batch(loss_type):
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    base = load_model(ModelConfig(), tok)
    inputs = _inputs(tok)
    params = []
    for micro in (8, 2):  # 1 micro-batch of 8, then 4 accumulated micro-batches of 2
        cfg = Config(
            algorithm=AlgorithmConfig(num_generations=2, lr=1e-2, loss_type=loss_type),
            trainer=TrainerConfig(batch_size=8, micro_batch_size=micro),
        )
        acc = _fresh_accelerator(8 // micro)
        model = copy.deepcopy(base)
        # plain SGD: the step is the gradient itself (Adam would amplify rounding in near-zero gradients)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.algorithm.lr)
        model, opt = acc.prepare(model, opt)
        settings = UpdateSettings(cfg.algorithm, grpo_plan(8, micro, 2, 1, 10, 1), 1.0, 5, 1.0)
        sums = update_policy(acc, model, opt, lr_schedule(opt, cfg.optimizer, 10, 0), inputs, settings)
        assert sums.tokens.item() == inputs.loss_mask.sum().item()
        params.append(
            (
                torch.cat([p.detach().flatten() for p in model.parameters()]),
                sums.loss.item(),
                sums.grad_norm.item(),
            )
        )
    (p1, loss1, norm1), (p4, loss4, norm4) = params
    assert loss1 == pytest.approx(loss4, rel=1e-5, abs=1e-7)
    assert norm1 == pytest.approx(norm4, rel=1e-4)
    assert not torch.equal(p1, torch.cat([p.flatten() for p in base.parameters()]))
    assert torch.allclose(p1, p4, atol=1e-7)


def test_a_non_finite_gradient_norm_skips_the_optimizer_step():
    import pytest
    from accelerate import Accelerator

    from deepseek_rl.algo.update import optimizer_step
    from deepseek_rl.errors import NumericalError

    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    accelerator = Accelerator(cpu=True)
    for max_grad_norm in (1.0, None):  # with clipping and without
        model.weight.grad = torch.full_like(model.weight, float("inf"))
        model.bias.grad = torch.zeros_like(model.bias)
        with pytest.raises(NumericalError, match="the gradient norm is inf: the optimizer step was skipped"):
            optimizer_step(accelerator, model, optimizer, scheduler, max_grad_norm, torch.tensor(float("nan")))
        for a, b in zip(before, model.parameters(), strict=True):
            assert torch.equal(a, b)
    model.weight.grad = torch.ones_like(model.weight)  # a finite step goes through, and reports its norm
    norm = optimizer_step(accelerator, model, optimizer, scheduler, None, torch.tensor(float("nan")))
    assert float(norm) == pytest.approx(6**0.5) and not torch.equal(before[0], model.weight)


def test_loss_inputs_go_to_the_trainers_device_from_a_batch_on_the_cpu():
    """An asynchronous worker's batch arrives on the CPU (it travels serialised) while the policy is on the GPU: the
    loss inputs must be on the trainer's device, every tensor of them. `meta` stands in for a second device here;
    the values are checked on the CPU (loss mask = sampled tokens x loss weight x not truncated)."""
    completion_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    rollout = RolloutBatch(
        torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.long), torch.full((4, 3), 5),
        completion_mask, torch.tensor([False, True, False, False]), ["a", "b", "c", "d"], ["p"] * 4, {}, 2,
        sampling_logprobs=-torch.rand(4, 3),
    )  # fmt: skip
    weight = torch.tensor([1.0, 1.0, 0.0, 0.0])  # a filler group (dynamic sampling) trains nothing
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    scored = ScoredBatch(rollout, ["x"], torch.zeros(4, 1), torch.zeros(4), advantages, weight)
    on_cpu = build_loss_inputs(scored, mask_truncated=True)
    assert on_cpu.loss_mask.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert on_cpu.input_ids.shape == (4, 5) and on_cpu.advantages.tolist() == [1.0, -1.0, 0.5, -0.5]
    moved = build_loss_inputs(scored, mask_truncated=True, device="meta")
    tensors = {f.name: getattr(moved, f.name) for f in fields(moved) if getattr(moved, f.name) is not None}
    assert set(tensors) == {"input_ids", "attention_mask", "loss_mask", "advantages", "sampling_logprobs"}
    assert {name: t.device.type for name, t in tensors.items()} == dict.fromkeys(tensors, "meta")
