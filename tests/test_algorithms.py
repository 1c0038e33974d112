"""The GRPO family: a loop-based reference against the vectorised loss for every variant, hand-computed GSPO and
clipping cases, invariances (ratio 1, advantage monotonicity, where clipping kills the gradient), and the
algorithm switches in the update path (no reference model at kl 0, no extra forward with one pass)."""

import itertools
import json
import math

import pytest
import torch

from deepseek_rl.algo.losses import StepNormaliser, policy_loss
from deepseek_rl.config import AlgorithmConfig

from .conftest import run_cli


def reference_loss(logp, old, ref, entropy, adv, mask, cfg: AlgorithmConfig, norm: StepNormaliser) -> float:
    """The objective written token by token with Python floats, straight from the papers' formulas."""
    m, c = len(logp), len(logp[0])
    per_token = [[0.0] * c for _ in range(m)]
    for i in range(m):
        n_i = sum(mask[i])
        seq_log_ratio = sum((logp[i][t] - old[i][t]) * mask[i][t] for t in range(c)) / max(n_i, 1)
        for t in range(c):
            if cfg.importance_sampling == "token":
                r = math.exp(logp[i][t] - old[i][t])
            else:  # sequence and sequence_token have the same value (they differ only in their gradient)
                r = math.exp(seq_log_ratio)
            clipped = min(max(r, 1 - cfg.clip_eps_low), 1 + cfg.clip_eps_high)
            loss = -min(r * adv[i], clipped * adv[i])
            if cfg.dual_clip is not None and adv[i] < 0:
                loss = min(loss, -cfg.dual_clip * adv[i])
            if ref is not None:
                x = ref[i][t] - logp[i][t]
                kl = {"k1": -x, "k2": 0.5 * x * x, "k3": math.exp(x) - x - 1}[cfg.kl_estimator]
                loss += cfg.kl_coef * kl
            loss -= cfg.entropy_coef * entropy[i][t]
            per_token[i][t] = loss
    if cfg.loss_type == "grpo":
        per_seq = [sum(per_token[i][t] * mask[i][t] for t in range(c)) / max(sum(mask[i]), 1) for i in range(m)]
        return sum(per_seq) / norm.sequences_rank
    total = sum(per_token[i][t] * mask[i][t] for i in range(m) for t in range(c))
    if cfg.loss_type == "bnpo":
        return total / max(sum(map(sum, mask)), 1) / norm.micro_batches
    if cfg.loss_type == "dr_grpo":
        return total / (norm.sequences_rank * norm.max_completion_length)
    return total / norm.tokens_global  # dapo


VARIANTS = list(
    itertools.product(
        ["grpo", "bnpo", "dr_grpo", "dapo"],
        ["token", "sequence", "sequence_token"],
        [None, 3.0],  # dual clip
        [None, "k1", "k2", "k3"],  # reference / KL estimator
    )
)


@pytest.mark.parametrize("loss_type,level,dual_clip,kl", VARIANTS)
def test_vectorised_loss_matches_loop_reference(loss_type, level, dual_clip, kl):
    g = torch.Generator().manual_seed(hash((loss_type, level, dual_clip, kl)) % 2**31)
    m, c = 5, 7
    logp = -torch.rand(m, c, generator=g, dtype=torch.float64) * 3
    old = logp + torch.randn(m, c, generator=g, dtype=torch.float64) * 0.3  # ratios on both sides of the clip
    ref = logp + torch.randn(m, c, generator=g, dtype=torch.float64) * 0.5 if kl else None
    entropy = torch.rand(m, c, generator=g, dtype=torch.float64)
    adv = torch.randn(m, generator=g, dtype=torch.float64)
    mask = (torch.rand(m, c, generator=g) > 0.3).double()
    mask[:, 0] = 1
    cfg = AlgorithmConfig(
        loss_type=loss_type,
        importance_sampling=level,
        dual_clip=dual_clip,
        kl_coef=0.1 if kl else 0.0,
        kl_estimator=kl or "k3",
        entropy_coef=0.01,
        clip_eps_low=0.2,
        clip_eps_high=0.28,
    )
    norm = StepNormaliser(
        sequences_rank=10, micro_batches=2, tokens_global=mask.sum().item() * 2, max_completion_length=9
    )
    got = policy_loss(logp, old, ref, entropy, adv, mask, cfg, norm).loss.item()
    want = reference_loss(
        logp.tolist(),
        old.tolist(),
        None if ref is None else ref.tolist(),
        entropy.tolist(),
        adv.tolist(),
        mask.tolist(),
        cfg,
        norm,
    )
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_gspo_sequence_ratio_hand_computed():
    # token log-ratios 0.1 and 0.3 -> sequence ratio exp(0.2) = 1.2214; with A = 1 it is clipped at 1 + 4e-4
    logp = torch.tensor([[0.1, 0.3]])
    old = torch.zeros(1, 2)
    cfg = AlgorithmConfig(importance_sampling="sequence", clip_eps_low=3e-4, clip_eps_high=4e-4, loss_type="grpo")
    norm = StepNormaliser(1, 1, 2.0, 2)
    terms = policy_loss(logp, old, None, None, torch.tensor([1.0]), torch.ones(1, 2), cfg, norm)
    assert terms.loss.item() == pytest.approx(-1.0004)
    assert terms.ratio_sum.item() == pytest.approx(2 * math.exp(0.2))
    assert terms.clipped_high.item() == 2 and terms.clipped_low.item() == 0


