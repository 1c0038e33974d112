"""The rollout group: sampling settings every engine honours, the engine choice, and vLLM's knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from deepseek_rl.config.checks import one_of, require


@dataclass
class VLLMConfig:
    # vLLM runs colocated in every training process (TRL's colocate mode, verl's hybrid engine); see docs/rollout.md.
    # Share of each GPU's memory vLLM may take for its weights and KV cache (the rest is the trainer's).
    gpu_memory_utilization: float = 0.3
    # GPUs one engine is sharded over (a group of that many ranks shares one engine; must divide the world size).
    tensor_parallel_size: int = 1
    # Sequences vLLM decodes at once.
    max_num_seqs: int = 256
    # Reuse the KV cache of shared prompt prefixes (the G completions of a prompt share it).
    enable_prefix_caching: bool = True
    # Weights dtype in vLLM: auto (the training forward's: bf16 under accelerate's bf16 mixed precision, else
    # model.dtype), float32, bfloat16, float16.
    dtype: str = "auto"
    # GPU only: release vLLM's memory during the update and take it back for the rollout (0: never sleep;
    # 1: offload weights to CPU and drop the KV cache; 2: drop both, weights come back with the sync).
    sleep_level: int = 0
    # Eager mode (no CUDA graphs): slower decoding, faster start, less memory.
    enforce_eager: bool = False
    # CPU only: GiB of KV cache (vLLM's VLLM_CPU_KVCACHE_SPACE, a whole number).
    cpu_kv_cache_gib: int = 1

    def __post_init__(self) -> None:
        require(
            0 < self.gpu_memory_utilization <= 1,
            f"rollout.vllm.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]",
        )
        require(self.tensor_parallel_size >= 1, "rollout.vllm.tensor_parallel_size must be >= 1")
        require(self.max_num_seqs >= 1, "rollout.vllm.max_num_seqs must be >= 1")
        one_of("rollout.vllm.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        one_of("rollout.vllm.sleep_level", str(self.sleep_level), ("0", "1", "2"))
        require(self.cpu_kv_cache_gib >= 1, "rollout.vllm.cpu_kv_cache_gib must be >= 1")


@dataclass
class ToolsConfig:
    # Tool-integrated reasoning (docs/tools.md): the model writes a fenced ```python block and then `call_marker`;
    # generation pauses, the block runs in the code sandbox (reward.sandbox's isolation), its output (cut to
    # max_output_chars, errors and timeouts as text) is appended as environment tokens, which the loss never counts,
    # and generation goes on, up to max_tool_calls calls and the completion budget (outputs count in it).
    enabled: bool = False
    max_tool_calls: int = 4
    call_marker: str = "```output"
    # Seconds one call may run; sandbox runs of a batch that execute at once.
    timeout: float = 5.0
    workers: int = 8
    max_output_chars: int = 256
    # false: each call is a fresh program (nothing persists); true: one sandbox process per trajectory runs its calls
    # one after another in the same namespace (variables, imports, files persist), killed at the trajectory's end.
    session: bool = False

    def __post_init__(self) -> None:
        require(self.max_tool_calls >= 1, f"rollout.tools.max_tool_calls={self.max_tool_calls} must be >= 1")
        require(bool(self.call_marker.strip()), "rollout.tools.call_marker must not be empty")
        require(self.timeout > 0, f"rollout.tools.timeout={self.timeout} must be > 0 seconds")
        require(self.workers >= 1, f"rollout.tools.workers={self.workers} must be >= 1")
        require(self.max_output_chars >= 16, f"rollout.tools.max_output_chars={self.max_output_chars} must be >= 16")


@dataclass
class ServerConfig:
    # Asynchronous rollouts (rollout.max_staleness > 0) come from rollout workers apart from the trainer: null starts
    # `workers` of them beside the trainer (`deepseek-rl train` alone, on CPU or one node) and stops them at the end;
    # "host:port" (or several, separated by spaces or commas: "10.0.0.2:29600 10.0.0.3:29600"; on the command line
    # in quotes, where Hydra reads a bare comma as a sweep) reaches workers started with
    # `deepseek-rl serve --config-name RECIPE --port PORT` (their own devices or machines).
    url: str | None = None
    # Rollout workers started beside the trainer (data-parallel rollouts: worker i samples the i-th share of each
    # step's prompts, as rank i of a synchronous run would; with url, the number of addresses given).
    workers: int = 1
    # Seconds the trainer waits for a worker (a batch, a weight sync) before it gives up with an error naming it.
    timeout: float = 600.0
    # The devices of the workers started beside the trainer (CUDA_VISIBLE_DEVICES; null: the same as the trainer's),
    # split evenly among them: "4,5,6,7" with workers=2 gives 4,5 to the first and 6,7 to the second.
    devices: str | None = None

    def __post_init__(self) -> None:
        require(self.timeout > 0, f"rollout.server.timeout={self.timeout} must be > 0 seconds")
        require(self.workers >= 1, f"rollout.server.workers={self.workers} must be >= 1")
        if self.url is not None:
            for address in self.url.replace(",", " ").split() or [""]:
                host, _, port = address.rpartition(":")
                require(
                    bool(host) and port.isdigit(),
                    f"rollout.server.url={self.url}: give host:port of `deepseek-rl serve` (e.g. 10.0.0.2:29600), "
                    "or several, separated by spaces",
                )
            given = len(self.addresses())
            require(
                self.workers in (1, given),
                f"rollout.server.workers={self.workers} but rollout.server.url names {given} worker(s): the workers "
                "are the addresses given (leave rollout.server.workers out)",
            )
            self.workers = given
        if self.devices is not None:
            devices = [d for d in self.devices.split(",") if d.strip()]
            require(
                len(devices) % self.workers == 0,
                f"rollout.server.devices={self.devices} does not split evenly over rollout.server.workers="
                f"{self.workers}: give a multiple of {self.workers} devices",
            )

    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each worker named by url."""
        out = []
        for address in (self.url or "").replace(",", " ").split():
            host, _, port = address.rpartition(":")
            out.append((host, int(port)))
        return out

    def worker_devices(self, index: int) -> str | None:
        """CUDA_VISIBLE_DEVICES of local worker `index` (null: the trainer's)."""
        if self.devices is None:
            return None
        devices = [d.strip() for d in self.devices.split(",") if d.strip()]
        share = len(devices) // self.workers
        return ",".join(devices[index * share : (index + 1) * share])


