"""The tool demo on several seeds, with and without the tool, summarised in docs/tools.md's figures section.

    python -m deepseek_rl.tools.tool_demo --seeds 0 1 2 --runs runs/tool_demo --docs docs

For each seed: `deepseek-rl train --config-name tool_demo trainer.seed=S` (the cold start on demonstrations of
which a quarter call the Python tool, then GRPO with multi-turn tool rollouts, then held-out evaluation) and, from
that run's cold-start checkpoint, the same GRPO and evaluation with `rollout.tools.enabled=false` (the model may still
write code, but nothing runs it): both arms start from the same model. Runs whose results exist are kept. Writes
`<docs>/tool_demo.md` (a table per seed: held-out accuracy and tool use before and after RL, with and without the
tool, wall times) and `<docs>/tool_demo.png` (held-out greedy accuracy and tool use over GRPO steps, and the share
of training rollouts that call the tool). --quick shortens every run to seconds (4 SFT and 2 GRPO steps, 8 held-out
problems) on the same code path, into runs/tool_demo-quick (runs, page and plot; docs/ untouched unless --docs names
it): a check that the tool works, whose numbers say nothing about the method.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deepseek_rl.infra.plots import moving_average, read_metrics, series  # noqa: E402

VARIANTS = {"tool": [], "no tool": ["stages=[grpo,eval]", "rollout.tools.enabled=false", "model.tokenizer=null"]}
METRICS = ("eval/greedy_accuracy", "eval/sampled_accuracy", "eval/pass@4", "eval/greedy_tool_use", "eval/tool_use")
# --quick: every run in seconds; eval.samples stays 4 (the table's pass@4)
QUICK = [
    "data.num_train=200", "data.num_validation=8", "data.num_eval=16", "sft.max_steps=4", "sft.eval_every=2",
    "sft.num_validation=8", "trainer.max_steps=2", "trainer.batch_size=16", "trainer.micro_batch_size=8",
    "eval.every=1", "eval.every_prompts=8", "eval.num_prompts=8", "eval.batch_size=32",
]  # fmt: skip


def run(seed: int, run_dir: Path, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", "--config-name", "tool_demo", "logger=none"]
    cmd += [f"trainer.seed={seed}", f"trainer.output_dir={run_dir}", "trainer.overwrite=true", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    (run_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def table(runs: dict[int, dict[str, Path]]) -> list[str]:
    lines = [
        "| seed | variant | wall time | metric | cold start (SFT) | after RL (GRPO) |",
        "|---|---|---|---|---|---|",
    ]
    for seed, variants in runs.items():
        for variant, run_dir in variants.items():
            results = json.loads((run_dir / "results.json").read_text())
            wall = (
                (run_dir / "wall_seconds.txt").read_text().strip() if (run_dir / "wall_seconds.txt").exists() else "?"
            )
            start = results.get("sft", results.get("base"))  # the no-tool arm evaluates the same cold start as "base"
            for i, metric in enumerate(m for m in METRICS if m in results["grpo"]):
                lead = f"| {seed} | {variant} | {wall} s " if i == 0 else "| | | "
                name = metric.removeprefix("eval/")
                lines.append(f"{lead}| {name} | {start[metric]:.3f} | {results['grpo'][metric]:.3f} |")
    return lines


def plot(runs: dict[int, dict[str, Path]], png: Path) -> None:
    figure, (accuracy, use, sampled) = plt.subplots(1, 3, figsize=(15, 3.8))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (seed, variants) in enumerate(runs.items()):
        for variant, run_dir in variants.items():
            lines = read_metrics(run_dir / "grpo" / "metrics.jsonl")
            style, label = ("-" if variant == "tool" else "--"), f"seed {seed}, {variant}"
            for ax, key in ((accuracy, "eval/greedy_accuracy"), (use, "eval/greedy_tool_use")):
                steps, values = series(lines, key)
                if steps:
                    ax.plot(steps, values, style, color=palette[i], marker="o", markersize=3, label=label)
            steps, values = series(lines, "tools/used_share")
            if steps:
                sampled.plot(steps, moving_average(values), style, color=palette[i], label=label)
    titles = (
        (accuracy, "held-out greedy accuracy"),
        (use, "held-out greedy completions that call the tool"),
        (sampled, "rollouts that call the tool (training, 9-step mean)"),
    )
    for ax, title in titles:
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("GRPO step", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    accuracy.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def failures(run_dir: Path) -> str:
    """Where the tool arm's greedy answers after RL are still wrong: how many, how many of those had the right
    product in the tool's output (a miscopy), and the digit counts of the products they missed."""
    rows = [json.loads(line) for line in (run_dir / "eval" / "samples-grpo.jsonl").open()]
    wrong = [r for r in rows if r["kind"] == "greedy" and not r["correct"]]
    greedy = sum(r["kind"] == "greedy" for r in rows)
    miscopied, digits = 0, {}
    for r in wrong:
        a, b = map(int, re.findall(r"\d+", r["prompt"])[:2])
        printed = re.search(r"```output\n(\S+)", r["completion"])
        miscopied += bool(printed) and printed.group(1) == str(a * b)
        digits[len(str(a * b))] = digits.get(len(str(a * b)), 0) + 1
    shares = ", ".join(f"{n} with {d} digits" for d, n in sorted(digits.items()))
    return f"{len(wrong)} of {greedy} wrong, {miscopied} of them with the right product in the tool's output ({shares})"


