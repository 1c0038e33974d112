"""The memory model of the preflight check: bytes per device of one GRPO run, term by term (docs/preflight.md).

Notation: P parameters (T of them trainable: all, or the LoRA adapters), N processes, L layers, h hidden size,
I MLP size, a attention heads, k KV heads of d dims, V vocabulary; per rank R rollout rows (completions),
M rows per micro-batch, S = prompt + completion tokens of a row, C completion tokens; b_w bytes per stored weight,
b_a bytes per activation (2 under bf16/fp16, else 4).

Static (held for the whole run; conservative: gradients are counted in every phase):
  weights    P b_w (+ 4 T for fp32 LoRA adapters), / N under ZeRO-3 and FSDP, 0 with parameters offloaded
  gradients  T b_g, / N under ZeRO-2/3 and FSDP (b_g = b_w; 4 for LoRA adapters); DeepSpeed also keeps an fp32
             copy of its gradient partition, 4 T / N (ZeRO-3: instead of the half-precision one), and ZeRO-3
             gathers the largest layer with its gradient, 4 x its parameters: DeepSpeed's own estimator
             (estimate_zero3_model_states_mem_needs: 4 x largest layer + 18 P / N)
  optimizer  AdamW: T x 12 under DeepSpeed (fp32 master copy, m, v), else T x 2 b_w (torch keeps m and v in the
             parameter dtype; 8 for fp32 LoRA adapters); / N under ZeRO-1/2/3 and FSDP; 0 when offloaded
  reference  (kl_coef > 0, full fine-tuning) P b_w, / N under ZeRO-3; none for LoRA (the base with adapters off)
Rollout phase: static + the full weights gathered under ZeRO-3 (P b_w) + the KV cache of the R rows:
  KV cache   2 L k d S R b_a
Evaluation phase (eval.every > 0, rank 0): the same with eval.batch_size rows.
Asynchronous rollouts (rollout.max_staleness >= 1): the rollout workers sample, so the trainer has no rollout phase
(its evaluations keep theirs, on the built-in sampler). A worker holds its copy of the weights, P b_c (b_c: the
built-in sampler's copy in model.dtype, on its device; vLLM's in b_a, in host memory) and the KV cache of its share
of the global batch (built-in), or vLLM's reservation. Workers started beside the trainer without devices of their
own (rollout.server.devices unset) sit on its first device for the whole run: n x that, in every phase there.
With rollout.engine=vllm the rollout and evaluation phases hold vLLM's reservation instead of the KV cache and the
gathered weights: u x the device memory (u = rollout.vllm.gpu_memory_utilization), plus one parameter gathered for
the weight sync (V h b_w, the embedding); the training phase holds it too unless vLLM sleeps (sleep_level 1 or 2).
Training phase: static + activations + logits of one micro-batch:
  activations  without checkpointing  L M S A, with A = b_a (8h + 4I) + 4 (2h + a + 2) bytes per token and layer
               (measured with autograd's saved-tensor hooks on transformers' Qwen2/Llama layer with SDPA and a
               padding mask: K and V are repeated to h wide; the two RMSNorms keep fp32 copies)
               with gradient checkpointing  L M S h b_a (layer inputs) + M S A (one layer recomputed)
  logits       M C V (b_a + 4): the model's logits and the fp32 log-softmax kept for its backward
Not modelled (covered by the headroom): CUDA context and NCCL buffers, allocator fragmentation, sampling buffers
(R V x 12 bytes), the prefill's transient activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Share of the device memory a run may plan to use; the rest is kept for the CUDA context, NCCL buffers and
# fragmentation.
HEADROOM = 0.9


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of an architecture (from config.json, parameters counted on the meta device)."""

    parameters: int  # P, the base model
    trainable: int  # T: P, or the LoRA adapter parameters
    lora: bool
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


