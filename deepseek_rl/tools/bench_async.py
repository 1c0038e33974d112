"""Synchronous against asynchronous GRPO (rollout.max_staleness = 1 and 2), side by side in one invocation.

    python -m deepseek_rl.tools.bench_async [--workload demo|large|all] [--steps N] [--json PATH] [--quick]

demo   the default demo's RL stage (3-digit addition, the 1M-parameter model), from one cold start (SFT) made first
       and shared by every arm; held-out greedy accuracy every `--eval-every` steps
large  the TRL benchmark's 43M-parameter Qwen2 (151k-token R1 vocabulary, GSM8K prompts, 256-token completions;
       bench_workers.py) from its random weights: speed only (its reward has nothing to learn)

On this machine's cores: the synchronous run's one process gets a thread per core; an asynchronous run's trainer
too, and its rollout worker one fewer (2 and 1 on 2 cores), with OpenMP's passive wait so that the threads of the
side that waits sleep instead of spinning (measured each arm's best: passive makes the synchronous run 35% slower,
the asynchronous one 18% faster than one thread each). One more arm, the synchronous run on one thread, measures
the ceiling: what a step costs in core-seconds at its most efficient, so the most steps per hour any schedule of
the two sides can reach on these cores (`ceiling` below): asynchrony overlaps the sides, it does not add cores.
Per arm: steps per hour (median step), the share of time each side waits (the trainer for rollouts and weight
syncs, `time/wait_rollout` + `time/weight_sync`; the worker for weights, `rollout/worker_wait`), the held-out greedy
accuracy at equal steps (the last evaluation) and at equal wall time (each arm's last evaluation before the
synchronous run's training time ran out). `--json` writes {workload: {arm: {...}}, "speedup": {workload: async k=1
steps per hour / synchronous}, "ceiling": {workload: cores x one-thread steps per hour / synchronous}};
docs/async.md has the table, the plot (`--png`) and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# arm -> (rollout.max_staleness, on one thread)
ARMS = {"sync": (0, False), "sync 1 thread": (0, True), "async k=1": (1, False), "async k=2": (2, False)}


def ceiling(sync_steps_per_hour: float, one_thread_steps_per_hour: float, cores: int) -> float:
    """The most any overlap of the two sides can gain on `cores` shared cores over the synchronous run given all of
    them: a step's work costs the fewest core-seconds on one thread (1 / one_thread_steps_per_hour), and the cores
    give `cores` core-seconds per second, so no schedule runs more than cores * one_thread_steps_per_hour steps an
    hour. A step that speeds up n-fold on n threads leaves asynchrony nothing to gain on shared cores; one that
    does not (generation at small batch) leaves room."""
    return cores * one_thread_steps_per_hour / sync_steps_per_hour


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train(args: list[str], cwd: Path, threads: int, worker_threads: int | None = None) -> Path:
    """One run of the CLI; returns its run directory (raises with its stderr when it fails)."""
    run = cwd / "run"
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    if worker_threads is not None:  # two processes share the cores: OpenMP threads sleep instead of spinning
        env["DEEPSEEK_RL_WORKER_THREADS"] = str(worker_threads)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *args, "logger=none", f"trainer.output_dir={run}"]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit {done.returncode}:\n{done.stderr[-4000:]}")
    return run


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summarise(lines: list[dict], time_limit: float | None) -> dict:
    """Steps per hour, the sides' waiting shares, the held-out accuracy at the last evaluation and at `time_limit`
    seconds of training."""
    steps = [m for m in lines if "time/step" in m]
    median = statistics.median(m["time/step"] for m in steps[1:] or steps)
    trainer_wait = sum(m.get("time/wait_rollout", 0.0) + m.get("time/weight_sync", 0.0) for m in steps)
    worker_wait = sum(m.get("rollout/worker_wait", 0.0) for m in steps)
    total = sum(m["time/step"] for m in steps)
    evals = [m for m in lines if "eval/greedy_accuracy" in m]
    out = {
        "steps": len(steps),
        "median_step_s": median,
        "steps_per_hour": 3600 / median,
        "train_seconds": steps[-1]["train/seconds"],
        "trainer_waits": trainer_wait / total,
        "worker_waits": worker_wait / total if any("rollout/worker_wait" in m for m in steps) else None,
    }
    if evals:
        out["greedy_accuracy"] = evals[-1]["eval/greedy_accuracy"]
        out["greedy_curve"] = [(m["step"], m.get("train/seconds", 0.0), m["eval/greedy_accuracy"]) for m in evals]
        if time_limit is not None:
            within = [acc for _, seconds, acc in out["greedy_curve"] if seconds <= time_limit + 1e-9]
            out["greedy_accuracy_at_sync_time"] = within[-1] if within else None
    return out


def run_workload(name: str, steps: int, eval_every: int, quick: bool, work: Path) -> dict[str, dict]:
    """Every arm of one workload; returns arm -> summary."""
    n = cores()
    if name == "demo":
        cold = ["--config-name", "default", "stages=[sft]", "trainer.save_final=true"]
        cold += ["sft.max_steps=30", "sft.eval_every=0", "data.num_digits=2"] if quick else []
        start = train(cold, work / "cold", n) / "final"
        base = ["--config-name", "r1_grpo", f"model.path={start}", "stages=[grpo]", f"trainer.max_steps={steps}",
                f"eval.every={eval_every}"]  # fmt: skip
        base += ["data.num_digits=2", "eval.every_prompts=50"] if quick else []
    else:
        from deepseek_rl.tools.bench_workers import WORKLOADS, prepare_workload

        spec = WORKLOADS["large"]
        model = prepare_workload("large", work / "large_model")
        base = ["--config-name", "smoke", f"model.path={model}", "model.tokenizer=null", "data.task=null",
                f"data.path={model / 'prompts.jsonl'}", "reward.weights={repetition: 1.0}",
                f"rollout.max_prompt_length={spec.max_prompt_length}",
                f"rollout.max_completion_length={16 if quick else spec.max_completion_length}",
                f"algorithm.num_generations={spec.num_generations}",
                f"trainer.batch_size={spec.prompts_per_step * spec.num_generations}",
                f"trainer.micro_batch_size={spec.prompts_per_step * spec.num_generations}",
                "algorithm.kl_coef=0", f"algorithm.lr={spec.lr}", f"trainer.max_steps={steps}",
                "eval.every=0"]  # fmt: skip
    results: dict[str, dict] = {}
    sync_seconds = None
    for arm, (k, one_thread) in ARMS.items():
        extra = [f"rollout.max_staleness={k}"] + (["algorithm.tis_cap=2.0"] if k else [])
        threads = 1 if one_thread else n
        run = train(
            [*base, *extra],
            work / f"{name}-{arm.replace(' ', '-').replace('=', '')}",
            threads,
            max(1, n - 1) if k else None,
        )
        lines = metrics(run)
        results[arm] = summarise(lines, sync_seconds)
        if arm == "sync":
            sync_seconds = results[arm]["train_seconds"]
            results[arm] = summarise(lines, sync_seconds)
        print(f"bench_async: {name} {arm}: {results[arm]['steps_per_hour']:.0f} steps/hour", file=sys.stderr)
    return results


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| workload | arm | steps/hour | x sync | trainer waits | worker waits | greedy acc. (equal steps) | "
             "greedy acc. (sync's wall time) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, arms in results.items():
        sync = arms["sync"]["steps_per_hour"]
        for arm, r in arms.items():
            waits = "-" if r["worker_waits"] is None else f"{r['worker_waits']:.0%}"
            acc = r.get("greedy_accuracy")
            at_time = r.get("greedy_accuracy_at_sync_time")
            lines.append(
                f"| {name} | {arm} | {r['steps_per_hour']:.0f} | {r['steps_per_hour'] / sync:.2f}x | "
                f"{r['trainer_waits']:.0%} | {waits} | {'-' if acc is None else f'{acc:.3f}'} | "
                f"{'-' if at_time is None else f'{at_time:.3f}'} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    demo = results.get("demo")
    fig, axes = plt.subplots(1, 2 if demo else 1, figsize=(10 if demo else 5, 3.5), squeeze=False)
    names = list(results)
    for i, arm in enumerate(ARMS):
        axes[0][0].bar([j + 0.2 * i for j in range(len(names))], [results[n][arm]["steps_per_hour"] for n in names],
                       width=0.2, label=arm)  # fmt: skip
    axes[0][0].set_xticks([j + 0.3 for j in range(len(names))], names)
    axes[0][0].set_ylabel("steps per hour")
    axes[0][0].legend()
    if demo:
        for arm, r in demo.items():
            curve = r.get("greedy_curve") or []
            axes[0][1].plot([s for _, s, _ in curve], [a for _, _, a in curve], marker="o", label=arm)
        axes[0][1].set_xlabel("training seconds")
        axes[0][1].set_ylabel("held-out greedy accuracy")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("demo", "large", "all"), default="all")
    parser.add_argument("--steps", type=int, help="GRPO steps per arm (default: demo 60, large 8)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="seconds per arm on the same code path (for tests)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    names = ["demo", "large"] if args.workload == "all" else [args.workload]
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_async_") as tmp:
        for name in names:
            steps = args.steps or (4 if args.quick else {"demo": 60, "large": 8}[name])
            eval_every = 4 if args.quick else args.eval_every
            results[name] = run_workload(name, steps, eval_every, args.quick, Path(tmp))
    speedup = {n: r["async k=1"]["steps_per_hour"] / r["sync"]["steps_per_hour"] for n, r in results.items()}
    bound = {n: ceiling(r["sync"]["steps_per_hour"], r["sync 1 thread"]["steps_per_hour"], cores())
             for n, r in results.items()}  # fmt: skip
    report = {**results, "speedup": speedup, "ceiling": bound, "cores": cores()}
    print(table(results))
    print(
        f"speed-up at max_staleness=1: {', '.join(f'{n} {s:.2f}x' for n, s in speedup.items())} on {cores()} cores; "
        f"the most any overlap can give on these cores: {', '.join(f'{n} {c:.2f}x' for n, c in bound.items())}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.png:
        plot(results, args.png)
    return report


if __name__ == "__main__":
    main()
