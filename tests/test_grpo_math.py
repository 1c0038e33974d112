"""The GRPO objective against hand-computed values, and gradient accumulation against one big batch."""

import math

import pytest
import torch

from deepseek_rl.algo.advantages import group_advantages, zero_std_groups
from deepseek_rl.algo.losses import (
    StepNormaliser,
    aggregate,
    clipped_surrogate,
    kl_penalty,
    policy_loss,
)
from deepseek_rl.config import AlgorithmConfig


def test_group_advantages_hand_computed():
    # group 1: rewards 1,0,0,0 -> mean 0.25; unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.25) = 0.5
    #          advantages (1 - 0.25) / 0.5 = 1.5 and (0 - 0.25) / 0.5 = -0.5
    # group 2: rewards 2,2,2,2 -> all advantages 0 (zero-std group)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=4, scale="group", eps=0.0)
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    assert torch.equal(adv[4:], torch.zeros(4))
    # Dr. GRPO: centred only
    assert torch.allclose(
        group_advantages(rewards, 4, scale="none"), torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    )
    assert zero_std_groups(rewards, 4).tolist() == [False, True]


def test_group_advantages_eps_and_batch_scale():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # eps is added to the std: 0.75 / (0.5 + 0.25) = 1.0
    assert group_advantages(rewards, 4, "group", eps=0.25)[0].item() == pytest.approx(1.0)
    # batch scale uses the std of all rewards (one group here: the same 0.5)
    assert group_advantages(rewards, 4, "batch", eps=0.0)[0].item() == pytest.approx(1.5)


def _norm(sequences, micro_batches, tokens, c_max):
    return StepNormaliser(
        sequences_rank=sequences, micro_batches=micro_batches, tokens_global=tokens, max_completion_length=c_max
    )


def test_loss_at_ratio_one_equals_minus_advantage_aggregated():
    # two completions with advantages 1.5 and -0.5; lengths 2 and 3 tokens (C = 3, C_max = 4)
    adv = torch.tensor([1.5, -0.5])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    logp = torch.log(torch.full((2, 3), 0.3)).requires_grad_()
    expected = {
        "grpo": (-1.5 + 0.5) / 2,  # per-sequence token means -1.5 and 0.5, averaged
        "bnpo": (2 * -1.5 + 3 * 0.5) / 5,  # token mean over the micro-batch
        "dapo": (2 * -1.5 + 3 * 0.5) / 5,  # token sum / 5 tokens in the step
        "dr_grpo": (2 * -1.5 + 3 * 0.5) / (2 * 4),  # token sum / (2 sequences x C_max 4)
    }
    for loss_type, value in expected.items():
        cfg = AlgorithmConfig(loss_type=loss_type, kl_coef=0.0)
        terms = policy_loss(logp, None, None, None, adv, mask, cfg, _norm(2, 1, 5.0, 4))
        assert terms.loss.item() == pytest.approx(value), loss_type
        assert terms.ratio_sum.item() == pytest.approx(5.0)  # ratio exactly 1 on all 5 tokens


def test_gradient_at_ratio_one_is_advantage_weighted_score():
    # d loss / d logp_t = -A / 5 per token for dapo with 5 tokens
    adv = torch.tensor([1.5, -0.5])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    logp = torch.zeros(2, 3, requires_grad=True)
    terms = policy_loss(logp, None, None, None, adv, mask, AlgorithmConfig(loss_type="dapo"), _norm(2, 1, 5.0, 4))
    terms.loss.backward()
    expected = torch.tensor([[-1.5 / 5, -1.5 / 5, 0.0], [0.5 / 5, 0.5 / 5, 0.5 / 5]])
    assert torch.allclose(logp.grad, expected)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    # log(pi_ref / pi) = -1
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(1.0)  # -(-1)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5)  # 0.5 * 1
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)  # e^-1 - (-1) - 1


def test_clipped_surrogate_hand_computed():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 5.0]])
    loss, low, high = clipped_surrogate(ratio, torch.tensor([1.0]), 0.2, 0.2)
    # A = 1: -min(r, clip(r)) -> -1.2, -0.5, -1.1, -1.2
    assert torch.allclose(loss, torch.tensor([[-1.2, -0.5, -1.1, -1.2]]))
    assert high.tolist() == [[True, False, False, True]] and not low.any()
    loss, low, high = clipped_surrogate(ratio, torch.tensor([-1.0]), 0.2, 0.2, dual_clip=3.0)
    # A = -1: -min(-r, -clip(r)) = max(r, clip(r)) -> 1.5, 0.8, 1.1, 5.0; dual clip caps at 3 -> 3.0
    assert torch.allclose(loss, torch.tensor([[1.5, 0.8, 1.1, 3.0]]))
    assert low.tolist() == [[False, True, False, False]] and not high.any()


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_four_micro_batches_equal_one_batch(loss_type):
    """Accumulating 4 micro-batches of 2 gives the gradient of one batch of 8 (token-level normaliser)."""
    torch.manual_seed(0)
    weights = torch.randn(8, 5, requires_grad=True)  # stands in for the policy: logp = weights (per row)
    old = torch.randn(8, 5)
    adv = torch.randn(8)
    mask = (torch.rand(8, 5) > 0.3).float()
    mask[:, 0] = 1
    cfg = AlgorithmConfig(loss_type=loss_type)
    tokens = mask.sum().item()

    full = policy_loss(weights, old, None, None, adv, mask, cfg, _norm(8, 1, tokens, 5)).loss
    (grad_full,) = torch.autograd.grad(full, weights)

    total = 0.0
    for start in range(0, 8, 2):
        rows = slice(start, start + 2)
        total = (
            total
            + policy_loss(weights[rows], old[rows], None, None, adv[rows], mask[rows], cfg, _norm(8, 4, tokens, 5)).loss
        )
    (grad_accum,) = torch.autograd.grad(total, weights)
    assert torch.allclose(full, total)
    assert torch.allclose(grad_full, grad_accum, atol=1e-7)


def test_bnpo_is_a_mean_of_micro_batch_token_means():
    per_token = torch.tensor([[1.0, 1.0], [4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # one micro-batch of the two rows: (1 + 1 + 4) / 3 = 2
    assert aggregate(per_token, mask, "bnpo", _norm(2, 1, 3, 2)).item() == pytest.approx(2.0)
    # two micro-batches: (1 + 1) / 2 / 2 + 4 / 1 / 2 = 0.5 + 2 = 2.5
    two = aggregate(per_token[:1], mask[:1], "bnpo", _norm(2, 2, 3, 2)) + aggregate(
        per_token[1:], mask[1:], "bnpo", _norm(2, 2, 3, 2)
    )
    assert two.item() == pytest.approx(2.5)
