"""Side-by-side benchmark against TRL's GRPOTrainer on identical work, in one invocation.

    pip install -e '.[bench]'              # TRL, for this benchmark only
    python -m deepseek_rl.tools.bench_trl [--workload tiny|large|longtail|all] [--steps N] [--rounds R]
        [--output docs/benchmarks.md] [--json results.json]

For each workload and KL setting (off, and on with beta 0.04), both trainers start from the same saved weights and
tokenizer, with the same prompts, reward functions (ours, passed to TRL as-is: same contract), number of
generations, batch size, completion length, learning rate (constant), loss (`dapo`), gradient clipping, one
optimizer step per generation batch and one micro-batch. Each run is its own process (clean peak memory);
ours and TRL's alternate for `--rounds` rounds so background load hits both alike. Steps after the first of each
run are pooled; the table shows medians. TRL's phases are timed by wrapping its generate, reward and log-prob calls
(bench_workers.py); ours come from its own per-step timings.

Workloads: `tiny` is the smoke recipe's model and task (character tokenizer, 2-digit addition); `large` is a Qwen2
of ~43M parameters with the real DeepSeek-R1-Distill tokenizer (151,665 tokens) on GSM8K questions, 256-token
completions; `longtail` is the same model edited to end completions with probability 1/160 per token (lengths
long-tailed up to 768, as R1 traces are), KL off, where ours also runs padding-free (`ours_packed`). The benchmark
measures this machine's fp32 matmul throughput and each trainer's useful training-phase FLOP/s (real tokens only,
bench_workers.flops_per_token) as a share of it, and our sampler's tokens/s against a plain Hugging Face `generate`.

`--json` writes {workload: {"off"|"on": {"ours", "trl"[, "ours_packed"]: medians per phase, "ours_over_trl": the
median step ratio, "useful_flops_share": per trainer, "matmul_gflops"[, "packed_speedup_training": padded training
seconds / packed]}}}. A worker that fails prints its stderr and stops the benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from deepseek_rl.infra.machine import matmul_gflops
from deepseek_rl.tools.bench_workers import WORKLOADS, prepare_workload

PHASES = ("generation", "reward", "logprobs", "update")


class WorkerFailed(RuntimeError):
    pass


def run_worker(framework: str, workload: str, model_dir: Path, kl: float, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "deepseek_rl.tools.bench_workers", framework, workload, str(model_dir), str(kl)]
    cmd += [str(steps), str(out)]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise WorkerFailed(f"{framework} worker on {workload} (kl={kl}) failed with exit {done.returncode}:\n"
                           f"{done.stderr[-4000:]}")  # fmt: skip
    return json.loads(out.read_text())


def useful_flops(run_flops: dict, step: dict, rows: int) -> float:
    """Training-phase model FLOPs of one step over its real tokens (bench_workers.flops_per_token)."""
    completion = step["completion_tokens"]
    prompt = run_flops["prompt_tokens"] * rows
    context = (prompt + completion) / rows
    attention = run_flops["attention"] * rows * context * context / 2
    return run_flops["layer"] * (prompt + completion) + run_flops["head"] * completion + attention


def summarise(runs: list[dict], rows: int) -> dict:
    """Pool the steps after the first of every run; medians per phase, tokens/s, peak memory, final reward, and
    the training phase's useful FLOP/s."""
    steps = [s for run in runs for s in run["steps"][1:]]
    out = {p: statistics.median(s[p] for s in steps) for p in ("step", *PHASES)}
    out["training"] = statistics.median(s["logprobs"] + s["update"] for s in steps)
    out["tokens_per_second"] = statistics.median(s["completion_tokens"] / s["step"] for s in steps)
    out["completion_tokens"] = statistics.median(s["completion_tokens"] for s in steps)
    out["peak_memory_mb"] = max(run["peak_memory_mb"] for run in runs)
    out["final_reward"] = statistics.fmean(s["mean_reward"] for run in runs for s in run["steps"][-5:])
    flops = runs[0]["flops_per_token"]
    out["useful_gflops"] = statistics.median(
        useful_flops(flops, s, rows) / (s["logprobs"] + s["update"]) / 1e9 for s in steps
    )
    return out


