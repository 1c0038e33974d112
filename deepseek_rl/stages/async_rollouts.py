"""The trainer's side of asynchronous GRPO (rollout.max_staleness = k >= 1): rollouts sampled ahead by a worker.

    take(step)           the step's scored batch, as the worker sampled it with the policy of step max(0, step - k)
                         (never older: a batch staler than k is an error), this rank's rows of it
    published(step)      after the step's optimizer step: the weights go to the worker, when a later step needs them
    state_dict()         for checkpoints (registered with accelerate): the batches of the next k steps, already
                         sampled with older policies that a resumed run could not reproduce, so a run killed at any
                         point and resumed trains on exactly the samples of the uninterrupted run
Off-policy correction (decoupled PPO, as AReaL): the ratio's denominator is the policy before this update (the
proximal policy: with one pass, the policy's own detached log-probs of the same forward, so it costs nothing; with
num_iterations > 1, recomputed once before the first pass), and the engine's log-probs of the sampled tokens (the
behaviour policy, which sampled them k steps ago) weigh each token through `algorithm.tis_cap` and
`algorithm.engine_is_mode` (truncated or masked importance sampling, per token or sequence).

Without rollout.server.url a worker starts beside the trainer (`deepseek-rl serve` in a child process that dies
with it) and stops at the end, on success, failure, SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepseek_rl.batch import ScoredBatch
from deepseek_rl.config.schema import Config
from deepseek_rl.infra.checkpoint import TrainerState
from deepseek_rl.models.loading import gathered
from deepseek_rl.rollout.remote import (
    TRAINER,
    Channel,
    RolloutServerError,
    Sampled,
    decode,
    encode,
    pack,
    trained_parameters,
    unpack,
)
from deepseek_rl.stages.collect import RolloutStats
from deepseek_rl.stages.rollout_worker import config_snapshot


class PendingRollouts:
    """The batches sampled ahead, in a checkpoint (accelerate's `register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.source: AsyncRollouts | None = None
        self.resumed: list[Sampled] = []

    def state_dict(self) -> dict:
        return {"pending": [pack(s) for s in self.source.ahead()] if self.source is not None else []}

    def load_state_dict(self, state: dict) -> None:
        self.resumed = [unpack(b) for b in state.get("pending", [])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def whole_parameters(policy: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, whole tensor) of each trained parameter in name order, one at a time: a ZeRO-3 partition is gathered
    only while the consumer sends it (so the trainer never holds a second full copy of the model)."""
    params = trained_parameters(policy)
    for name in sorted(params):
        with gathered(params[name]):
            yield name, params[name].data


class AsyncRollouts:
    """The connection to the rollout worker of one GRPO stage (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        output_dir: Path,
        state: TrainerState,
        pending: list[Sampled],
        rank: int,
        world: int,
        rank_zero_value: Callable[[Any], Any] = lambda value: value,
    ):
        self.cfg, self.k, self.steps = cfg, cfg.rollout.max_staleness, cfg.trainer.max_steps
        self.rank, self.world, self.state = rank, world, state
        start = state.step
        self.proc: subprocess.Popen | None = None
        self.taken: dict[int, Sampled] = {s.step: s for s in pending}
        self.sync_seconds, self.sync_bytes = 0.0, 0
        server = cfg.rollout.server
        if server.url is None:  # rank 0 starts it; every rank connects to rank 0's port
            host, port = "127.0.0.1", int(rank_zero_value(self.start_local_worker(output_dir)))
        else:
            host, _, port_text = server.url.rpartition(":")
            port = int(port_text)
        self.describe = f"{host}:{port}" + (" (started beside the trainer)" if self.proc else "")
        self.channel = self.connect(host, port, server.timeout)
        if rank == 0:
            first = start + len(pending)  # the worker samples from the first step not in the checkpoint
            self.channel.put("hello", encode({"start": first, "steps": self.steps, "config": asdict(cfg)}))
        self.start = start

    def start_local_worker(self, output_dir: Path) -> int:
        """`deepseek-rl serve` in a child process on a free port (only rank 0 of the trainers starts one)."""
        port = int(os.environ.get("DEEPSEEK_RL_WORKER_PORT", "0")) or free_port()
        if self.rank != 0:
            return port
        output_dir.mkdir(parents=True, exist_ok=True)
        config = output_dir / ".rollout_worker.json"
        config.write_text(config_snapshot(self.cfg))
        env = {**os.environ, "DEEPSEEK_RL_PARENT_PID": str(os.getpid())}
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # the worker is no rank of the trainers' process group
        if "DEEPSEEK_RL_WORKER_THREADS" in os.environ:  # the benchmark's split of the cores
            env["OMP_NUM_THREADS"] = os.environ["DEEPSEEK_RL_WORKER_THREADS"]
        if self.cfg.rollout.server.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.cfg.rollout.server.devices
        log = (output_dir / "rollout_worker.log").open("ab")
        cmd = [sys.executable, "-m", "deepseek_rl.cli", "serve", "--config-json", str(config), "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        return port

    def connect(self, host: str, port: int, timeout: float) -> Channel:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return Channel(host, port, TRAINER, timeout, f"{host}:{port}", weights=self.rank == 0)
            except RolloutServerError:
                gone = self.gone()
                if gone is not None or time.monotonic() > deadline:
                    raise RolloutServerError(
                        f"cannot reach the rollout worker at {host}:{port}"
                        + (f" ({gone})" if gone else "")
                        + "; see <output_dir>/rollout_worker.log" * bool(self.proc)
                    ) from None
                time.sleep(0.5)

    def gone(self) -> str | None:
        """Why the local worker is gone (its exit status), or None while it runs (or for a remote one)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"it exited with status {self.proc.returncode}; its log: <output_dir>/rollout_worker.log"

    def send_weights(self, policy: torch.nn.Module, version: int) -> None:
        """Every trainer rank calls this: under ZeRO-3 each parameter is gathered (a collective) while rank 0 sends
        it; elsewhere the other ranks' pass over the names costs nothing."""
        start = time.perf_counter()
        named = whole_parameters(policy)
        if self.rank == 0:
            self.sync_bytes += self.channel.send_weights(version, named)
        else:
            for _ in named:
                pass
        self.sync_seconds += time.perf_counter() - start

    def begin(self, policy: torch.nn.Module) -> None:
        """After the trainer's weights are final for its first step: the worker's first weights (the version of the
        resumed step), then its answer."""
        if self.rank == 0:
            self.channel.get("accepted", alive=self.gone)  # the worker checked the config (or says why not)
        self.send_weights(policy, self.start)
        decode(self.channel.get("ready", alive=self.gone))

    def take(self, step: int) -> tuple[ScoredBatch, RolloutStats, Sampled]:
        """The step's batch (this rank's rows), its rollout statistics, and what the worker sent."""
        sampled = self.taken.pop(step, None)
        if sampled is None:
            sampled = unpack(self.channel.get(f"batch/{step}", alive=self.gone))
        if step - sampled.version > self.k or sampled.step != step:
            raise RolloutServerError(
                f"step {step} got the batch of step {sampled.step} sampled with policy version {sampled.version}, "
                f"staler than rollout.max_staleness={self.k}: the worker at {self.describe} runs another schedule"
            )
        scored, g = sampled.scored, sampled.scored.rollout.group_size
        groups = len(scored) // g // self.world
        mine = torch.arange(self.rank * groups, (self.rank + 1) * groups)
        stats = RolloutStats(
            generation_seconds=sampled.generation_seconds,
            reward_seconds=sampled.reward_seconds,
            first_round_zero_std=sampled.first_round_zero_std[mine],
            # counted once in the ranks' sum
            reward_failures=sampled.reward_failures if self.rank == 0 else torch.zeros_like(sampled.reward_failures),
        )
        return scored.select_groups(mine) if self.world > 1 else scored, stats, sampled

    def published(self, done: int, policy: torch.nn.Module) -> None:
        """After step `done` - 1: version `done` goes to the worker if a step it still samples needs it."""
        if done + self.k < self.steps:
            self.send_weights(policy, done)

    def ahead(self) -> list[Sampled]:
        """The batches of the steps after the last trained one that the worker sampled already (for a checkpoint;
        they stay in the store for `take`)."""
        done = self.state.step
        found = []
        for step in range(done, min(done + self.k, self.steps)):
            if step in self.taken:
                found.append(self.taken[step])
                continue
            found.append(unpack(self.channel.get(f"batch/{step}", alive=self.gone)))
        return found

    def pop_sync(self) -> dict[str, float]:
        """`time/weight_sync` and `rollout/weight_sync_mb` (what rank 0 sent) since the last call."""
        sync = {"time/weight_sync": self.sync_seconds, "rollout/weight_sync_mb": self.sync_bytes / 2**20}
        self.sync_seconds, self.sync_bytes = 0.0, 0
        return sync

    def close(self) -> None:
        """Tell the worker to stop; a local worker that does not stop within 10 s is killed (no orphan)."""
        try:
            self.channel.put("stop", b"1")
        except (RuntimeError, AttributeError):
            pass
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
