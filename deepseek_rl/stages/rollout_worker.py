"""The rollout worker of asynchronous GRPO (`deepseek-rl serve`): samples and scores the steps' rollouts ahead of
the trainer, on its own process (and devices).

    deepseek-rl serve --config-name RECIPE [--port 29600] [key=value ...]   # then the trainer: rollout.server.url
    deepseek-rl train --config-name smoke_async                             # starts one beside the trainer itself

The schedule (docs/async.md): step s is sampled with the policy of step max(0, s - k), k = rollout.max_staleness, so
the worker samples step s + k while the trainer trains step s. The worker builds what a synchronous step's rollout
phase builds (prompts, rewards, the collector, the engine: the built-in sampler, which also returns the log-prob of
each sampled token, the behaviour policy; or vLLM), for the global batch (every trainer rank's rows, as one process
would sample them: noise from (seed, step, row)), or with several workers (rollout.server.workers) for its share of
it, as rank i of a synchronous run would sample its own rows, scores it (rewards run here, off the trainer's path),
and puts it in the channel's store with the version of the policy that sampled it. Before sampling step s it
receives weight versions until it holds version s - k; the trainer sends each version once. It stops at the last
step, at the trainer's `stop`, when its trainer is gone (its parent, for a worker started beside it) or past the
timeout.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator

from deepseek_rl.config.schema import Config
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.errors import UserError
from deepseek_rl.infra.distributed import release_accelerator
from deepseek_rl.infra.resume import changed_keys
from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
from deepseek_rl.rollout.engine import BuiltinEngine, RolloutEngine
from deepseek_rl.rollout.remote import (
    WORKER,
    Channel,
    RolloutServerError,
    Sampled,
    decode,
    encode,
    pack,
    trained_parameters,
)
from deepseek_rl.stages.collect import RolloutCollector
from deepseek_rl.stages.reward_set import RewardSet

# Keys that may differ between the trainer's config and the worker's (where they write, how they log, how the
# trainer reaches the worker, the trainer's own launch)
OWN_KEYS = ("rollout.server", "trainer.output_dir", "trainer.resume", "trainer.overwrite", "logger", "trainer.save")


def worker_config_differences(trainer: dict, worker: dict) -> list[str]:
    """The keys in which the trainer's and the worker's configs differ in what they sample."""
    return [d for d in changed_keys(trainer, worker, "grpo") if not d.startswith(OWN_KEYS)]


def serve(cfg: Config, host: str, port: int) -> None:
    """Serve one trainer, from its `hello` to the last step or its `stop`."""
    channel = Channel(host, port, WORKER, cfg.rollout.server.timeout, f"{host}:{port}")
    print(f"deepseek-rl serve: rollout worker listening on {host}:{port}", file=sys.stderr, flush=True)
    hello = decode(channel.get("hello", wait=False))
    try:
        differences = worker_config_differences(hello["config"], asdict(cfg))
        if differences:
            raise RolloutServerError(
                "the trainer's config differs from this worker's in what it samples: " + "; ".join(differences[:6])
            )
        run(cfg, channel, hello)
    except BaseException as err:  # the trainer hears why (the store lives until it says stop), then this process
        if not isinstance(err, KeyboardInterrupt):
            if isinstance(err, RolloutServerError):
                message = str(err)
            elif isinstance(err, UserError):  # one line, as the command line prints it
                message = f"{err.kind}: {err}"
            else:
                message = traceback.format_exc(limit=3)[-1500:]
            channel.put("error", message.encode())
            deadline = time.monotonic() + 10
            while "stop" not in channel.keys_present() and time.monotonic() < deadline:
                time.sleep(0.1)
        raise


def run(cfg: Config, channel: Channel, hello: dict) -> None:
    """The sampling loop (module docstring)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg.model)
    prompts = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length)
    context = {"max_completion_length": cfg.rollout.max_completion_length}
    rewards = RewardSet(cfg.reward, context, device=device)
    # the policy as the trainer loads it (a LoRA policy's adapters in fp32 on a bf16 base, as PEFT makes them); a
    # vLLM worker's copy in vLLM's dtype
    precision = hello.get("precision", "no")
    model = load_model(cfg.model, tokenizer, seed=cfg.trainer.seed, trainable=cfg.model.lora.enabled)
    model = model.to(device=copy_device(cfg.rollout.engine, device), dtype=copy_dtype(cfg, precision)).eval()
    params = trained_parameters(model)  # what the trainer sends (a LoRA policy: its adapters)
    model.requires_grad_(False)
    scratch = tempfile.TemporaryDirectory(prefix="deepseek-rl-worker-")
    # sampling under the trainer's autocast (bf16 mixed precision), as its forward computes
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision)
    if precision != "no":
        print(f"deepseek-rl serve: sampling under {precision} autocast (the trainer's mixed precision)",
              file=sys.stderr, flush=True)  # fmt: skip
    engine = worker_engine(cfg, model, tokenizer, Path(scratch.name), accelerator)
    # this worker's share of the global batch (every trainer rank's rows): all of it for a single worker; with
    # several, worker i samples as rank i of a synchronous run (the trainer computes the advantages of the whole)
    shard, shards = hello.get("shard", 0), hello.get("shards", 1)
    plan = cfg.rollout_plan(shards)
    collector = RolloutCollector(
        plan, shard, cfg.trainer.seed, cfg.rollout, cfg.algorithm, prompts, rewards, tokenizer.pad_token_id, lambda t: t
    )
    # accepted once everything is loaded: the trainer, waiting for this before it sends weights, hears a failure
    # above as this worker's own one-line error instead of a weight transfer cut off
    channel.put("accepted", b"1")
    dtypes = decode(channel.get("dtypes", wait=False))  # the dtype each tensor is sent in
    k, version = cfg.rollout.max_staleness, channel.receive_weights(params, dtypes)
    channel.put("ready", encode({"version": version}))
    try:
        for step in range(hello["start"], hello["steps"]):
            waiting = time.perf_counter()
            while version < max(0, step - k):
                version = channel.receive_weights(params, dtypes)
                engine.policy_updated()  # vLLM: reloads the weights at the next session
            waited = time.perf_counter() - waiting
            if "stop" in channel.keys_present():
                return
            with engine.session():
                scored, stats = collector.collect(engine, step)
            sampled = Sampled(step, version, scored, stats.generation_seconds, stats.reward_seconds,
                              stats.first_round_zero_std, stats.reward_failures, waited)  # fmt: skip
            channel.put(f"batch/{step}", pack(sampled))
        deadline = time.monotonic() + cfg.rollout.server.timeout
        while "stop" not in channel.keys_present() and time.monotonic() < deadline:  # the store lives until the
            time.sleep(0.2)  # trainer has taken the last batches and says stop
    finally:
        rewards.close()
        engine.close()
        scratch.cleanup()
        release_accelerator()


