"""Does the demo's promise hold on any CPU? The default demo on several seeds x torch thread counts.

    python -m deepseek_rl.tools.robustness [--seeds 0 1 2 3 4] [--threads 1 2] [--docs docs] [--quick]

A thread count changes the order of floating-point reductions the way another CPU does, so the grid stands in for
"another machine". Each cell is `deepseek-rl train trainer.seed=S` (the default demo: cold start -> GRPO ->
held-out evaluation, wandb off) under OMP_NUM_THREADS=T. Per run: the step the cold start stopped at, held-out
greedy accuracy and sampled accuracy at the rollout temperature (8 samples per problem) of the cold start and after
RL, RL's gain, and the wall time beside this machine's fp32 matmul speed at that thread count (so a user on
another CPU can scale it). The verdict checks the promise: every cold start inside BAND, every gain >= MIN_GAIN.
Writes `<docs>/robustness.md` and `<docs>/robustness.json`; --quick shortens every run to seconds on the same code
path into runs/robustness-quick (a check that the tool works; its numbers say nothing about the method).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from deepseek_rl.infra.machine import matmul_gflops
from deepseek_rl.tools.reference_run import QUICK

BAND = (0.35, 0.70)  # held-out greedy accuracy of the cold start: right often enough to learn from, room for RL
MIN_GAIN = 30.0  # points of held-out greedy accuracy RL adds (README)


def run_one(seed: int, threads: int, run_dir: Path, extra: list[str]) -> dict:
    """One demo run; its figures."""
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", "logger=none", f"trainer.seed={seed}", *extra]
    cmd += [f"trainer.output_dir={run_dir}", "trainer.overwrite=true"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - start
    results = json.loads((run_dir / "results.json").read_text())
    sft_lines = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines() if line]
    before, after = results["sft"], results["grpo"]
    return {
        "seed": seed,
        "threads": threads,
        "wall_seconds": seconds,
        "sft_steps": max(m["step"] for m in sft_lines),
        "cold_greedy": before["eval/greedy_accuracy"],
        "rl_greedy": after["eval/greedy_accuracy"],
        "cold_sampled": before["eval/sampled_accuracy"],
        "rl_sampled": after["eval/sampled_accuracy"],
        "gain": 100 * (after["eval/greedy_accuracy"] - before["eval/greedy_accuracy"]),
        "sampled_gain": 100 * (after["eval/sampled_accuracy"] - before["eval/sampled_accuracy"]),
    }


def speeds(threads: list[int]) -> dict[int, float]:
    """fp32 matmul GFLOP/s at each thread count."""
    before, out = torch.get_num_threads(), {}
    for t in threads:
        torch.set_num_threads(t)
        out[t] = matmul_gflops()
    torch.set_num_threads(before)
    return out


def summary(runs: list[dict]) -> dict:
    gains, sampled = [r["gain"] for r in runs], [r["sampled_gain"] for r in runs]
    inside = [BAND[0] <= r["cold_greedy"] <= BAND[1] for r in runs]
    return {
        "runs": len(runs),
        "gain_min": min(gains), "gain_max": max(gains), "gain_median": statistics.median(gains),
        "sampled_gain_min": min(sampled), "sampled_gain_max": max(sampled),
        "cold_greedy_min": min(r["cold_greedy"] for r in runs), "cold_greedy_max": max(r["cold_greedy"] for r in runs),
        "rl_greedy_min": min(r["rl_greedy"] for r in runs), "rl_greedy_max": max(r["rl_greedy"] for r in runs),
        "wall_min": min(r["wall_seconds"] for r in runs), "wall_max": max(r["wall_seconds"] for r in runs),
        "cold_in_band": sum(inside), "gain_ok": sum(g >= MIN_GAIN for g in gains),
        "promise_holds": all(inside) and min(gains) >= MIN_GAIN,
    }  # fmt: skip


def markdown(runs: list[dict], gflops: dict[int, float], seeds: list[int], threads: list[int], quick: bool) -> str:
    s = summary(runs)
    command = f"python -m deepseek_rl.tools.robustness --seeds {' '.join(map(str, seeds))} --threads "
    command += " ".join(map(str, threads)) + " --quick" * quick
    holds = "holds" if s["promise_holds"] else "does NOT hold"
    lines = [
        "# The default demo on every seed and thread count",
        "",
        "Each run is `deepseek-rl train trainer.seed=S` under `OMP_NUM_THREADS=T` (a thread count reorders the",
        "floating-point reductions the way another CPU does). Held-out: 500 problems, greedy and 8 samples at the",
        "rollout temperature (1.0). Regenerate this page:",
        "",
        f"    {command}",
        "",
        *(["**Quick run**: every run shortened to seconds; its numbers say nothing about the method.", ""] * quick),
        "Machine: " + ", ".join(f"{t} thread{'s' * (t > 1)}: fp32 matmul {g:.0f} GFLOP/s" for t, g in gflops.items())
        + f"; Python {sys.version.split()[0]}, torch {torch.__version__}.",
        "",
        f"**The promise {holds}** on {s['runs']} runs: RL adds {s['gain_min']:+.1f} to {s['gain_max']:+.1f} points "
        f"of held-out greedy accuracy (median {s['gain_median']:+.1f}; promise: >= +{MIN_GAIN:.0f} on every run, "
        f"{s['gain_ok']}/{s['runs']} do); cold starts land at {s['cold_greedy_min']:.3f}-{s['cold_greedy_max']:.3f} "
        f"greedy ({s['cold_in_band']}/{s['runs']} inside the band {BAND[0]}-{BAND[1]}); after RL "
        f"{s['rl_greedy_min']:.3f}-{s['rl_greedy_max']:.3f}. Sampled accuracy (RL's own objective) rises "
        f"{s['sampled_gain_min']:+.1f} to {s['sampled_gain_max']:+.1f} points. Wall time "
        f"{s['wall_min']:.0f}-{s['wall_max']:.0f} s per run.",
        "",
        "| seed | threads | cold start stopped at | greedy: cold start | after RL | gain | sampled (T=1): cold start "
        "| after RL | gain | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['seed']} | {r['threads']} | step {r['sft_steps']} | {r['cold_greedy']:.3f} | {r['rl_greedy']:.3f} "
            f"| {r['gain']:+.1f} | {r['cold_sampled']:.3f} | {r['rl_sampled']:.3f} | {r['sampled_gain']:+.1f} "
            f"| {r['wall_seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n" + READING


READING = """
## Reading it

