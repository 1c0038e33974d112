"""The 2026 loss family, checked against values computed by hand: CISPO, SAPO, the RLOO and REINFORCE++
advantages, and masked importance sampling against the rollout engine at token and sequence level."""

import math

import pytest
import torch

from deepseek_rl.algo.advantages import batch_normalised, group_advantages, group_centered
from deepseek_rl.algo.losses import StepNormaliser, engine_is_weight, policy_loss
from deepseek_rl.config import AlgorithmConfig

from .conftest import run_cli

NORM = StepNormaliser(sequences_rank=2, micro_batches=1, tokens_global=2.0, max_completion_length=2)


def grad_of_loss(cfg: AlgorithmConfig, logprobs, old, advantages, mask, sampling=None):
    logprobs = torch.tensor(logprobs, requires_grad=True)
    terms = policy_loss(
        logprobs, torch.tensor(old), None, None, torch.tensor(advantages), torch.tensor(mask), cfg, NORM,
        None if sampling is None else torch.tensor(sampling),
    )  # fmt: skip
    terms.loss.backward()
    return terms, logprobs.grad


def test_cispo_weights_every_token_by_its_capped_ratio():
    cfg = AlgorithmConfig(policy_loss="cispo", loss_type="dapo", clip_eps_high=1.0)  # cap 2.0
    # one sequence, two tokens: ratios e^0.2 = 1.2214 and e^1.0 = 2.7183 (capped at 2), A = 1.5, dapo / 2 tokens
    terms, grad = grad_of_loss(cfg, [[-1.0, -0.5]], [[-1.2, -1.5]], [1.5], [[1.0, 1.0]])
    w = [math.exp(0.2), 2.0]
    assert terms.loss.item() == pytest.approx((-w[0] * 1.5 * -1.0 - w[1] * 1.5 * -0.5) / 2, rel=1e-5)
    assert grad.tolist()[0] == pytest.approx([-w[0] * 1.5 / 2, -w[1] * 1.5 / 2], rel=1e-5)  # d/dlogp = -w A / 2
    assert terms.clipped_high.item() == 1 and terms.clipped_low.item() == 0
    # the clipped surrogate would give the capped token no gradient at all (ratio 2.72 > 1.2 with A > 0)
    _, clip_grad = grad_of_loss(AlgorithmConfig(loss_type="dapo"), [[-1.0, -0.5]], [[-1.2, -1.5]], [1.5], [[1, 1.0]])
    assert clip_grad.tolist()[0][1] == 0.0


def test_sapo_gates_the_ratio_softly_per_advantage_sign():
    cfg = AlgorithmConfig(policy_loss="sapo", loss_type="dapo", sapo_temperature_pos=1.0, sapo_temperature_neg=2.0)
    # row 0: A = +1 (tau 1), ratio e^0.5; row 1: A = -1 (tau 2), ratio e^-0.5; one token each, dapo / 2 tokens
    terms, grad = grad_of_loss(cfg, [[-1.0], [-2.0]], [[-1.5], [-1.5]], [1.0, -1.0], [[1.0], [1.0]])

    def sig(x):
        return 1 / (1 + math.exp(-x))

    r0, r1 = math.exp(0.5), math.exp(-0.5)
    loss = (-sig(1.0 * (r0 - 1)) * 4 / 1.0 * 1.0 - sig(2.0 * (r1 - 1)) * 4 / 2.0 * -1.0) / 2
    assert terms.loss.item() == pytest.approx(loss, rel=1e-5)
    # d/dlogp of -sig(tau (r - 1)) 4 / tau A = -4 sig (1 - sig) A r
    g0 = -4 * sig(r0 - 1) * (1 - sig(r0 - 1)) * 1.0 * r0 / 2
    g1 = -4 * sig(2 * (r1 - 1)) * (1 - sig(2 * (r1 - 1))) * -1.0 * r1 / 2
    assert grad.flatten().tolist() == pytest.approx([g0, g1], rel=1e-5)
    # on-policy (ratio 1) the gradient equals the plain policy gradient -A / tokens
    _, on_policy = grad_of_loss(cfg, [[-1.0], [-2.0]], [[-1.0], [-2.0]], [1.0, -1.0], [[1.0], [1.0]])
    assert on_policy.flatten().tolist() == pytest.approx([-0.5, 0.5], rel=1e-6)


