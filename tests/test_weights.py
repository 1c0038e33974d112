"""What a weight sync sends (`deepseek_rl.models.weights`): the whole weights under the plain model's names, one at a
time, from a plain, a LoRA and an FSDP2-sharded policy. A colocated vLLM engine loads `hf_weights`; the rollout
workers receive `whole_parameters(trained_only=True)`. Before this module both read `param.data`, which under FSDP2
is this rank's DTensor shard, not the weight."""

import os
import subprocess
import sys
from subprocess import PIPE

import torch

from deepseek_rl.models.weights import hf_weights, whole_parameters
from deepseek_rl.stages.async_rollouts import free_port

from .test_lora import tiny_policy


def randomize_adapters(policy: torch.nn.Module, seed: int = 3) -> None:
    """B = 0 at init makes a merge invisible: give every adapter seeded values, in name order."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(policy.named_parameters()):
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def test_a_lora_policy_streams_its_adapters_merged_under_the_plain_names():
    _, _, policy = tiny_policy()  # qwen2 (biases on q, k, v), r=4, alpha=8: scaling 2
    randomize_adapters(policy)
    streamed = list(hf_weights(policy))
    names = [name for name, _ in streamed]
    assert names == sorted(names)
    weights = dict(streamed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    params = dict(policy.named_parameters())
    parts = ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight")
    w, a, b = (params[f"{prefix}.{part}"] for part in parts)
    by_hand = w + 2.0 * torch.einsum("or,ri->oi", b, a)  # W [o, i] + (alpha / r) B [o, r] A [r, i]
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"], by_hand)
    assert torch.equal(weights["model.layers.0.self_attn.q_proj.bias"], params[f"{prefix}.base_layer.bias"])
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], w)
    plain = dict(policy.merge_and_unload().named_parameters())  # PEFT's own merge
    assert weights.keys() == plain.keys()
    for name, value in plain.items():
        torch.testing.assert_close(weights[name], value, msg=name)


def test_a_plain_policy_streams_its_parameters_and_the_trained_ones():
    cfg, tokenizer, policy = tiny_policy(["model.lora.r=0"])
    params = dict(policy.named_parameters())
    streamed = dict(hf_weights(policy))
    assert streamed.keys() == params.keys() and all(torch.equal(streamed[n], p) for n, p in params.items())
    policy.model.norm.weight.requires_grad_(False)
    trained = [name for name, _ in whole_parameters(policy, trained_only=True)]
    assert trained == sorted(set(params) - {"model.norm.weight"})


SCRIPT = r"""
import os, sys, torch
rank = int(sys.argv[1])
os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE="2")
torch.distributed.init_process_group("gloo")
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from deepseek_rl.models.weights import hf_weights, whole_parameters
from tests.test_lora import tiny_policy
from tests.test_weights import randomize_adapters


def sharded(policy):
    layers = policy.base_model.model.model.layers if hasattr(policy, "peft_config") else policy.model.layers
    for layer in layers:
        fully_shard(layer)
    fully_shard(policy)
    return policy


for lora in ("model.lora.r=0", "model.lora.r=4"):
    (_, _, plain), (_, _, shard) = tiny_policy([lora]), tiny_policy([lora])
    randomize_adapters(plain), randomize_adapters(shard)
    shard = sharded(shard)
    up = dict(shard.named_parameters())[[n for n, _ in plain.named_parameters() if "layers.1.mlp.up_proj" in n][0]]
    assert isinstance(up, DTensor) and up.to_local().numel() * 2 == up.numel()  # this rank holds half of it
    for trained_only in (False, True):
        ours = dict(whole_parameters(shard, trained_only))
        theirs = {n: p for n, p in plain.named_parameters() if p.requires_grad or not trained_only}
        assert ours.keys() == theirs.keys() and ours, (lora, trained_only)
        for name, value in theirs.items():
            assert not isinstance(ours[name], DTensor) and torch.equal(ours[name], value.detach()), name
    ours, theirs = dict(hf_weights(shard)), dict(hf_weights(plain))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    print("OK", lora, len(ours), flush=True)
print("world", torch.distributed.get_world_size(), flush=True)
"""


def test_an_fsdp2_policy_streams_whole_weights_not_its_shards(tmp_path):
    """Two gloo ranks, each layer and the root sharded with `fully_shard` as accelerate's FSDP2 does (accelerate's
    plugin does not run on CPU): every rank gets every whole weight, equal to the unsharded model's, full and LoRA."""
    env = {**os.environ, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, str(rank)], stdout=PIPE, stderr=PIPE, text=True, env=env)
        for rank in (0, 1)
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        lines = out.splitlines()
        assert lines[0].startswith("OK model.lora.r=0") and lines[1].startswith("OK model.lora.r=4"), out
        assert lines[-1] == "world 2"
    assert outs[0][0] == outs[1][0]  # the ranks agree