def table(rows: list[tuple[str, dict, dict, dict | None]]) -> str:
    lines = [
        "| workload | KL | trainer | step s | generation | reward | log-prob fwd | backward+opt | tokens/s | peak MB |"
        " final reward |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, ours, trl, packed in rows:
        named = [("deepseek-rl", ours), ("deepseek-rl packed", packed), ("TRL", trl)]
        for name, r in [(n, r) for n, r in named if r is not None]:
            cells = " | ".join(f"{r[p]:.3f}" for p in ("step", *PHASES))
            lines.append(
                f"| {label} | {name} | {cells} | {r['tokens_per_second']:.0f} | {r['peak_memory_mb']:.0f} |"
                f" {r['final_reward']:.3f} |"
            )
        best = packed or ours
        ratios = " | ".join(f"{best[p] / trl[p]:.2f}x" if trl[p] > 0 else "-" for p in ("step", *PHASES))
        tps = best["tokens_per_second"] / trl["tokens_per_second"]
        mem = best["peak_memory_mb"] / trl["peak_memory_mb"]
        which = "ours packed / TRL" if packed else "ours / TRL"
        lines.append(f"| {label} | **{which}** | **{ratios}** | {tps:.2f}x | {mem:.2f}x | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per workload)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kl", choices=("both", "off"), default="both", help="longtail always runs KL off")
    parser.add_argument("--output", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--no-trl", action="store_true", help="ours only (where TRL is not installed)")
    args = parser.parse_args(argv)
    with_trl = not args.no_trl
    if with_trl and importlib.util.find_spec("trl") is None:
        sys.exit("bench_trl: TRL is not installed: pip install -e '.[bench]' (or --no-trl for ours only)")
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    gflops = matmul_gflops()
    report = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads; fp32 matmul {gflops:.1f} GFLOP/s (2048x2048)."]  # fmt: skip
    rows, extra, results = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in workloads:
            spec = WORKLOADS[name]
            batch = spec.prompts_per_step * spec.num_generations
            model_dir = prepare_workload(name, Path(tmp) / name)
            steps = args.steps or spec.steps
            frameworks = ["ours", "ours_packed"] if spec.mean_length else ["ours"]
            frameworks += ["trl"] if with_trl else []
            for kl in (0.0,) if spec.mean_length or args.kl == "off" else (0.0, 0.04):
                runs: dict[str, list[dict]] = {f: [] for f in frameworks}
                for r in range(args.rounds):
                    for framework in frameworks:
                        out = Path(tmp) / f"{name}-{kl}-{framework}-{r}.json"
                        runs[framework].append(run_worker(framework, name, model_dir, kl, steps, out))
                        print(f"{name} kl={kl} {framework} round {r}: done", file=sys.stderr)
                summary = {f: summarise(runs[f], batch) for f in frameworks}
                entry = results.setdefault(name, {})["on" if kl else "off"] = compare(summary, gflops)
                if with_trl:
                    rows.append((f"{name} | {'on' if kl else 'off'}", summary["ours"], summary["trl"],
                                 summary.get("ours_packed")))  # fmt: skip
                if "packed_speedup_training" in entry:
                    extra.append(f"Padding-free ({name}): training phase {entry['packed_speedup_training']:.2f}x "
                                 "faster packed than padded (padded / packed seconds, medians).")  # fmt: skip
            if name == "large" and with_trl:
                extra.append(training_efficiency(results[name]["off"], gflops))
                extra.append(generation_baseline(model_dir))
    text = "\n\n".join([*report, table(rows) if rows else "", *extra])
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def compare(summary: dict[str, dict], gflops: float) -> dict:
    """One workload and KL setting: each trainer's medians, their ratios and useful FLOP/s shares."""
    entry: dict = {**summary, "matmul_gflops": gflops}
    entry["useful_flops_share"] = {f: s["useful_gflops"] / gflops for f, s in summary.items()}
    if "trl" in summary:
        best = summary.get("ours_packed", summary["ours"])
        entry["ours_over_trl"] = best["step"] / summary["trl"]["step"]
        entry["phases_over_trl"] = {p: best[p] / summary["trl"][p] if summary["trl"][p] else None for p in PHASES}
    if "ours_packed" in summary:
        entry["packed_speedup_training"] = summary["ours"]["training"] / summary["ours_packed"]["training"]
        entry["packed_speedup_step"] = summary["ours"]["step"] / summary["ours_packed"]["step"]
    return entry


def training_efficiency(entry: dict, peak: float) -> str:
    lines = []
    for name, key in (("deepseek-rl", "ours"), ("TRL", "trl")):
        achieved, share = entry[key]["useful_gflops"], entry["useful_flops_share"][key]
        lines.append(f"{name}: training phase {achieved:.1f} GFLOP/s = {100 * share:.0f}% of {peak:.1f}")
    head = "Training-phase efficiency (large, KL off; useful model FLOPs / (log-prob + backward+optimizer time)): "
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