**The stop rule.** The cold start is checked every 5 steps on 200 validation problems (greedy, and one sample at
temperature 1) and stops at the first check where the sampled accuracy reaches 0.15 *and* the greedy accuracy lies
in [0.35, 0.62] (`sft.stop_accuracy`, `sft.stop_greedy_band` in recipes/r1_pipeline.yaml). Near that point the curve
is steep and noisy: from one check to the next (5 steps) the validation greedy accuracy can jump from 0.1 to 0.6 or
fall from 0.8 to 0.35 (`validation/*` in each run's `sft/metrics.jsonl`). A rule on the sampled accuracy alone is
smoother, but where it fires the greedy accuracy can be anywhere from 0.4 to 0.9; on another CPU the same commit
stopped at greedy 0.89 and left RL +10 points. The band turns a check that overshoots into "not yet": training goes
on to the next check inside it (and says so at the end if none came). Held-out figures above are on the 500
evaluation problems, not the validation problems the rule reads, so they can sit a little outside the band.

**Threads.** A thread count reorders floating-point sums. On this machine the cold start came out bit-identical at
1 and 2 threads, while the RL stage did not always (compare the rows of one seed): the grid exercises part of what
another CPU changes, not all of it; the band is what protects the cold start there.

**RL's own objective.** GRPO maximises the reward of samples at temperature 1, i.e. the sampled accuracy. It rises
less than the greedy accuracy in 100 steps: a completion is a ~35-token chain in which every digit and carry must be
sampled right, so a per-token gain that flips the greedy answer raises the chance of a whole correct sample much
less. A learning rate of 6e-5 instead of 3e-5 from seed 1's cold start (`deepseek-rl train --config-name r1_grpo
model.path=runs/robustness/seed-1-threads-1/sft/final trainer.seed=1 algorithm.lr=6e-5`) moved the sampled accuracy
from 0.309 to 0.337 and the greedy from 0.812 to 0.806; more RL steps are what raises it further, outside the demo's
budget of a few minutes.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=Path, help="default: runs/robustness (with --quick: runs/robustness-quick)")
    parser.add_argument("--docs", type=Path, help="default: docs (with --quick: the runs folder)")
    parser.add_argument("--quick", action="store_true", help="every run in seconds: checks the tool, not the method")
    args = parser.parse_args(argv)
    args.runs = args.runs or Path("runs/robustness" + "-quick" * args.quick)
    args.docs = args.docs or (args.runs if args.quick else Path("docs"))
    extra = [*QUICK, "stages=[sft,grpo,eval]"] if args.quick else []
    runs = []
    for seed in args.seeds:
        for threads in args.threads:
            run = run_one(seed, threads, args.runs / f"seed-{seed}-threads-{threads}", extra)
            print(f"seed {seed}, {threads} threads: cold start {run['cold_greedy']:.3f} -> {run['rl_greedy']:.3f} "
                  f"({run['gain']:+.1f} points) in {run['wall_seconds']:.0f} s", flush=True)  # fmt: skip
            runs.append(run)
    gflops = speeds(args.threads)
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "robustness.md").write_text(markdown(runs, gflops, args.seeds, args.threads, args.quick))
    data = {"runs": runs, "summary": summary(runs), "matmul_gflops": gflops, "band": BAND, "min_gain": MIN_GAIN}
    (args.docs / "robustness.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.docs / 'robustness.md'} and {args.docs / 'robustness.json'}")


if __name__ == "__main__":
    main()
