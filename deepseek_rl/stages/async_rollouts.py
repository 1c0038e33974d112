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
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from deepseek_rl.batch import ScoredBatch
from deepseek_rl.config.schema import Config
from deepseek_rl.infra.checkpoint import TrainerState
from deepseek_rl.models.weights import whole_parameters
from deepseek_rl.rollout.remote import (
    TRAINER,
    Channel,
    RolloutServerError,
    Sampled,
    decode,
    encode,
    pack,
    send_weights,
    unpack,
)
from deepseek_rl.stages.collect import RolloutStats, advantages
from deepseek_rl.stages.rollout_worker import config_snapshot, copy_dtype


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


# What makes a process one rank of the trainers' launch: torch.distributed's rendezvous, torchelastic's bookkeeping
# and accelerate's launch settings (ACCELERATE_*: under ZeRO-3 a worker's own Accelerator, vLLM's, would otherwise
# turn DeepSpeed on and with it transformers' ZeRO-3 mode in the worker)
RANK_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
             "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip
RANK_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_")


def worker_environment(trainer: Mapping[str, str], parent_pid: int) -> dict[str, str]:
    """The environment of a worker started beside the trainer: the trainer's, less what makes a process one of the
    trainers' ranks (a worker is one plain process; its devices are rollout.server.devices)."""
    env = {k: v for k, v in trainer.items() if k not in RANK_KEYS and not k.startswith(RANK_PREFIXES)}
    env["DEEPSEEK_RL_PARENT_PID"] = str(parent_pid)
    if "DEEPSEEK_RL_WORKER_THREADS" in trainer:  # the benchmark's split of the cores
        env["OMP_NUM_THREADS"] = trainer["DEEPSEEK_RL_WORKER_THREADS"]
    return env