@dataclass(frozen=True)
class Launch:
    """How the run is launched: backend, processes, ZeRO stage, offload, accelerate's mixed precision."""

    backend: str = "single"  # single | ddp | deepspeed | fsdp
    world_size: int = 1
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    mixed_precision: str = "no"  # no | bf16 | fp16
    source: str = "one process"

    @property
    def shards_weights(self) -> bool:
        return self.backend == "fsdp" or (self.backend == "deepspeed" and self.zero_stage == 3)

    @property
    def shards_gradients(self) -> bool:
        return self.backend == "fsdp" or (self.backend == "deepspeed" and self.zero_stage >= 2)

    @property
    def shards_optimizer(self) -> bool:
        return self.backend == "fsdp" or (self.backend == "deepspeed" and self.zero_stage >= 1)

    @property
    def fp32_master(self) -> bool:
        """DeepSpeed keeps an fp32 copy of the (trainable) weights in its optimizer."""
        return self.backend == "deepspeed"


@dataclass(frozen=True)
class Workload:
    """The sizes of one step on one rank."""

    rollout_rows: int  # R: completions sampled at once on a rank
    micro_batch: int  # M
    prompt_length: int  # max prompt tokens
    completion_length: int  # C
    eval_rows: int  # completions per evaluation generation call (0: no evaluation during training)
    kl: bool  # a reference model exists
    gradient_checkpointing: bool
    dtype_bytes: int  # bytes of model.dtype
    engine: str = "builtin"  # rollout.engine
    vllm_share: float = 0.0  # rollout.vllm.gpu_memory_utilization
    vllm_sleep_level: int = 0  # rollout.vllm.sleep_level
    device_memory: float = 0.0  # bytes per device (0: unknown)
    # asynchronous rollouts (rollout.max_staleness >= 1): the workers sample, the trainer has no rollout phase
    asynchronous: bool = False
    worker_engine: str = "builtin"  # rollout.engine, the workers'
    worker_rows: int = 0  # rows one worker samples (its share of the global batch)
    workers_beside: int = 0  # workers on this device: started beside the trainer, rollout.server.devices unset

    @property
    def sequence(self) -> int:  # S
        return self.prompt_length + self.completion_length

    @property
    def vllm_bytes(self) -> float:
        """What vLLM reserves for its weights and KV cache: its share of the device (0 when unknown)."""
        return self.vllm_share * self.device_memory


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    formula: str


@dataclass(frozen=True)
class MemoryEstimate:
    static: list[Term]  # the trainer's, for the whole run
    rollout: list[Term]  # none with asynchronous rollouts (the workers sample)
    evaluation: list[Term]
    training: list[Term]
    beside: list[Term] = field(default_factory=list)  # rollout workers sharing the device for the whole run

    def total(self, phase: str) -> float:
        return self.held_bytes + sum(t.bytes for t in getattr(self, phase))

    @property
    def static_bytes(self) -> float:
        return sum(t.bytes for t in self.static)

    @property
    def held_bytes(self) -> float:
        """On the device in every phase: the trainer's static terms and the rollout workers beside it."""
        return self.static_bytes + sum(t.bytes for t in self.beside)

    def peak(self) -> tuple[str, float]:
        phases = (["rollout"] if self.rollout else []) + ["training"] + (["evaluation"] if self.evaluation else [])
        return max(((p, self.total(p)) for p in phases), key=lambda item: item[1])


def weight_bytes(launch: Launch, dtype_bytes: int) -> int:
    """b_w: DeepSpeed with bf16/fp16 stores 2-byte weights whatever model.dtype is; otherwise model.dtype."""
    return 2 if launch.backend == "deepspeed" and launch.mixed_precision != "no" else dtype_bytes


def activation_bytes(launch: Launch, dtype_bytes: int) -> int:
    """b_a: 2 under bf16/fp16 (mixed precision or half-precision weights), else 4."""
    return 2 if launch.mixed_precision != "no" or dtype_bytes == 2 else 4


def per_token_layer_activations(shape: ModelShape, b_a: int) -> int:
    """A: bytes that one decoder layer keeps for backward per token."""
    return b_a * (8 * shape.hidden + 4 * shape.intermediate) + 4 * (2 * shape.hidden + shape.heads + 2)


def kv_cache_bytes(shape: ModelShape, rows: int, tokens: int, b_a: int) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * rows * b_a


