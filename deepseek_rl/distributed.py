"""The distributed surface: building the Accelerator, and agreeing on things across ranks.

`accelerate launch` decides the backend (single process, DDP, DeepSpeed). On CPU, DeepSpeed needs a gloo
process group (see docs/distributed.md); DDP on CPU uses gloo already.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list


def launched_world_size() -> int:
    """The number of processes the launcher started (known before the Accelerator exists)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(gradient_accumulation_steps: int) -> Accelerator:
    distributed_cpu = launched_world_size() > 1 and not torch.cuda.is_available()
    handlers = [InitProcessGroupKwargs(backend="gloo")] if distributed_cpu else []
    return Accelerator(gradient_accumulation_steps=gradient_accumulation_steps, kwargs_handlers=handlers)


def broadcast_value(accelerator: Accelerator, value: Any) -> Any:
    """Rank 0's value on every rank (e.g. the run directory, which Hydra names by the clock on each rank)."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
