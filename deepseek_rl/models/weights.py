"""Whole weights, one tensor at a time, however the trainer shards them: what a weight sync sends to a colocated vLLM
engine or to the rollout workers.

Choices:
- ZeRO-3 partitions every parameter over the ranks: it is gathered (DeepSpeed's `GatheredParameters`) only while
  the consumer holds it. FSDP2 (`fully_shard`) keeps each parameter as a DTensor shard: `full_tensor()` all-gathers
  it. Either way no rank holds a second copy of the model, only one whole tensor (or one LoRA layer) at a time.
- Both are collectives: every rank iterates the same names in the same order (name order), the ranks that send
  nothing included.
- A LoRA policy's Hugging Face weights (what an inference engine loads) are its base with the adapters merged,
  W + (alpha / r) B A in fp32, stored in W's dtype: the rule of the export (`models.lora.merged_state_dict`), computed
  here one layer at a time from the gathered W, A and B, never from a whole state dict.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from deepseek_rl.models.lora import ADAPTER, PEFT_PREFIX, is_lora, merged_weight


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor of an FSDP2 DTensor shard (a collective: every rank calls it); any other tensor as is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


@contextmanager
def whole(params: Sequence[nn.Parameter]) -> Iterator[list[Tensor]]:
    """The whole tensors of `params` while inside (a collective under ZeRO-3 and FSDP2: every rank enters)."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned):
            yield [full_tensor(p.detach()) for p in params]
    else:
        yield [full_tensor(p.detach()) for p in params]


def whole_parameters(model: nn.Module, trained_only: bool = False) -> Iterator[tuple[str, Tensor]]:
    """(name, whole tensor) of each parameter in name order, one at a time; with `trained_only`, those training
    changes (requires_grad: a LoRA policy's adapters)."""
    named = dict(model.named_parameters())
    for name in sorted(named):
        if trained_only and not named[name].requires_grad:
            continue
        with whole([named[name]]) as (tensor,):
            yield name, tensor


def hf_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(Hugging Face name, whole tensor) of the policy, one at a time in name order: a LoRA policy's adapted layers
    come merged, under the plain model's names."""
    if not is_lora(model):
        yield from whole_parameters(model)
        return
    settings = model.peft_config[ADAPTER]
    scaling = settings.lora_alpha / settings.r
    named = dict(model.named_parameters())
    for name in sorted(named):
        if ".lora_" in name:
            continue
        plain = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        layer = name.removesuffix(".base_layer.weight")
        if layer == name:  # not an adapted weight (a bias of an adapted layer included)
            with whole([named[name]]) as (tensor,):
                yield plain, tensor
            continue
        parts = [named[name], named[f"{layer}.lora_A.{ADAPTER}.weight"], named[f"{layer}.lora_B.{ADAPTER}.weight"]]
        with whole(parts) as (base, a, b):
            yield plain, merged_weight(base, a, b, scaling)