def test_ratio_is_exactly_one_with_a_single_pass():
    logp = torch.randn(3, 4, requires_grad=True)
    terms = policy_loss(
        logp, None, None, None, torch.randn(3), torch.ones(3, 4), AlgorithmConfig(), StepNormaliser(3, 1, 12.0, 4)
    )
    assert terms.ratio_sum.item() == 12.0 and terms.clipped_low.item() == 0 and terms.clipped_high.item() == 0


def test_higher_advantage_gives_lower_loss():
    logp, old, mask = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        cfg, norm = AlgorithmConfig(loss_type=loss_type), StepNormaliser(2, 1, 6.0, 3)
        low = policy_loss(logp, old, None, None, torch.tensor([0.5, -0.5]), mask, cfg, norm).loss
        high = policy_loss(logp, old, None, None, torch.tensor([1.5, -0.5]), mask, cfg, norm).loss
        assert high < low, loss_type


def test_clipping_zeroes_the_gradient_exactly_where_the_paper_says():
    # eps 0.2, dual clip 3. Token ratios: 1.5, 0.5, 1.1, 5.0 (old log-probs chosen to give them).
    ratios = torch.tensor([1.5, 0.5, 1.1, 5.0])
    old = torch.zeros(2, 4)
    logp = torch.log(ratios).repeat(2, 1).requires_grad_()
    adv = torch.tensor([1.0, -1.0])  # row 0: A > 0, row 1: A < 0
    cfg = AlgorithmConfig(loss_type="dapo", clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=3.0)
    policy_loss(logp, old, None, None, adv, torch.ones(2, 4), cfg, StepNormaliser(2, 1, 8.0, 4)).loss.backward()
    zero = logp.grad == 0
    # A > 0: clipped (no gradient) when the ratio is above 1 + eps: 1.5 and 5.0; 0.5 and 1.1 still push up
    assert zero[0].tolist() == [True, False, False, True]
    # A < 0: clipped when the ratio is below 1 - eps (0.5); the dual clip also stops 5.0 (> 3); 1.5 and 1.1 push down
    assert zero[1].tolist() == [False, True, False, True]


def test_no_reference_and_no_extra_forward_when_not_needed():
    from deepseek_rl.algo.update import UpdateSettings, add_old_and_ref_logprobs
    from deepseek_rl.batch import LossInputs
    from deepseek_rl.config import grpo_plan

    calls = []

    class Counting(torch.nn.Module):
        def forward(self, **kwargs):
            calls.append(1)
            raise AssertionError("no forward should run")

    inputs = LossInputs(
        torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5), torch.ones(2, 3), torch.zeros(2), None, None
    )
    alg = AlgorithmConfig(num_generations=2, num_iterations=1, kl_coef=0.0)
    settings = UpdateSettings(alg, grpo_plan(2, 2, 2, 1, 1, 1), 1.0, 3, 1.0)
    out = add_old_and_ref_logprobs(Counting(), None, inputs, settings)
    assert out.old_logprobs is None and out.ref_logprobs is None and not calls


def test_kl_zero_builds_no_reference_model(tmp_path, monkeypatch):
    """The trainer loads the model once when kl_coef = 0 and twice (policy + frozen reference) otherwise."""
    from accelerate.state import AcceleratorState, GradientState

    import deepseek_rl.stages.grpo as train_module
    import deepseek_rl.stages.run as scaffold
    from deepseek_rl.config import load_recipe

    loads = []
    real_load = train_module.load_model
    counted = lambda *a, **k: loads.append(1) or real_load(*a, **k)  # noqa: E731
    monkeypatch.setattr(train_module, "load_model", counted)  # the reference
    monkeypatch.setattr(scaffold, "load_model", counted)  # the policy
    for kl, expected in ((0.0, 1), (0.05, 2)):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        loads.clear()
        cfg = load_recipe(
            "smoke", ["logger=none", "trainer.max_steps=1", "trainer.save_final=false", f"algorithm.kl_coef={kl}"]
        )
        train_module.train(cfg, tmp_path / f"kl{kl}")
        assert len(loads) == expected
        (line,) = (tmp_path / f"kl{kl}" / "metrics.jsonl").read_text().splitlines()
        assert ("kl" in json.loads(line)) and (json.loads(line)["kl"] == 0.0)