@dataclass
class RolloutConfig:
    # builtin: the KV-cached sampler on the policy itself (CPU, demo, tests); vllm: a vLLM engine in every training
    # process, synced with the policy after each update (pip install 'deepseek-rl[vllm]'; see docs/rollout.md).
    engine: str = "builtin"
    # Prompts longer than this (in tokens) are rejected with an error naming the row.
    max_prompt_length: int = 64
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    # 0 disables top-k.
    top_k: int = 0
    # Generation of a completion also stops after any of these strings (besides EOS).
    stop_strings: list[str] = field(default_factory=list)
    # The built-in engine on a GPU replays each decode step from a CUDA graph (rollout/graphed_decode.py): the eager
    # step is bound by launching its operations, not by the GPU. No effect on CPU or with vLLM.
    cuda_graphs: bool = True
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    # Asynchronous GRPO: 0 samples every step's rollouts with the current policy (synchronous); k >= 1 lets a rollout
    # worker sample ahead, step s with the policy of step s - k (docs/async.md), while the trainer updates. (Not
    # `rollout.async.*`: async is a Python keyword.)
    max_staleness: int = 0
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        one_of("rollout.engine", self.engine, ("builtin", "vllm"))
        require(self.max_staleness >= 0, f"rollout.max_staleness={self.max_staleness} must be >= 0 (0: synchronous)")
        tp = self.vllm.tensor_parallel_size
        require(
            self.max_staleness == 0 or self.engine != "vllm" or tp == 1,
            f"rollout.vllm.tensor_parallel_size={tp}: an asynchronous rollout worker runs vLLM on one process and one "
            f"device; start one worker per device instead (rollout.server.workers={tp} "
            f"rollout.vllm.tensor_parallel_size=1)",
        )
        require(self.max_prompt_length >= 1, f"rollout.max_prompt_length={self.max_prompt_length} must be >= 1")
        require(
            self.max_completion_length >= 1, f"rollout.max_completion_length={self.max_completion_length} must be >= 1"
        )
        require(self.temperature >= 0, f"rollout.temperature={self.temperature} must be >= 0 (0: greedy)")
        require(0 < self.top_p <= 1, f"rollout.top_p={self.top_p} must be in (0, 1]")
        require(self.top_k >= 0, f"rollout.top_k={self.top_k} must be >= 0 (0 disables it)")
