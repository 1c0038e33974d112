"""What the GPU check builds before it measures: the shapes and their sizes, a random model of a shape, the
prompts, the measured matmul peak, and which of the training CLI's packages this interpreter lacks."""

from __future__ import annotations

import importlib
import json
import os
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from deepseek_rl.paths import REPO_DIR

# Dense bf16 tensor-core peak by the vendor's datasheet (SXM parts), TFLOP/s
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
# What the training CLI needs beyond torch, transformers and accelerate (the engine and agreement sections need none)
CLI_NEEDS = {"hydra": "hydra-core", "omegaconf": "omegaconf", "datasets": "datasets", "math_verify": "math-verify"}
# DeepSeek-R1-Distill-Qwen-7B's dimensions over the 1.5B config (same tokenizer, vocabulary padded to 152,064)
SEVEN_B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064}  # fmt: skip
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": True}  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    engine_rows: int  # completions per generation call
    engine_tokens: int  # new tokens per completion
    step_rows: int  # completions per GRPO step (trainer.batch_size)
    step_tokens: int  # rollout.max_completion_length of the GRPO steps
    micro_batch: int
    small_rows: int  # the fsdp2 and lora steps
    small_tokens: int
    budget_s: float  # sections that would start after this many seconds are skipped


SIZES = {
    "tiny": Sizes(8, 32, 8, 32, 4, 8, 16, 600),
    "r1_1.5b": Sizes(64, 2048, 64, 1024, 8, 16, 512, 420),
    "7b": Sizes(32, 1024, 32, 512, 4, 16, 256, 100),
}


def unusable_packages() -> list[str]:
    """The training CLI's packages that this interpreter cannot import, each with why; then, when those import, the
    CLI's own module (a package it imports that this machine lacks, named by the import that failed). Both, because
    the CLI imports math_verify only when a reward runs: its own import would not find that one missing."""
    broken = []
    for module, pip in CLI_NEEDS.items():
        try:
            importlib.import_module(module)
        except Exception as err:  # missing, or present but broken against this machine's packages
            broken.append(f"{pip} ({type(err).__name__}: {str(err)[:200]})")
    if not broken:
        try:
            importlib.import_module("deepseek_rl.cli.train")
        except Exception as err:
            name = getattr(err, "name", None) or "deepseek_rl.cli.train"
            broken.append(f"{name} ({type(err).__name__}: {str(err)[:200]})")
    return broken


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured matrix-product throughput (TFLOP/s): the mean of 10 products after 3 warm-ups."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(shape: str, tokenizer_dir: Path, directory: Path, device: torch.device, dtype: torch.dtype) -> dict:
    """A random Qwen2 of the shape, saved with the tokenizer to `directory`; returns its parameter counts."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tokenizer_dir)
    values = {k: v for k, v in config.to_dict().items() if k != "layer_types"}  # derived from num_hidden_layers
    config = type(config)(**{**values, **{"tiny": TINY, "7b": SEVEN_B}.get(shape, {})})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    info = {"parameters": total, "matmul_parameters": total - embedding, "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size, "vocab_size": config.vocab_size}  # fmt: skip
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return info


def write_prompts(path: Path, count: int = 256) -> None:
    """GSM8K-like arithmetic questions with answers in GSM8K's "#### N" form (what the accuracy reward reads)."""
    rng = random.Random(0)
    rows = []
    for _ in range(count):
        a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(2, 9)
        question = f"A shop sells {a} pens on Monday and {b} on Tuesday, in boxes of {c}. How many pens in all?"
        rows.append({"question": question, "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def pythonpath() -> str:
    """The checkout first, so the CLI's subprocesses (and the reward workers) import this copy of the package."""
    return os.pathsep.join(p for p in (str(REPO_DIR), os.environ.get("PYTHONPATH", "")) if p)


def padding_free_available() -> bool:
    from deepseek_rl.config.schema import TrainerConfig

    return any(f.name == "padding_free" for f in fields(TrainerConfig))
