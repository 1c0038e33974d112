"""The channel between the trainer and a rollout worker (asynchronous GRPO), on torch.distributed's own parts: a
TCPStore for small messages and the scored batches, a two-process gloo group for the weights.

    worker (rank 0, `deepseek-rl serve`)  hosts the store at host:port
    trainer (rank 1; every trainer rank reads batches, rank 0 alone sends weights)  connects to it

Keys of the store: `hello` (the trainer's start: step, steps, staleness, config hash), `ready` (the worker's
answer: its config hash), `batch/<step>` (a scored batch and the policy version that sampled it, torch-serialised),
`stop`, `error` (the worker's last words). The weights go by `broadcast` from the trainer, one tensor at a time in
parameter-name order, after the version number, so that nothing the size of the model is ever copied twice; only
the parameters training changes travel (a LoRA policy's adapters). Every wait is bounded by
`rollout.server.timeout`; a worker that is gone or silent is a RolloutServerError naming it.
"""

from __future__ import annotations

import datetime
import io
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass, replace

import torch
from torch import Tensor
from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

from deepseek_rl.batch import ScoredBatch
from deepseek_rl.errors import UserError

WORKER, TRAINER = 0, 1  # ranks in the channel's two-process group


class RolloutServerError(UserError, RuntimeError):
    """The rollout worker is unreachable, gone, silent past the timeout, or runs another config."""

    kind = "rollout server error"


@dataclass
class Sampled:
    """One step's rollouts as the worker sampled them."""

    step: int
    version: int  # optimizer steps of the policy that sampled them
    scored: ScoredBatch  # the global batch (every trainer rank's rows), with advantages
    generation_seconds: float
    reward_seconds: float
    first_round_zero_std: Tensor  # [B_global] bool
    reward_failures: Tensor  # [3, F]
    waited_seconds: float = 0.0  # the worker's wait for the weights it sampled this step with