def copy_device(engine: str, device: torch.device) -> torch.device:
    """Where the worker's copy of the policy lives: on the device for the built-in sampler, which samples with it;
    in host memory under vLLM, where it only stages the weights received (over gloo, through host memory anyway) for
    vLLM's reload and merges a LoRA policy's adapters: the device stays vLLM's, weights and KV cache."""
    return torch.device("cpu") if engine == "vllm" else device


def copy_dtype(cfg: Config, precision: str) -> torch.dtype | None:
    """The dtype of a vLLM worker's copy of a fully trained policy: vLLM's own (bf16 under the trainer's bf16 mixed
    precision, `precision`), which the trainer sends each weight in: half the bytes of fp32 master weights, and what
    vLLM would cast them to anyway. None (the trainer's dtypes): the built-in sampler computes with the copy as the
    trainer's forward does, and a LoRA policy's adapters stay fp32 until they are merged."""
    if cfg.rollout.engine != "vllm" or cfg.model.lora.enabled:
        return None
    from deepseek_rl.rollout.vllm_engine import vllm_dtype

    return getattr(torch, vllm_dtype(cfg.rollout.vllm, cfg.model.dtype, precision))


def worker_engine(
    cfg: Config, model: torch.nn.Module, tokenizer, scratch: Path, accelerator: Accelerator
) -> RolloutEngine:
    """The worker's engine: the built-in sampler on its copy of the policy, returning the behaviour log-probs; or
    with rollout.engine=vllm a vLLM engine in this process, reloaded from that copy after each weight version
    (vLLM's own weight path, adapters merged for a LoRA policy; log-probs of the distribution it sampled from)."""
    eos = eos_token_ids(tokenizer, model)
    if cfg.rollout.engine == "builtin":
        return BuiltinEngine(model, tokenizer, eos, accelerator, logprobs=True)
    from deepseek_rl.rollout.vllm_engine import VLLMEngine, engine_model_dir

    model_dir = engine_model_dir(cfg.model, model, tokenizer, scratch)
    return VLLMEngine(model_dir, cfg.model, cfg.rollout, model, tokenizer, eos, accelerator, cfg.trainer.seed)


def config_snapshot(cfg: Config) -> str:
    """The config as JSON, for a worker started beside the trainer (`serve --config-json`)."""
    return json.dumps(asdict(cfg), default=str)