def static_terms(shape: ModelShape, launch: Launch, work: Workload) -> list[Term]:
    n = launch.world_size
    b_w = weight_bytes(launch, work.dtype_bytes)
    p, t = shape.parameters, shape.trainable
    w_div = n if launch.shards_weights else 1
    g_div = n if launch.shards_gradients else 1
    o_div = n if launch.shards_optimizer else 1
    if shape.lora:  # frozen base in b_w, fp32 adapters
        weights, w_formula = p * b_w + t * 4, f"({p:,} x {b_w} B + {t:,} adapters x 4 B)"
        b_g, b_o = 4, (12 if launch.fp32_master else 8)
    else:
        weights, w_formula = p * b_w, f"{p:,} x {b_w} B"
        b_g, b_o = b_w, (12 if launch.fp32_master else 2 * b_w)
    weights = 0 if launch.offload_params else weights / w_div
    optimizer = 0 if launch.offload_optimizer else t * b_o / o_div
    reference = p * b_w / w_div if work.kl and not shape.lora else 0
    ref_formula = "none (kl_coef 0)" if not work.kl else "none (LoRA: the base with adapters off)"
    gradients, g_formula = t * b_g / g_div, f"{t:,} x {b_g} B / {g_div}"
    if launch.fp32_master and not launch.offload_optimizer:  # DeepSpeed's fp32 gradient partition
        zero3 = launch.zero_stage == 3
        largest = 0 if shape.lora else shape.vocab * shape.hidden  # the embedding (or the LM head)
        gradients = (0 if zero3 else gradients) + t * 4 / n + (4 * largest if zero3 else 0)
        g_formula = (f"{t:,} x 4 B / {n} (fp32 partition) + 4 x {largest:,} (largest layer gathered)" if zero3
                     else f"{g_formula} + {t:,} x 4 B / {n} (fp32 partition)")  # fmt: skip
    return [
        Term("weights", weights, "offloaded to CPU" if launch.offload_params else f"{w_formula} / {w_div}"),
        Term("gradients", gradients, g_formula),
        Term(
            "optimizer state (AdamW)",
            optimizer,
            "offloaded to CPU" if launch.offload_optimizer else f"{t:,} x {b_o} B / {o_div}",
        ),
        Term("reference model", reference, f"{p:,} x {b_w} B / {w_div}" if reference else ref_formula),
    ]


