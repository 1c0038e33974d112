"""Side-by-side benchmark against TRL's GRPOTrainer on identical work, in one invocation.

    pip install -e '.[bench]'              # TRL, for this benchmark only
    python -m deepseek_rl.tools.bench_trl [--workload tiny|large|all] [--steps N] [--rounds R]
        [--output docs/benchmarks.md]

For each workload and KL setting (off, and on with beta 0.04), both trainers start from the same saved weights and
tokenizer, with the same prompts, reward functions (ours, passed to TRL as-is: same contract), number of
generations, batch size, completion length, learning rate (constant), loss (`dapo`), gradient clipping, one
optimizer step per generation batch and one micro-batch. Each run is its own process (clean peak memory);
ours and TRL's alternate for `--rounds` rounds so background load hits both alike. Steps after the first of each
run are pooled; the table shows medians. TRL's phases are timed by wrapping its generate, reward and log-prob calls
(bench_workers.py); ours come from its own per-step timings.

Workloads: `tiny` is the smoke recipe's model and task (character tokenizer, 2-digit addition); `large` is a Qwen2
of ~43M parameters with the real DeepSeek-R1-Distill tokenizer (151,665 tokens) on GSM8K questions, 256-token
completions. The benchmark also measures this machine's fp32 matmul throughput, the `large` training phase's
achieved FLOP/s as a share of it, and our sampler's tokens/s against a plain Hugging Face `generate`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepseek_rl.tools.bench_workers import WORKLOADS, prepare_workload

PHASES = ("generation", "reward", "logprobs", "update")


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """fp32 matrix-multiply throughput of this machine with torch's current thread count (best of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_worker(framework: str, workload: str, model_dir: Path, kl: float, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "deepseek_rl.tools.bench_workers", framework, workload, str(model_dir), str(kl)]
    cmd += [str(steps), str(out)]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def summarise(runs: list[dict]) -> dict:
    """Pool the steps after the first of every run; medians per phase, tokens/s, peak memory, final reward."""
    steps = [s for run in runs for s in run["steps"][1:]]
    out = {p: statistics.median(s[p] for s in steps) for p in ("step", *PHASES)}
    out["tokens_per_second"] = statistics.median(s["completion_tokens"] / s["step"] for s in steps)
    out["peak_memory_mb"] = max(run["peak_memory_mb"] for run in runs)
    out["final_reward"] = statistics.fmean(s["mean_reward"] for run in runs for s in run["steps"][-5:])
    out["flops_per_step"] = runs[0].get("train_flops_per_step")
    return out


def table(rows: list[tuple[str, dict, dict]]) -> str:
    lines = [
        "| workload | KL | trainer | step s | generation | reward | log-prob fwd | backward+opt | tokens/s | peak MB |"
        " final reward |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, ours, trl in rows:
        for name, r in (("deepseek-rl", ours), ("TRL", trl)):
            cells = " | ".join(f"{r[p]:.3f}" for p in ("step", *PHASES))
            lines.append(
                f"| {label} | {name} | {cells} | {r['tokens_per_second']:.0f} | {r['peak_memory_mb']:.0f} |"
                f" {r['final_reward']:.3f} |"
            )
        ratios = " | ".join(f"{ours[p] / trl[p]:.2f}x" if trl[p] > 0 else "-" for p in ("step", *PHASES))
        tps, mem = ours["tokens_per_second"] / trl["tokens_per_second"], ours["peak_memory_mb"] / trl["peak_memory_mb"]
        lines.append(f"| {label} | **ours / TRL** | **{ratios}** | {tps:.2f}x | {mem:.2f}x | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per workload)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    report = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads; fp32 matmul {matmul_gflops():.1f} GFLOP/s (2048x2048)."]  # fmt: skip
    rows = []
    extra: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in workloads:
            spec = WORKLOADS[name]
            model_dir = prepare_workload(name, Path(tmp) / name)
            steps = args.steps or spec.steps
            for kl in (0.0, 0.04):
                results: dict[str, list[dict]] = {"ours": [], "trl": []}
                for r in range(args.rounds):
                    for framework in ("ours", "trl"):
                        out = Path(tmp) / f"{name}-{kl}-{framework}-{r}.json"
                        results[framework].append(run_worker(framework, name, model_dir, kl, steps, out))
                        print(f"{name} kl={kl} {framework} round {r}: done", file=sys.stderr)
                ours, trl = summarise(results["ours"]), summarise(results["trl"])
                rows.append((f"{name} | {'on' if kl else 'off'}", ours, trl))
                if name == "large" and kl == 0.0:
                    extra.append(training_efficiency(ours, trl))
            if name == "large":
                extra.append(generation_baseline(model_dir))
    text = "\n\n".join([*report, table(rows), *extra])
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


def training_efficiency(ours: dict, trl: dict) -> str:
    peak = matmul_gflops()
    lines = []
    for name, r in (("deepseek-rl", ours), ("TRL", trl)):
        seconds = r["logprobs"] + r["update"]
        achieved = r["flops_per_step"] / seconds / 1e9
        lines.append(f"{name}: training phase {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of {peak:.1f}")
    head = "Training-phase efficiency (large, KL off; model FLOPs / (log-prob + backward+optimizer time)): "
    return head + "; ".join(lines)


def generation_baseline(model_dir: Path) -> str:
    from deepseek_rl.tools.bench_workers import sampler_vs_generate

    ours, hf = sampler_vs_generate(model_dir)
    return (
        f"Generation (large, 16 rows x 256 new tokens): deepseek-rl sampler {ours:.0f} tokens/s, "
        f"plain HF generate {hf:.0f} tokens/s ({ours / hf:.2f}x)."
    )


if __name__ == "__main__":
    main()