def page(runs: dict[int, dict[str, Path]], quick: bool = False) -> str:
    seeds = " ".join(map(str, runs))
    note = ["**Quick run** (`--quick`): every run shortened to seconds; its numbers say nothing about the method.", ""]
    note = note if quick else []
    gains = []
    for variants in runs.values():
        results = {v: json.loads((d / "results.json").read_text()) for v, d in variants.items()}
        gains.append(
            results["tool"]["grpo"]["eval/greedy_accuracy"] - results["no tool"]["grpo"]["eval/greedy_accuracy"]
        )
    return "\n".join(
        [
            "# Tool demo: measured",
            "",
            f"    python -m deepseek_rl.tools.tool_demo --seeds {seeds}" + " --quick" * quick,
            "",
            *note,
            f"Machine: {platform.machine()}, Python {platform.python_version()}. Held-out: 200 problems (greedy, and 4",
            "samples at temperature 1), the same for both variants. With the tool minus without it, held-out greedy",
            f"accuracy after RL: {', '.join(f'{100 * g:+.1f}' for g in gains)} points.",
            "",
            *table(runs),
            "",
            "![held-out accuracy and tool use](tool_demo.png)",
            "",
            "Where the tool variant is still wrong after RL (greedy): "
            + "; ".join(f"seed {seed}: {failures(variants['tool'])}" for seed, variants in runs.items())
            + " (a miss with the right product in the tool's output is an error in copying it, not in computing).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, help="default: runs/tool_demo (with --quick: runs/tool_demo-quick)")
    parser.add_argument("--docs", type=Path, help="page and plot; default: docs (with --quick: the runs folder)")
    parser.add_argument("--no-run", action="store_true", help="only summarise runs that exist")
    parser.add_argument("--quick", action="store_true", help="every run in seconds: checks the tool, not the method")
    args = parser.parse_args(argv)
    args.runs = args.runs or Path("runs/tool_demo" + "-quick" * args.quick)  # quick runs never mix with real ones
    args.docs = args.docs or (args.runs if args.quick else Path("docs"))
    quick = QUICK if args.quick else []
    runs = {s: {v: args.runs / f"seed-{s}" / v.replace(" ", "_") for v in VARIANTS} for s in args.seeds}
    if not args.no_run:
        for seed, variants in runs.items():
            for variant, run_dir in variants.items():
                if (run_dir / "results.json").exists():
                    continue
                extra = [f"model.path={variants['tool'] / 'sft' / 'final'}"] if variant == "no tool" else []
                seconds = run(seed, run_dir, [*VARIANTS[variant], *extra, *quick])
                print(f"seed {seed}, {variant}: {seconds:.0f} s", flush=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    plot(runs, args.docs / "tool_demo.png")
    (args.docs / "tool_demo.md").write_text(page(runs, args.quick))
    print(f"wrote {args.docs / 'tool_demo.md'} and {args.docs / 'tool_demo.png'}")


if __name__ == "__main__":
    main()