def test_rloo_is_the_leave_one_out_baseline():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])  # G = 4
    advantages = group_advantages(rewards, 4, scale="none", baseline="rloo")
    # r_i minus the mean of the other three: 1 - 1/3, 0 - 2/3, ...; 2 - 3, 5 - 2
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, -1.0, -1.0, -1.0, 3.0]
    assert advantages.tolist() == pytest.approx(expected, rel=1e-6)


def test_reinforce_pp_normalises_group_centred_rewards_over_the_global_batch():
    rank0, rank1 = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 1.0])  # G = 2 on two ranks
    c0, c1 = group_centered(rank0, 2), group_centered(rank1, 2)
    assert c0.tolist() == [0.5, -0.5] and c1.tolist() == [1.0, -1.0]
    everything = torch.cat([c0, c1])
    std = math.sqrt((0.25 + 0.25 + 1 + 1) / 3)  # unbiased, mean 0
    assert batch_normalised(c1, everything, eps=0.0).tolist() == pytest.approx([1 / std, -1 / std], rel=1e-6)


def test_masked_importance_sampling_token_and_sequence_level():
    to_engine = torch.tensor([[0.5, 4.0, 1.0], [1.5, 1.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1's last token is padding
    weight, over = engine_is_weight(to_engine, mask, 3.0, "token_mask")
    torch.testing.assert_close(weight, torch.tensor([[0.5, 0.0, 1.0], [1.5, 1.2, 0.0]]))
    assert over.tolist()[0] == [False, True, False]
    weight, _ = engine_is_weight(to_engine, mask, 3.0, "token_truncate")
    torch.testing.assert_close(weight, torch.tensor([[0.5, 3.0, 1.0], [1.5, 1.2, 3.0]]))
    # sequence ratio = product over the sequence's tokens: row 0: 0.5 * 4 * 1 = 2 (kept); row 1: 1.5 * 1.2 = 1.8
    weight, _ = engine_is_weight(to_engine, mask, 1.9, "sequence_mask")
    assert weight[0].tolist() == pytest.approx([0.0] * 3) and weight[1].tolist() == pytest.approx([1.8] * 3)
    weight, _ = engine_is_weight(to_engine, mask, 1.9, "sequence_truncate")
    assert weight[0].tolist() == pytest.approx([1.9] * 3) and weight[1].tolist() == pytest.approx([1.8] * 3)
    # in the loss: a masked token keeps no policy-gradient term
    cfg = AlgorithmConfig(loss_type="dapo", tis_cap=3.0, engine_is_mode="token_mask")
    sampling = [[-1.0 - math.log(0.5), -1.0 - math.log(4.0)]]  # engine ratios 0.5 and 4.0 against old = -1
    _, grad = grad_of_loss(cfg, [[-1.0, -1.0]], [[-1.0, -1.0]], [1.0], [[1.0, 1.0]], sampling)
    assert grad.tolist()[0] == pytest.approx([-0.5 / 2, 0.0], rel=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [["algorithm=cispo"], ["algorithm=sapo"], ["algorithm.advantage=rloo", "algorithm.scale_rewards=none"],
     ["algorithm.advantage=reinforce_pp"]],
)  # fmt: skip
def test_presets_and_estimators_train_the_smoke_task(tmp_path, overrides):
    done = run_cli(
        "train", "--config-name", "smoke", *overrides, "algorithm.num_generations=4", "algorithm.lr=1e-3",
        "trainer.max_steps=2", "logger=none", f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(math.isfinite(float(__import__("json").loads(x)["loss"])) for x in lines)


def trl_loss(loss_type: str, logprobs: torch.Tensor, old, advantages, mask, cfg: AlgorithmConfig) -> torch.Tensor:
    """TRL 1.16's own GRPOTrainer._compute_loss on the same tensors: the method is called on a stand-in trainer that
    holds only the settings it reads, with the policy's log-probs given instead of a forward pass."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import GRPOTrainer

    def identity(x, **_):
        return x

    rows, tokens = mask.shape
    trainer = SimpleNamespace(
        loss_type=loss_type, beta=0.0, importance_sampling_level="token", top_entropy_quantile=1.0,
        aux_loss_enabled=False, off_policy_mask_threshold=None, use_vllm=False, _entropy_bonus_enabled=False,
        # TRL's cispo caps the ratio at epsilon_high itself; ours at 1 + clip_eps_high
        epsilon_low=cfg.clip_eps_low, epsilon_high=cfg.clip_eps_high + (loss_type == "cispo"),
        max_completion_length=tokens, current_gradient_accumulation_steps=1, model=SimpleNamespace(training=True),
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1,
                             sapo_temperature_pos=cfg.sapo_temperature_pos,
                             sapo_temperature_neg=cfg.sapo_temperature_neg),
        accelerator=SimpleNamespace(num_processes=1, sync_gradients=True, gather=identity, reduce=identity,
                                    gather_for_metrics=identity),
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logprobs, torch.zeros_like(logprobs), None),
    )  # fmt: skip
    inputs = {
        "prompt_ids": torch.zeros(rows, 1, dtype=torch.long), "prompt_mask": torch.ones(rows, 1, dtype=torch.long),
        "completion_ids": torch.zeros(rows, tokens, dtype=torch.long), "completion_mask": mask,
        "advantages": advantages, "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
    }  # fmt: skip
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize(
    ("trl_type", "ours"),
    [
        ("grpo", {"loss_type": "grpo"}),
        ("bnpo", {"loss_type": "bnpo"}),
        ("dr_grpo", {"loss_type": "dr_grpo"}),
        ("dapo", {"loss_type": "dapo", "clip_eps_high": 0.28}),
        ("cispo", {"loss_type": "dapo", "policy_loss": "cispo", "clip_eps_high": 0.5}),
        ("sapo", {"loss_type": "grpo", "policy_loss": "sapo", "sapo_temperature_neg": 1.05}),
    ],
)
def test_the_loss_and_its_gradient_match_trls_own_code(trl_type: str, ours: dict):
    """Off-policy ratios on both sides of every clip, ragged masks: our policy_loss and TRL 1.16's _compute_loss give
    the same loss and the same gradient with respect to the policy's log-probs (one micro-batch, one process)."""
    pytest.importorskip("trl", minversion="1.16")
    torch.manual_seed(0)
    rows, tokens = 4, 6
    old = -torch.rand(rows, tokens) * 3
    logprobs = old + torch.randn(rows, tokens) * 0.6  # ratios from ~0.2 to ~5: every clip and cap is active
    advantages = torch.tensor([1.5, -0.5, 0.7, -1.2])
    lengths = torch.tensor([6, 3, 1, 5])
    mask = (torch.arange(tokens) < lengths.unsqueeze(1)).float()
    cfg = AlgorithmConfig(**ours)
    norm = StepNormaliser(
        sequences_rank=rows, micro_batches=1, tokens_global=float(mask.sum()), max_completion_length=tokens
    )

    mine = logprobs.clone().requires_grad_(True)
    our_loss = policy_loss(mine, old, None, None, advantages, mask, cfg, norm, None).loss
    our_loss.backward()
    theirs = logprobs.clone().requires_grad_(True)
    trl = trl_loss(trl_type, theirs, old, advantages.unsqueeze(1), mask, cfg)
    trl.backward()
    assert our_loss.item() == pytest.approx(trl.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)
    assert theirs.grad.abs().sum() > 0