def on_cpu(obj: object) -> object:
    """A dataclass of tensors (nested) with every tensor moved to the CPU (what travels between processes)."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: on_cpu(getattr(obj, f.name)) for f in fields(obj)})
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    return obj


def trained_parameters(model: torch.nn.Module) -> dict[str, Tensor]:
    """The parameters training changes (requires_grad), by name: all of them in full fine-tuning, the adapters of a
    LoRA policy. The rest (a LoRA policy's frozen base) is loaded alike by the trainer and the worker and never
    changes, so a weight sync sends these only."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def pack(sampled: Sampled) -> bytes:
    buffer = io.BytesIO()
    torch.save(on_cpu(sampled), buffer)
    return buffer.getvalue()


def unpack(data: bytes) -> Sampled:
    return torch.load(io.BytesIO(data), weights_only=False)


class Channel:
    """One end of the trainer <-> worker channel."""

    def __init__(self, host: str, port: int, rank: int, timeout: float, describe: str, weights: bool = True):
        self.describe, self.timeout = describe, datetime.timedelta(seconds=timeout)
        try:
            self.store = TCPStore(host, port, None, rank == WORKER, timeout=self.timeout, wait_for_workers=False)
        except (RuntimeError, OSError) as err:
            raise RolloutServerError(f"cannot reach the rollout worker at {describe} ({err}); start it with "
                                     "`deepseek-rl serve --config-name RECIPE --port PORT`, or check rollout.server.url"
                                     ) from err  # fmt: skip
        self.group = ProcessGroupGloo(PrefixStore("weights", self.store), rank, 2, self.timeout) if weights else None

    def put(self, key: str, value: bytes) -> None:
        self.store.set(key, value)

    def get(
        self, key: str, alive: Callable[[], str | None] | None = None, delete: bool = False, wait: bool = True
    ) -> bytes:
        """The value of `key` once it is there; `alive` says why the worker is gone (or None while it runs);
        `wait=False` waits without a deadline (a worker waiting for its trainer)."""
        deadline = time.monotonic() + self.timeout.total_seconds() if wait else float("inf")
        next_look = time.monotonic() + 2.0
        while not self.present(key, alive):  # polled: a timed-out store.wait logs a c10d error on every try
            time.sleep(0.01)
            if time.monotonic() < next_look:
                continue
            next_look = time.monotonic() + 2.0
            if "error" in self.keys_present():
                raise RolloutServerError(f"the rollout worker at {self.describe} failed: "
                                         f"{self.store.get('error').decode()}")  # fmt: skip
            gone = alive() if alive is not None else None
            if gone is not None:
                raise RolloutServerError(f"the rollout worker at {self.describe} is gone ({gone})")
            if time.monotonic() > deadline:
                raise RolloutServerError(
                    f"the rollout worker at {self.describe} sent nothing for {self.timeout.total_seconds():.0f} s "
                    f"(waiting for {key}); raise rollout.server.timeout if it is just slow"
                )
        try:
            value = self.store.get(key)
            if delete:
                self.store.delete_key(key)
        except RuntimeError as err:
            raise self.gone(err, f"reading {key}") from None
        return value

    def delete(self, key: str) -> None:
        """Drop a key the trainer no longer needs (a trained step's batch), so the store does not grow with the run."""
        try:
            self.store.delete_key(key)
        except RuntimeError as err:
            raise self.gone(err, f"deleting {key}") from None

    def present(self, key: str, alive: Callable[[], str | None] | None) -> bool:
        try:
            return self.store.check([key])
        except RuntimeError as err:  # the store's host (the worker) is gone
            gone = alive() if alive is not None else None
            if gone is not None:
                raise RolloutServerError(f"the rollout worker at {self.describe} is gone ({gone})") from None
            raise self.gone(err, f"waiting for {key}") from None

    def keys_present(self) -> set[str]:
        try:
            return {k for k in ("error", "stop") if self.store.check([k])}
        except RuntimeError:
            return set()

    def gone(self, err: Exception, doing: str) -> RolloutServerError:
        reason = str(err).splitlines()[0][:200]
        if "error" in self.keys_present():
            last_words = self.store.get("error").decode()
            return RolloutServerError(f"the rollout worker at {self.describe} failed: {last_words}")
        return RolloutServerError(f"the rollout worker at {self.describe} is gone ({doing}: {reason})")

    def receive_weights(self, params: dict[str, Tensor], dtypes: dict[str, torch.dtype]) -> int:
        """The worker's side: the version, then each parameter in name order, received in the dtype the trainer sends
        it in (`dtypes`) and copied into `params` in place (cast to the copy's dtype)."""
        assert self.group is not None
        version = torch.zeros(1, dtype=torch.long)
        try:
            self.group.broadcast(version, TRAINER).wait()
            for name in sorted(params):
                buffer = torch.empty(params[name].shape, dtype=dtypes[name])
                self.group.broadcast(buffer, TRAINER).wait()
                with torch.no_grad():
                    params[name].copy_(buffer)
        except RuntimeError as err:
            raise RolloutServerError(f"the trainer of this worker is gone ({str(err).splitlines()[0][:200]})") from None
        return int(version.item())


def send_weights(
    channels: list[Channel],
    version: int,
    named: Iterator[tuple[str, Tensor]],
    dtypes: dict[str, torch.dtype] | None = None,
) -> tuple[int, float]:
    """The trainer's side of a weight sync to every worker: the version, then each tensor (on the CPU, in the dtype
    `dtypes` names, which the workers receive in; else its own) to each worker in turn; `named` comes in name order
    (the order the workers receive in), one tensor at a time, so nothing the size of the model is held twice. Returns
    the bytes sent to one worker, and the seconds spent waiting for the workers to take the version (a worker still
    sampling takes it when its batch is done: the trainer idles)."""
    sent, channel, start = 0, channels[0], time.perf_counter()
    try:
        for channel in channels:
            assert channel.group is not None
            channel.group.broadcast(torch.tensor([version], dtype=torch.long), TRAINER).wait()
        waited = time.perf_counter() - start
        for name, tensor in named:
            tensor = tensor.detach().to("cpu", dtype=(dtypes or {}).get(name, tensor.dtype)).contiguous()
            for channel in channels:
                channel.group.broadcast(tensor, TRAINER).wait()
            sent += tensor.numel() * tensor.element_size()
    except RuntimeError as err:  # gloo: the peer closed the connection, or the wait timed out
        raise channel.gone(err, f"sending weight version {version}") from None
    return sent, waited


def encode(obj: object) -> bytes:
    return pickle.dumps(obj)


def decode(data: bytes) -> object:
    return pickle.loads(data)
