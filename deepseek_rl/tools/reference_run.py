"""The reference run: the miniature R1 pipeline with its control, on two tasks and several seeds, summarised for docs/.

    python -m deepseek_rl.tools.reference_run --seeds 0 1 2 --runs runs/reference --docs docs

For each task and seed it runs `stages=[sft, grpo, control, eval]` (wandb off): the cold start, RL from it, and the
control (SFT continued from the same cold start with RL's training time, and separately its trained tokens), all
evaluated the same way. The tasks:

    addition     the default demo (`recipes/r1_pipeline.yaml`): worked solutions that are all correct
    unreliable   `recipes/r1_unreliable_teacher.yaml`: 7 in 10 demonstrations drop a carry, so imitation learns the
                 teacher's mistake while the reward checks the true sum

Then rejection-sampling fine-tuning (`r1_rft`) from the first seed's RL policy on the default task (--no-rft skips
it). Writes `<docs>/reference_run.md` (commands, machine, wall times, RL against the controls for every seed, what
RFT adds, and in plain words where RL beats the control and where it does not) and `<docs>/reference_run.png` (one
row of curves per task, one colour per seed). --no-run only summarises existing runs. --quick shortens every run to
seconds (1-digit addition, 40 SFT and 2 GRPO steps, 8 held-out problems; RFT keeps well-formatted samples) on the
same code path, into runs/reference-quick (runs, page and plot; docs/ untouched unless --docs names it): a check
that the tool works, whose numbers say nothing about the method.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from deepseek_rl.infra.plots import Curves, plot_grid
from deepseek_rl.stages.pipeline import LABELS

METRICS = ("eval/greedy_accuracy", "eval/sampled_accuracy", "eval/pass@8", "eval/maj@8", "eval/format_rate")
CONTROLS = ("control_time", "control_tokens")
# task -> (title, recipe arguments); every task runs the control
TASKS = {
    "addition": ("addition, correct demonstrations (the default demo)", ["stages=[sft,grpo,control,eval]"]),
    "unreliable": ("addition, an unreliable teacher", ["--config-name", "r1_unreliable_teacher"]),
}
COMMON = ["algorithm.log_kl=true"]  # the KL panel: KL to the cold start as a metric, no penalty
TARGET = 15.0  # points of held-out greedy accuracy by which RL should beat the control on the unreliable task
# --quick: every run in seconds; eval.samples stays 8 (the page's pass@8 and maj@8)
QUICK = [
    "data.num_digits=1", "data.num_train=60", "data.num_validation=16", "data.num_eval=16", "sft.max_steps=40",
    "sft.warmup_steps=5", "sft.batch_size=32", "sft.eval_every=20", "sft.num_validation=16", "trainer.max_steps=2",
    "trainer.batch_size=32", "trainer.micro_batch_size=32", "eval.every=1", "eval.every_prompts=8",
    "eval.num_prompts=8", "eval.batch_size=64", "control.evaluations=1",
]  # fmt: skip
# a policy after 40 SFT steps is rarely right but mostly well formatted: RFT keeps what the format check passes
QUICK_RFT = ["rft.num_prompts=16", "rft.samples=4", "rft.max_steps=2", "rft.batch_size=16", "rft.verifiers=[format]"]


def run_seed(seed: int, run_dir: Path, args: list[str]) -> float:
    """`deepseek-rl train ARGS` (a --config-name first, if any) for one seed; returns and records its wall time."""
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *args, "logger=none", f"trainer.seed={seed}"]
    cmd += [f"trainer.output_dir={run_dir}", "trainer.overwrite=true"]  # a rerun starts that run over
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    (run_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def read(path: Path, default: str = "?") -> str:
    return path.read_text().strip() if path.exists() else default


def rl_seconds(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "grpo" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max((m["train/seconds"] for m in lines if "train/seconds" in m), default=float("nan"))


def gaps(runs: dict[int, Path], metric: str = "eval/greedy_accuracy") -> dict[int, float]:
    """RL minus the better control, in points, per seed."""
    out = {}
    for seed, run in runs.items():
        results = json.loads((run / "results.json").read_text())
        best = max(results[c][metric] for c in CONTROLS if c in results)
        out[seed] = 100 * (results["grpo"][metric] - best)
    return out


def verdict(title: str, runs: dict[int, Path]) -> str:
    """The plain-words conclusion for one task, from its numbers."""
    greedy, sampled = gaps(runs), gaps(runs, "eval/sampled_accuracy")
    low, high = min(greedy.values()), max(greedy.values())
    span = f"{low:+.1f} to {high:+.1f} points of held-out greedy accuracy"
    if low >= TARGET:
        line = f"**{title}: RL beats more SFT on every seed**, by {span}"
    elif low > 0:
        line = f"**{title}: RL is ahead of more SFT on every seed, by less than {TARGET:g} points on some** ({span})"
    else:
        behind = ", ".join(str(s) for s, g in greedy.items() if g <= 0)
        line = (
            f"**{title}: more SFT does as well as RL or better** on seed(s) {behind} "
            f"(RL minus the better control: {span})"
        )
    lo, hi = min(sampled.values()), max(sampled.values())
    side = "ahead" if lo > 0 else ("behind" if hi < 0 else "mixed")
    return f"{line}; on sampled accuracy (temperature 1) RL is {side} ({lo:+.1f} to {hi:+.1f} points)."


def task_markdown(task: str, runs: dict[int, Path]) -> list[str]:
    title, args = TASKS[task]
    labels = [LABELS["sft"], LABELS["grpo"], *(LABELS[c] for c in CONTROLS)]
    lines = [
        f"## {title}",
        "",
        f"    deepseek-rl train {' '.join([*args, *COMMON])} trainer.seed=S",
        "",
        "| seed | wall time | RL training | metric | " + " | ".join(labels) + " | RL - better control |",
        "|---|---|---|---|" + "---|" * len(labels) + "---|",
    ]
    for seed, run in runs.items():
        results = json.loads((run / "results.json").read_text())
        for i, metric in enumerate(METRICS):
            lead = f"| {seed} | {read(run / 'wall_seconds.txt')} s | {rl_seconds(run):.0f} s " if i == 0 else "| | | "
            values = [results[name][metric] for name in ("sft", "grpo", *CONTROLS)]
            gap = 100 * (values[1] - max(values[2:]))
            cells = " | ".join(f"{v:.3f}" for v in values)
            lines.append(f"{lead}| {metric.removeprefix('eval/')} | {cells} | {gap:+.1f} pts |")
    return lines + ["", verdict(title, runs), ""]


def summary_markdown(tasks: dict[str, dict[int, Path]], quick: bool = False) -> str:
    seeds = sorted({seed for runs in tasks.values() for seed in runs})
    walls = {t: sum(float(read(r / "wall_seconds.txt", "nan")) for r in runs.values()) for t, runs in tasks.items()}
    note = ["**Quick run** (`--quick`): every run shortened to seconds; its numbers say nothing about the method.", ""]
    note = note if quick else []
    lines = [
        "# Reference run: the R1 pipeline in miniature, and the control that tells RL from more imitation",
        "",
        "Every run: cold-start SFT (stopped early), GRPO from it, and the control: SFT continued from the same cold",
        "start on the same demonstrations, once for as long as RL trained (training seconds of the steps, evaluations",
        "excluded on both sides) and once for as many trained tokens; then all four checkpoints evaluated the same way",
        "on the same held-out problems (greedy, and 8 samples at temperature 1; 500 problems for the default task,",
        "300 for the unreliable teacher). RL's reward checks the answer against the true sum; SFT imitates the",
        "demonstrations.",
        "",
        "Regenerate this page and its plot:",
        "",
        "    python -m deepseek_rl.tools.reference_run --seeds " + " ".join(map(str, seeds)) + " --quick" * quick,
        "",
        *note,
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}. Wall time of all seeds: "
        + ", ".join(f"{TASKS[t][0].split(' (')[0]} {w / 60:.1f} min" for t, w in walls.items())
        + ".",
        "",
        "## In short",
        "",
        *[f"- {verdict(TASKS[t][0], runs)}" for t, runs in tasks.items()],
        "",
        "![curves](reference_run.png)",
        "",
        "Curves (one row per task, one colour per seed): reward per step (9-step mean, raw faint); held-out greedy",
        "accuracy against training seconds for RL (solid) and the controls (dashed: same time, dotted: same tokens);",
        "KL to the cold start; entropy; completion length.",
        "",
    ]
    for task, runs in tasks.items():
        lines += task_markdown(task, runs)
    return "\n".join(lines) + "\n"


def rft_markdown(seed: int, run: Path) -> str:
    """What rejection-sampling fine-tuning adds after RL: the RL policy against the RFT policy, same evaluation."""
    rft_dir = run / "rft-after-rl"
    results = json.loads((rft_dir / "results.json").read_text())
    before, after = results["base"], results["rft"]
    stats = json.loads((rft_dir / "rft" / "metrics.jsonl").read_text().splitlines()[0])
    wall = read(rft_dir / "wall_seconds.txt")
    lines = [
        "",
        "## Rejection-sampling fine-tuning after RL (R1's stage 3)",
        "",
        f"From seed {seed}'s RL policy on the default task (recipe `recipes/r1_rft.yaml`: 8 samples for each of 2000",
        "train problems, keep those that are correct and well formatted, at most 2 distinct per problem, fine-tune):",
        "",
        f"    deepseek-rl train --config-name r1_rft model.path=RUN/grpo/final   # RUN: seed {seed}'s run directory",
        "",
        f"Kept {stats['rft/kept']:.0f} of {stats['rft/sampled']:.0f} sampled completions; wall time {wall} s.",
        "",
        f"| metric | {LABELS['grpo']} | {LABELS['rft']} | change |",
        "|---|---|---|---|",
    ]
    for metric in METRICS:
        change = 100 * (after[metric] - before[metric])
        name = metric.removeprefix("eval/")
        lines.append(f"| {name} | {before[metric]:.3f} | {after[metric]:.3f} | {change:+.1f} pts |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--runs", type=Path, help="default: runs/reference (with --quick: runs/reference-quick)")
    parser.add_argument("--docs", type=Path, help="page and plot; default: docs (with --quick: the runs folder)")
    parser.add_argument("--no-run", action="store_true", help="only summarise runs that exist")
    parser.add_argument("--no-rft", action="store_true", help="skip rejection-sampling fine-tuning after RL")
    parser.add_argument("--quick", action="store_true", help="every run in seconds: checks the tool, not the method")
    args = parser.parse_args(argv)
    args.runs = args.runs or Path("runs/reference" + "-quick" * args.quick)  # quick runs never mix with real ones
    args.docs = args.docs or (args.runs if args.quick else Path("docs"))
    quick = QUICK if args.quick else []
    tasks = {t: {s: args.runs / t / f"seed-{s}" for s in args.seeds} for t in args.tasks}
    for task, runs in tasks.items():
        for seed, run in runs.items():
            if not args.no_run:
                seconds = run_seed(seed, run, [*TASKS[task][1], *COMMON, *quick])
                print(f"{task} seed {seed}: {seconds:.0f} s", flush=True)
    first = next(iter(tasks.get("addition", {}).items()), None)
    if first is not None and not args.no_run and not args.no_rft:
        seed, run = first
        recipe = ["--config-name", "r1_rft", f"model.path={run / 'grpo' / 'final'}"]
        recipe += [*quick, *QUICK_RFT] if args.quick else []
        print(f"rft: {run_seed(seed, run / 'rft-after-rl', recipe):.0f} s", flush=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    rows = {
        TASKS[t][0].split(" (")[0].removeprefix("addition, "): [
            Curves(f"seed {s}", r / "grpo" / "metrics.jsonl", {LABELS[c]: r / c / "metrics.jsonl" for c in CONTROLS})
            for s, r in runs.items()
        ]
        for t, runs in tasks.items()
    }
    plot_grid(rows, args.docs / "reference_run.png")
    page = summary_markdown(tasks, args.quick)
    if first is not None and (first[1] / "rft-after-rl" / "results.json").exists():
        page += rft_markdown(*first)
    (args.docs / "reference_run.md").write_text(page)
    print(f"wrote {args.docs / 'reference_run.md'} and {args.docs / 'reference_run.png'}")


if __name__ == "__main__":
    main()
