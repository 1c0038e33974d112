"""The reference run of the miniature R1 pipeline: `deepseek-rl train` for several seeds, summarised for docs/.

    python -m deepseek_rl.tools.reference_run --seeds 0 1 2 --runs runs/reference --docs docs

Runs the default recipe once per seed (trainer.seed=S, wandb off), then rejection-sampling fine-tuning (the
`r1_rft` recipe) from the first seed's RL policy, and writes `<docs>/reference_run.md` (the commands, wall times,
the before/after table per seed and what RFT adds after RL) and `<docs>/reference_run.png` (reward, held-out greedy
accuracy and completion length over GRPO steps, one line per seed). With --no-run it only summarises existing runs;
--no-rft skips the RFT stage.
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

from deepseek_rl.infra.plots import plot_training_curves
from deepseek_rl.stages.pipeline import LABELS

METRICS = ("eval/greedy_accuracy", "eval/sampled_accuracy", "eval/pass@8", "eval/maj@8", "eval/format_rate")


def run_seed(seed: int, run_dir: Path, overrides: list[str], recipe: tuple[str, ...] = ()) -> float:
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *recipe, "logger=none", f"trainer.seed={seed}"]
    cmd += [f"trainer.output_dir={run_dir}", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    (run_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def summary_markdown(runs: dict[int, Path], overrides: list[str]) -> str:
    extra = (" " + " ".join(overrides)) if overrides else ""
    lines = [
        "# Reference run: the R1 pipeline in miniature",
        "",
        "Command for one seed (the default recipe `recipes/r1_pipeline.yaml`):",
        "",
        f"    deepseek-rl train trainer.seed=S{extra}",
        "",
        "Regenerate this page and its plot (all seeds, about 3 minutes each on 2 CPU cores):",
        "",
        "    python -m deepseek_rl.tools.reference_run --seeds " + " ".join(str(s) for s in runs),
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        "",
        "| seed | wall time | SFT steps | metric | cold start (SFT) | after RL (GRPO) | change |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, run in runs.items():
        results = json.loads((run / "results.json").read_text())
        before, after = results["sft"], results["grpo"]
        wall = (run / "wall_seconds.txt").read_text().strip() if (run / "wall_seconds.txt").exists() else "?"
        sft_steps = max(json.loads(line)["step"] for line in (run / "sft" / "metrics.jsonl").read_text().splitlines())
        for i, metric in enumerate(METRICS):
            lead = f"| {seed} | {wall} s | {sft_steps} " if i == 0 else "| | | "
            name, change = metric.removeprefix("eval/"), 100 * (after[metric] - before[metric])
            lines.append(f"{lead}| {name} | {before[metric]:.3f} | {after[metric]:.3f} | {change:+.1f} pts |")
    lines += ["", "![reward, held-out accuracy and completion length per GRPO step](reference_run.png)", ""]
    lines += [f"Columns: {LABELS['sft']} is the checkpoint RL starts from; {LABELS['grpo']} is the final policy."]
    return "\n".join(lines) + "\n"


def rft_markdown(seed: int, run: Path) -> str:
    """What rejection-sampling fine-tuning adds after RL: the RL policy against the RFT policy, same evaluation."""
    rft_dir = run / "rft-after-rl"
    results = json.loads((rft_dir / "results.json").read_text())
    before, after = results["base"], results["rft"]
    stats = json.loads((rft_dir / "rft" / "metrics.jsonl").read_text().splitlines()[0])
    wall = (rft_dir / "wall_seconds.txt").read_text().strip()
    lines = [
        "",
        "## Rejection-sampling fine-tuning after RL (R1's stage 3)",
        "",
        f"From seed {seed}'s RL policy (recipe `recipes/r1_rft.yaml`: 8 samples for each of 2000 train problems, keep",
        "those that are correct and well formatted, at most 2 distinct per problem, fine-tune on them):",
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
    parser.add_argument("--runs", type=Path, default=Path("runs/reference"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--no-run", action="store_true", help="only summarise runs that exist")
    parser.add_argument("--no-rft", action="store_true", help="skip rejection-sampling fine-tuning after RL")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every seed")
    args = parser.parse_args(argv)
    runs = {seed: args.runs / f"seed-{seed}" for seed in args.seeds}
    if not args.no_run:
        for seed, run in runs.items():
            print(f"seed {seed}: {run_seed(seed, run, args.overrides):.0f} s", flush=True)
    rft_seed, rft_run = next(iter(runs.items()))
    if not args.no_run and not args.no_rft:
        recipe = ("--config-name", "r1_rft", f"model.path={rft_run / 'grpo' / 'final'}")
        print(f"rft: {run_seed(rft_seed, rft_run / 'rft-after-rl', args.overrides, recipe):.0f} s", flush=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    plot_training_curves(
        {f"seed {s}": r / "grpo" / "metrics.jsonl" for s, r in runs.items()}, args.docs / "reference_run.png"
    )
    page = summary_markdown(runs, args.overrides)
    if (rft_run / "rft-after-rl" / "results.json").exists():
        page += rft_markdown(rft_seed, rft_run)
    (args.docs / "reference_run.md").write_text(page)
    print(f"wrote {args.docs / 'reference_run.md'} and {args.docs / 'reference_run.png'}")


if __name__ == "__main__":
    main()