def vllm_kv_sequences(shape: ModelShape, launch: Launch, work: Workload) -> int | None:
    """How many sequences of prompt + completion tokens vLLM's KV cache holds: its reservation minus its copy of the
    weights (in the activation dtype), over the KV bytes of one sequence (None when the device memory is unknown)."""
    if not work.device_memory:
        return None
    b_a = activation_bytes(launch, work.dtype_bytes)
    free = work.vllm_bytes - shape.parameters * b_a
    return max(0, int(free // kv_cache_bytes(shape, 1, work.sequence, b_a)))


def vllm_term(label: str, work: Workload, sequences: int | None = None) -> Term:
    known = "" if work.device_memory else " (unknown: give the device memory)"
    formula = f"rollout.vllm.gpu_memory_utilization {work.vllm_share:g} x the device's memory{known}"
    if sequences is not None:
        formula += f"; its KV cache holds {sequences:,} sequences of {work.sequence:,} tokens"
    return Term(f"{label}: vLLM (weights + KV cache)", work.vllm_bytes, formula)


def generation_terms(shape: ModelShape, launch: Launch, work: Workload, rows: int, label: str) -> list[Term]:
    b_a = activation_bytes(launch, work.dtype_bytes)
    b_w = weight_bytes(launch, work.dtype_bytes)
    if work.engine == "vllm":  # vLLM's own copy and cache; the sync gathers one parameter at a time
        largest = shape.vocab * shape.hidden
        sync = [Term("rollout: weight sync", largest * b_w, f"{largest:,} x {b_w} B")] if label == "rollout" else []
        return [vllm_term(label, work, vllm_kv_sequences(shape, launch, work)), *sync]
    terms = []
    if launch.backend == "deepspeed" and launch.zero_stage == 3:
        terms.append(
            Term(f"{label}: gathered weights (ZeRO-3)", shape.parameters * b_w, f"{shape.parameters:,} x {b_w} B")
        )
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * b_a
    terms.append(
        Term(
            f"{label}: KV cache",
            kv_cache_bytes(shape, rows, work.sequence, b_a),
            f"{rows} rows x {work.sequence:,} tokens x {per_token:,} B",
        )
    )
    return terms


def training_terms(shape: ModelShape, launch: Launch, work: Workload) -> list[Term]:
    b_a = activation_bytes(launch, work.dtype_bytes)
    m, s, c = work.micro_batch, work.sequence, work.completion_length
    a = per_token_layer_activations(shape, b_a)
    tokens = m * s
    if work.gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * b_a + tokens * a
        formula = (
            f"{shape.layers} x {tokens:,} tokens x {shape.hidden} x {b_a} B + {tokens:,} x {a:,} B (checkpointing)"
        )
    else:
        activations = shape.layers * tokens * a
        formula = f"{shape.layers} x {tokens:,} tokens x {a:,} B (no checkpointing)"
    terms = [
        Term("training: activations", activations, formula),
        Term("training: logits", m * c * shape.vocab * (b_a + 4), f"{m} x {c:,} x {shape.vocab:,} x {b_a + 4} B"),
    ]
    if work.engine == "vllm" and work.vllm_sleep_level == 0:
        terms.append(vllm_term("training", work))  # awake all along
    elif work.engine == "vllm":
        terms.append(Term("training: vLLM", 0, f"asleep (rollout.vllm.sleep_level={work.vllm_sleep_level})"))
    return terms


def worker_copy_bytes(shape: ModelShape, launch: Launch, work: Workload) -> int:
    """P b_c: a rollout worker's copy of the weights. vLLM's is in vLLM's dtype (b_a: bf16 under mixed precision)
    and stays in host memory; the built-in sampler's is in model.dtype (fp32 master weights under mixed precision, as
    the trainer's forward reads them), on the worker's device."""
    b = activation_bytes(launch, work.dtype_bytes) if work.worker_engine == "vllm" else work.dtype_bytes
    return shape.parameters * b


def worker_kv_bytes(shape: ModelShape, launch: Launch, work: Workload) -> int:
    """The KV cache of the built-in sampler on a worker: its share of the global batch, in b_a."""
    return kv_cache_bytes(shape, work.worker_rows, work.sequence, activation_bytes(launch, work.dtype_bytes))


def beside_terms(shape: ModelShape, launch: Launch, work: Workload) -> list[Term]:
    """Rollout workers started beside the trainer on its first device (no devices of their own): there all along."""
    n = work.workers_beside
    if not n:
        return []
    name = "rollout worker(s) on this device"
    where = "started beside the trainer, rollout.server.devices unset"
    if work.worker_engine == "vllm":
        known = "" if work.device_memory else ", unknown: give the device memory"
        share = f"rollout.vllm.gpu_memory_utilization {work.vllm_share:g} x the device's memory"
        return [Term(name, n * work.vllm_bytes, f"{n} x {share} ({where}{known})")]
    copy, kv = worker_copy_bytes(shape, launch, work), worker_kv_bytes(shape, launch, work)
    return [Term(name, n * (copy + kv), f"{n} x ({copy / GB:.2f} weights + {kv / GB:.2f} KV cache) ({where})")]


def estimate_memory(shape: ModelShape, launch: Launch, work: Workload) -> MemoryEstimate:
    """Every term of the memory model, per device."""
    return MemoryEstimate(
        static=static_terms(shape, launch, work),
        rollout=[] if work.asynchronous else generation_terms(shape, launch, work, work.rollout_rows, "rollout"),
        evaluation=generation_terms(shape, launch, work, work.eval_rows, "eval") if work.eval_rows else [],
        training=training_terms(shape, launch, work),
        beside=beside_terms(shape, launch, work),
    )