def test_every_algorithm_switch_runs_from_the_cli(tmp_path):
    """DAPO preset + dynamic sampling, overlong filtering, two passes (old log-probs), k2 KL and an entropy bonus."""
    result = run_cli(
        "train", "--config-name", "smoke", "algorithm=dapo", "logger=none",
        "algorithm.num_generations=4", "algorithm.lr=1e-3", "algorithm.mask_truncated=true",
        "algorithm.num_iterations=2", "algorithm.kl_coef=0.05", "algorithm.kl_estimator=k2",
        "algorithm.entropy_coef=0.01", "algorithm.max_sampling_rounds=2",
        "trainer.max_steps=3", f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for m in lines:
        assert 1 <= m["dynamic_sampling/rounds"] <= 3
        assert m["dynamic_sampling/groups_dropped"] >= 0 and m["clip/low"] >= 0 and m["clip/high"] >= 0
    assert any(m["ratio"] != 1.0 for m in lines)  # the second pass is off-policy


def _fake_scored(rewards: list[float], tag: str, group_size: int):
    """A scored batch whose rows are identified by a `tag` column (round and group), with the given rewards."""
    from deepseek_rl.batch import RolloutBatch, ScoredBatch

    n = len(rewards)
    rollout = RolloutBatch(
        prompt_ids=torch.zeros(n, 2, dtype=torch.long),
        prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=torch.zeros(n, 3, dtype=torch.long),
        completion_mask=torch.ones(n, 3, dtype=torch.long),
        truncated=torch.zeros(n, dtype=torch.bool),
        completions=[""] * n,
        prompts=[""] * n,
        columns={"tag": [f"{tag}{i // group_size}" for i in range(n)]},
        group_size=group_size,
    )
    r = torch.tensor(rewards, dtype=torch.float32)
    return ScoredBatch(rollout, ["x"], r[:, None], r, torch.zeros(n), torch.ones(n))


@pytest.mark.parametrize("budget", [3, 1])
def test_dynamic_sampling_drops_exactly_the_zero_variance_groups(budget, monkeypatch):
    from deepseek_rl.config import RolloutConfig, grpo_plan
    from deepseek_rl.stages.collect import RolloutCollector

    g = 2
    rounds = {
        0: _fake_scored([1, 1, 0, 1, 0, 0, 1, 0], "a", g),  # groups a0 (flat), a1, a2 (flat), a3
        1: _fake_scored([0, 0, 1, 1, 1, 1, 1, 1], "b", g),  # all flat
        2: _fake_scored([1, 1, 0, 1, 1, 0, 0, 0], "c", g),  # c0, c3 flat; c1, c2 informative (both needed)
    }
    alg = AlgorithmConfig(num_generations=g, dynamic_sampling=True, max_sampling_rounds=budget)
    plan = grpo_plan(8, 4, g, 1, 1, 1)
    collector = RolloutCollector(plan, 0, 0, RolloutConfig(), alg, None, None, 0, lambda t: t)
    monkeypatch.setattr(collector, "sample_round", lambda engine, step, round_, times: rounds[round_])
    batch, stats = collector.collect(None, step=0)
    groups = batch.rollout.columns["tag"][::g]
    if budget == 3:
        assert groups == ["a1", "a3", "c1", "c2"]
        assert batch.loss_weight.tolist() == [1.0] * 8
        assert stats.rounds == 3 and stats.groups_dropped == 2 + 4 + 2
    else:  # budget spent after round 1: two informative groups, two dropped ones as filler with zero weight
        assert groups == ["a1", "a3", "a0", "a2"]
        assert batch.loss_weight.tolist() == [1.0] * 4 + [0.0] * 4
        assert stats.unfilled_groups == 2
    assert stats.first_round_zero_std.float().mean().item() == 0.5  # measured on the step's own prompts


def test_dapo_gradient_is_the_same_for_1x8_8x1_and_2_ranks_x_4(tmp_path):
    """Micro-batches of 1 accumulated 8 times, one micro-batch of 8, and 2 DDP ranks of 4: one SGD step each."""
    import subprocess
    import sys

    from .conftest import REPO
    from .test_distributed import free_port

    probe = REPO / "tests" / "probe_dapo_step.py"
    outputs = {}
    for name, micro in (("1x8", 1), ("8x1", 8)):
        out = tmp_path / f"{name}.pt"
        result = subprocess.run(
            [sys.executable, str(probe), str(micro), str(out)], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = torch.load(out)
    out = tmp_path / "2x4.pt"
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch" / "cpu_ddp.yaml"),
         "--num_processes", "2", "--main_process_port", str(free_port()), str(probe), "4", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    outputs["2x4"] = torch.load(out)
    assert outputs["2x4"]["world_size"] == 2 and outputs["1x8"]["world_size"] == 1
    base = outputs["8x1"]["delta"]
    assert base.abs().max() > 0
    for name in ("1x8", "2x4"):
        # the deltas are differences of float32 parameters of size ~1: rounding is ~1e-7
        assert torch.allclose(outputs[name]["delta"], base, rtol=1e-5, atol=5e-7), name
