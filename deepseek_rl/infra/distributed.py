"""The distributed surface: building the Accelerator, the reference model, generation under ZeRO-3, agreement.

`accelerate launch` picks the backend (one process, DDP, DeepSpeed ZeRO-2/3, FSDP2) from its config file; the
training code is the same for all. Two CPU traps are handled here (see docs/distributed.md): DDP on CPU needs
ACCELERATE_USE_CPU, or accelerate silently runs unsynchronised copies; DeepSpeed on CPU needs a gloo process group.
Gradient accumulation is owned by deepseek-rl (micro-batches per step follow from trainer.batch_size and
trainer.micro_batch_size), and DeepSpeed's micro-batch size and gradient clipping are set from the same config.
The process group can start before the first Accelerator (`start_process_group`, the same settings; the Accelerator
then joins it), so that the ranks agree on something before any model loads (`on_rank_zero`: the run folder's lock).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, broadcast_object_list, parse_flag_from_env
from torch import nn

from deepseek_rl.config.plan import BatchPlan
from deepseek_rl.errors import LaunchError, UserError
from deepseek_rl.models.loading import gathered
from deepseek_rl.models.weights import full_tensor

__all__ = ["LaunchError", "free_stage_memory", "make_accelerator", "on_rank_zero", "release_accelerator"]

T = TypeVar("T")


def launched_world_size() -> int:
    """The number of processes the launcher started (known before the Accelerator exists)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(plan: BatchPlan, max_grad_norm: float | None) -> Accelerator:
    """The Accelerator of one stage: gradient accumulation over the plan's micro-batches, DeepSpeed's batch sizes
    and clipping set to match (a stage after another in the same process gets a fresh accelerate state)."""
    world = launched_world_size()
    gradient_accumulation_steps = plan.micro_batches
    release_accelerator(keep_process_group=True)
    handlers = process_group_handlers()
    os.environ.pop("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", None)  # ours follows from the batch sizes
    accelerator = Accelerator(gradient_accumulation_steps=gradient_accumulation_steps, kwargs_handlers=handlers)
    if accelerator.num_processes != world or (world > 1 and accelerator.distributed_type == DistributedType.NO):
        raise LaunchError(
            f"the launcher started {world} processes but accelerate runs them as {accelerator.distributed_type} with "
            f"world size {accelerator.num_processes}: they would train unsynchronised. Use a config from launch/."
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = plan.micro_batch_size
        ds["gradient_accumulation_steps"] = gradient_accumulation_steps
        ds["train_batch_size"] = plan.micro_batch_size * gradient_accumulation_steps * world
        ds["gradient_clipping"] = max_grad_norm if max_grad_norm is not None else 0.0
    return accelerator


def process_group_handlers() -> list[InitProcessGroupKwargs]:
    """The process-group settings of the launched processes: on CPU, DDP or DeepSpeed over gloo."""
    distributed_cpu = launched_world_size() > 1 and not torch.cuda.is_available()
    if distributed_cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true":
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # DDP over gloo
    return [InitProcessGroupKwargs(backend="gloo")] if distributed_cpu else []


def start_process_group() -> None:
    """Join the launched processes' group now, as the Accelerator would (which then reuses it); nothing when the
    launcher started one process or the group exists."""
    if launched_world_size() > 1 and not PartialState._shared_state:
        handlers = process_group_handlers()
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU")  # as AcceleratorState reads it
        PartialState(cpu, **(handlers[0].to_kwargs() if handlers else {}))
        if PartialState().num_processes != launched_world_size():
            raise LaunchError(
                f"the launcher started {launched_world_size()} processes but they did not join one process group "
                f"(world size {PartialState().num_processes}): they would train unsynchronised. Use a config from "
                "launch/."
            )


def on_rank_zero(action: Callable[[], T]) -> T:
    """Run `action` on rank 0 only, before any Accelerator exists, and give every rank its outcome: the value it
    returned, or the UserError it raised, raised on every rank (so that all ranks stop alike, none waits)."""
    if launched_world_size() == 1:
        return action()
    start_process_group()
    outcome: tuple[bool, Any] = (True, None)
    failure: Exception | None = None
    if PartialState().is_main_process:
        try:
            outcome = (True, action())
        except UserError as err:
            outcome = (False, err)
        except Exception as err:  # a bug: rank 0 raises it; the others stop instead of waiting for rank 0
            failure, outcome = err, (False, LaunchError(f"rank 0 failed ({type(err).__name__}: {err})"))
    box = [outcome]
    broadcast_object_list(box, from_process=0)
    if failure is not None:
        raise failure
    done, value = box[0]
    if not done:
        raise value
    return value


def is_zero3(accelerator: Accelerator) -> bool:
    return (
        accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    )


def prepare_reference(accelerator: Accelerator, reference: nn.Module) -> nn.Module:
    """The frozen reference model on the training backend, without optimizer state.

    Under DeepSpeed it becomes an inference engine: partitioned like the policy under ZeRO-3, replicated otherwise.
    """
    reference.eval().requires_grad_(False)
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return reference.to(accelerator.device)
    import deepspeed

    ds = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        ds.pop(key, None)
    if ds["zero_optimization"]["stage"] != 3:
        ds["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=reference, config=ds)
    engine.eval()
    return engine


def autocast_precision(accelerator: Accelerator) -> str:
    """The precision accelerate autocasts the training forward to: "bf16" or "fp16" under its native mixed precision
    (DDP, FSDP, one process), else "no" (full precision, or DeepSpeed, which casts the model's weights instead).
    Rollouts compute as the training forward does: the built-in sampler under the same autocast, vLLM in that dtype."""
    half = accelerator.native_amp and accelerator.mixed_precision in ("bf16", "fp16")
    return accelerator.mixed_precision if half else "no"


@contextmanager
def generation_model(accelerator: Accelerator, model: nn.Module) -> Iterator[nn.Module]:
    """The bare policy for sampling. Under ZeRO-3 its parameters are gathered once for the whole rollout phase,
    and ZeRO-3's per-module forward hooks are lifted meanwhile (with the parameters already whole they only add
    Python overhead to every decoded token), then put back for training. Under FSDP2 every sharded module is
    unsharded for the phase (the decoder reads the parameters directly) and resharded after it."""
    unwrapped = accelerator.unwrap_model(model)
    sharded = fsdp2_modules(unwrapped)
    if sharded:
        # the outermost module becomes FSDP's root before any inner one is touched (as its first forward would make
        # it); else the first sharded module used claims to be the root and FSDP refuses
        root_state = sharded[0]._get_fsdp_state()
        root_state._lazy_init()
        for module in sharded:
            module.unshard()
        try:
            yield unwrapped
        finally:
            for module in sharded:
                module.reshard()
        return
    if not is_zero3(accelerator):
        yield unwrapped
        return
    import deepspeed

    offload = getattr(getattr(model, "optimizer", None), "parameter_offload", None)
    can_lift = hasattr(offload, "_remove_module_hooks") and hasattr(offload, "setup_zero_stage3_hooks")
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        if can_lift:
            offload._remove_module_hooks()
        try:
            yield unwrapped
        finally:
            if can_lift:
                offload.setup_zero_stage3_hooks()


def fsdp2_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that FSDP2 (`fully_shard`) sharded, outermost first (none without FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def parameter_digest(model: nn.Module) -> tuple[str, int]:
    """sha256 of the full parameters in name order (gathered one at a time under ZeRO-3), and this rank's share
    of the elements (smaller than the model under ZeRO-3: evidence that it is really partitioned)."""
    digest, local = hashlib.sha256(), 0
    for _, param in sorted(model.named_parameters()):
        if hasattr(param, "ds_tensor"):  # ZeRO-3
            local += param.ds_tensor.numel()
        else:  # an FSDP2 DTensor's own shard, or the whole tensor
            local += param.to_local().numel() if hasattr(param, "to_local") else param.numel()
        with gathered(param):
            digest.update(full_tensor(param.detach()).float().cpu().numpy().tobytes())
    return digest.hexdigest(), local


def write_rank_report(accelerator: Accelerator, model: nn.Module, directory: Path) -> None:
    """`<directory>/rank-<r>.json` per rank: what each rank saw, so a run can be checked for agreement."""
    digest, local = parameter_digest(accelerator.unwrap_model(model))
    report = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "parameter_sha256": digest,
        "local_parameter_elements": local,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank-{accelerator.process_index}.json").write_text(json.dumps(report))


def release_accelerator(keep_process_group: bool = False) -> None:
    """Forget the finished run's accelerate state, so that the next run in this process builds its own: clear
    accelerate's singletons (AcceleratorState, GradientState), which a new Accelerator would otherwise inherit,
    and the finished stage's model (`forget_finished_models`). Between the stages of one pipeline the process group
    stays (`keep_process_group`); after the last stage (or between the jobs of a Hydra multirun) it is destroyed
    with the PartialState, through DeepSpeed when DeepSpeed ran (it drops its own handles on the groups too)."""
    forget_finished_models()
    if not keep_process_group and torch.distributed.is_available() and torch.distributed.is_initialized():
        deepspeed_comm = running_deepspeed_comm()
        (deepspeed_comm or torch.distributed).destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=not keep_process_group)
    GradientState._reset_state()


def free_stage_memory(accelerator: Accelerator) -> None:
    """After a stage's last step (or its failure): accelerate lets go of the stage's model and optimizer, and under
    DeepSpeed the engine is destroyed (ZeRO-3's hooks removed, DeepSpeed's cyclic-GC switch given back) while
    DeepSpeed's communication is up (its destroy logs through it; else the references are only dropped). The model
    itself is collected by the next `release_accelerator` (the next stage's, or the run's end), once the stage is
    out of scope."""
    if getattr(accelerator, "deepspeed_engine_wrapped", None) is not None and running_deepspeed_comm() is None:
        accelerator.deepspeed_engine_wrapped = None
    accelerator.free_memory()


def running_deepspeed_comm() -> Any:
    """DeepSpeed's comm module where DeepSpeed runs this process's communication, else None."""
    comm = sys.modules.get("deepspeed.comm")
    return comm if comm is not None and comm.is_initialized() else None


def forget_finished_models() -> None:
    """Collect a finished ZeRO-3 model now. DeepSpeed 0.19 keeps one reachable from two module-level places after
    its engine is destroyed: the forward's module stack (parameter_offload.FWD_MODULE_STACK) and a class-wide
    lru_cache keyed by the modules (PartitionedParameterCoordinator.__params_to_release). Left there, the next stage
    of a pipeline trained beside the last one's model and optimizer, and the process groups its parameters hold
    outlived `destroy_process_group` into the interpreter's shutdown, where a gloo thread can abort the process
    (pytorch/pytorch#190489). Does nothing where ZeRO-3 never ran."""
    offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    coordinator = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    if offload is None or coordinator is None:  # ZeRO-3 never ran here: nothing is held
        return
    offload.FWD_MODULE_STACK.clear()
    cls = coordinator.PartitionedParameterCoordinator
    wrapped = vars(cls).get("_PartitionedParameterCoordinator__params_to_release")
    for cell in getattr(wrapped, "__closure__", None) or ():  # the lru_cache under DeepSpeed's nvtx wrapper
        if hasattr(cell.cell_contents, "cache_clear"):
            cell.cell_contents.cache_clear()
    gc.collect()


def broadcast_value(accelerator: Accelerator, value: Any) -> Any:
    """Rank 0's value on every rank (e.g. the run directory, which Hydra names by the clock on each rank)."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank if it is true on any (e.g. a preemption signal that reached one rank first)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum").item() > 0)