class AsyncRollouts:
    """The connection to the rollout workers of one GRPO stage (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        output_dir: Path,
        state: TrainerState,
        pending: list[Sampled],
        rank: int,
        world: int,
        rank_zero_value: Callable[[Any], Any] = lambda value: value,
        precision: str = "no",
    ):
        self.cfg, self.k, self.steps = cfg, cfg.rollout.max_staleness, cfg.trainer.max_steps
        self.rank, self.world, self.state = rank, world, state
        self.procs: list[subprocess.Popen] = []
        self.taken: dict[int, Sampled] = {s.step: s for s in pending}
        self.sync_seconds, self.sync_bytes, self.sync_wait = 0.0, 0, 0.0
        self.copy_dtype = copy_dtype(cfg, precision)  # what the weights travel in (None: the trainer's own dtypes)
        self.dtypes: dict[str, torch.dtype] = {}  # rank 0: the dtype each tensor is sent in, as the workers are told
        server = cfg.rollout.server
        if server.url is None:  # rank 0 starts them; every rank connects to rank 0's ports
            addresses = [("127.0.0.1", int(p)) for p in rank_zero_value(self.start_local_workers(output_dir))]
        else:
            addresses = server.addresses()
        beside = " (started beside the trainer)" if server.url is None else ""
        self.describe = [f"{host}:{port}{beside}" for host, port in addresses]
        self.channels = [self.connect(i, host, port, server.timeout) for i, (host, port) in enumerate(addresses)]
        if rank == 0:
            first = state.step + len(pending)  # the workers sample from the first step not in the checkpoint
            for i, channel in enumerate(self.channels):
                # precision: the trainer's autocast (bf16 mixed precision), which the worker's sampling runs under
                hello = {"start": first, "steps": self.steps, "config": asdict(cfg), "shard": i,
                         "shards": len(self.channels), "precision": precision}  # fmt: skip
                channel.put("hello", encode(hello))
        self.start = state.step

    def log_name(self, index: int) -> str:
        return "rollout_worker.log" if self.cfg.rollout.server.workers == 1 else f"rollout_worker_{index}.log"

    def start_local_workers(self, output_dir: Path) -> list[int]:
        """`deepseek-rl serve` in child processes on free ports (only rank 0 of the trainers starts them)."""
        server = self.cfg.rollout.server
        base = int(os.environ.get("DEEPSEEK_RL_WORKER_PORT", "0"))
        ports = [base + i if base else free_port() for i in range(server.workers)]
        if self.rank != 0:
            return ports
        output_dir.mkdir(parents=True, exist_ok=True)
        config = output_dir / ".rollout_worker.json"
        config.write_text(config_snapshot(self.cfg))
        env = worker_environment(os.environ, os.getpid())
        for i, port in enumerate(ports):
            if server.devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = server.worker_devices(i)
            log = (output_dir / self.log_name(i)).open("ab")
            cmd = [sys.executable, "-m", "deepseek_rl.cli", "serve", "--config-json", str(config), "--host",
                   "127.0.0.1", "--port", str(port)]  # fmt: skip
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True))
        return ports

    def connect(self, index: int, host: str, port: int, timeout: float) -> Channel:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return Channel(host, port, TRAINER, timeout, f"{host}:{port}", weights=self.rank == 0)
            except RolloutServerError:
                gone = self.gone(index)
                if gone is not None or time.monotonic() > deadline:
                    raise RolloutServerError(
                        f"cannot reach the rollout worker at {host}:{port}"
                        + (f" ({gone})" if gone else "")
                        + f"; see <output_dir>/{self.log_name(index)}" * bool(self.procs)
                    ) from None
                time.sleep(0.5)

    def gone(self, index: int) -> str | None:
        """Why local worker `index` is gone (its exit status), or None while it runs (or for a remote one)."""
        if not self.procs or self.procs[index].poll() is None:
            return None
        return f"it exited with status {self.procs[index].returncode}; its log: <output_dir>/{self.log_name(index)}"

    def alive(self, index: int) -> Callable[[], str | None]:
        return lambda: self.gone(index)

    def send_weights(self, policy: torch.nn.Module, version: int) -> None:
        """Every trainer rank calls this: under ZeRO-3 each parameter is gathered (a collective) while rank 0 sends
        it to every worker; elsewhere the other ranks' pass over the names costs nothing."""
        start, waited = time.perf_counter(), 0.0
        named = whole_parameters(policy, trained_only=True)
        if self.rank == 0:
            sent, waited = send_weights(self.channels, version, named, self.dtypes)
            self.sync_bytes += sent
        else:
            for _ in named:
                pass
        self.sync_seconds += time.perf_counter() - start - waited
        self.sync_wait += waited

    def begin(self, policy: torch.nn.Module) -> None:
        """After the trainer's weights are final for its first step: the workers' first weights (the version of the
        resumed step), then their answers."""
        if self.rank == 0:
            # the dtype of each tensor sent, which the worker receives in (its copy may differ: DeepSpeed's bf16
            # weights of an fp32 model.dtype; a mismatched gloo broadcast aborts the receiving process)
            named = policy.named_parameters()
            self.dtypes = {name: self.copy_dtype or p.dtype for name, p in named if p.requires_grad}
            for i, channel in enumerate(self.channels):  # each worker checked the config and loaded (or says why not)
                channel.get("accepted", alive=self.alive(i))
                channel.put("dtypes", encode(self.dtypes))
        self.send_weights(policy, self.start)
        for i, channel in enumerate(self.channels):
            decode(channel.get("ready", alive=self.alive(i)))

    def fetch(self, step: int) -> Sampled:
        """The step's whole batch: each worker's share, in worker order (the global batch's row order); with several
        workers the advantages are those of the whole batch (batch statistics included), as one process computes."""
        if step in self.taken:
            return self.taken[step]
        parts = [unpack(c.get(f"batch/{step}", alive=self.alive(i))) for i, c in enumerate(self.channels)]
        for i, part in enumerate(parts):
            if part.step != step or part.version != parts[0].version:
                raise RolloutServerError(
                    f"step {step}: the worker at {self.describe[i]} sent the batch of step {part.step} sampled with "
                    f"policy version {part.version}, the worker at {self.describe[0]} step {parts[0].step} with "
                    f"version {parts[0].version}: the workers run another schedule"
                )
        sampled = parts[0] if len(parts) == 1 else merged(parts, self.cfg)
        self.taken[step] = sampled
        return sampled

    def take(self, step: int) -> tuple[ScoredBatch, RolloutStats, Sampled]:
        """The step's batch (this rank's rows), its rollout statistics, and what the workers sent."""
        sampled = self.fetch(step)
        del self.taken[step]
        if self.rank == 0:  # the workers' stores drop the last step's batch: every rank took it (its update
            for channel in self.channels:  # synchronised them) and no checkpoint holds it any more
                channel.delete(f"batch/{step - 1}")
        if step - sampled.version > self.k:  # (fetch checked that every worker sent this step)
            raise RolloutServerError(
                f"step {step} got the batch of step {sampled.step} sampled with policy version {sampled.version}, "
                f"staler than rollout.max_staleness={self.k}: the worker at {self.describe[0]} runs another schedule"
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
        """After step `done` - 1: version `done` goes to the workers if a step they still sample needs it."""
        if done + self.k < self.steps:
            self.send_weights(policy, done)

    def ahead(self) -> list[Sampled]:
        """The batches of the steps after the last trained one that the workers sampled already (for a checkpoint;
        `take` finds them here)."""
        done = self.state.step
        return [self.fetch(step) for step in range(done, min(done + self.k, self.steps))]

    def pop_sync(self) -> tuple[dict[str, float], float]:
        """Since the last call: `time/weight_sync` (the transfer) and `rollout/weight_sync_mb` (what rank 0 sent to one
        worker); and the seconds rank 0 waited for the workers to take the weights (they finish their batch first:
        the trainer idles, part of `time/wait_rollout`)."""
        sync = {"time/weight_sync": self.sync_seconds, "rollout/weight_sync_mb": self.sync_bytes / 2**20}
        waited = self.sync_wait
        self.sync_seconds, self.sync_bytes, self.sync_wait = 0.0, 0, 0.0
        return sync, waited

    def close(self) -> None:
        """Tell the workers to stop; a local worker that does not stop within 10 s is killed (no orphan)."""
        for channel in self.channels:
            try:
                channel.put("stop", b"1")
            except RuntimeError:
                pass
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def merged(parts: list[Sampled], cfg: Config) -> Sampled:
    """Several workers' shares of one step as one batch: rows in worker order, the advantages recomputed over the
    whole batch, the slowest worker's seconds, the rewards' failures summed."""
    scored = ScoredBatch.concat([p.scored for p in parts])
    scored.advantages = advantages(scored.rewards, cfg.algorithm, cfg.algorithm.num_generations)
    return Sampled(
        step=parts[0].step,
        version=parts[0].version,
        scored=scored,
        generation_seconds=max(p.generation_seconds for p in parts),
        reward_seconds=max(p.reward_seconds for p in parts),
        first_round_zero_std=torch.cat([p.first_round_zero_std for p in parts]),
        reward_failures=torch.stack([p.reward_failures for p in parts]).sum(0),
        waited_seconds=max(p.waited_seconds for p in parts),
    )
