"""Per-step time of one recipe on 1 process, DDP x2, ZeRO-2 x2 and ZeRO-3 x2 (same global batch), in one run.

    python -m deepseek_rl.tools.bench_distributed [--steps 12] [--recipe smoke] [--backends "1 process,DDP x2"]
        [--json results.json] [key=value ...]

Each backend runs the recipe through `accelerate launch` with the configs in launch/; the table shows the median
step time (first two steps skipped as warm-up), its split into generation / reward / log-probs / update, and the
ratio to the first backend listed (the single process by default). On CPU the processes share the machine's cores
(OMP_NUM_THREADS=1 each). A backend that fails stops the benchmark with its command and the tail of its stderr.
`--json` writes {backend: {"time/step", "time/generation", ..., "ratio"}}.
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

from deepseek_rl.paths import launch_dir

BACKENDS = {
    "1 process": None,
    "DDP x2": "cpu_ddp.yaml",
    "ZeRO-2 x2": "zero2.yaml",
    "ZeRO-3 x2": "zero3.yaml",
}
PHASES = ("time/generation", "time/reward", "time/logprobs", "time/update")
WARMUP = 2  # steps skipped before the medians


class BackendFailed(RuntimeError):
    pass


def run_backend(config: str | None, recipe: str, overrides: list[str], output_dir: Path) -> list[dict]:
    train = ["-m", "deepseek_rl.train", "--config-name", recipe, "logger=none", "trainer.save_final=false"]
    train += [*overrides, f"trainer.output_dir={output_dir}"]
    if config is None:
        cmd = [sys.executable, *train]
    else:
        from deepseek_rl.stages.async_rollouts import free_port

        # a free rendezvous port, not torch's 29500: another job on this machine (a test beside it) may hold that one
        launch = ["--config_file", str(launch_dir() / config), "--num_processes", "2"]
        launch += ["--main_process_port", str(free_port())]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise BackendFailed(f"{' '.join(cmd)} failed with exit {done.returncode}:\n{done.stderr[-4000:]}")
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--recipe", default="smoke")
    choices = ", ".join(BACKENDS)
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of: {choices}")
    parser.add_argument("--json", type=Path, help="also write the medians as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the recipe")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.backends.split(",")]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(map(repr, unknown))}; choose from {choices}")
    if args.steps <= WARMUP:
        parser.error(f"--steps={args.steps}: give more than the {WARMUP} warm-up steps")
    overrides = [f"trainer.max_steps={args.steps}", *args.overrides]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                lines = run_backend(BACKENDS[name], args.recipe, overrides, Path(tmp) / name.replace(" ", "_"))
            except BackendFailed as error:
                sys.exit(f"bench_distributed: {name}: {error}")
            results[name] = {k: statistics.median(m[k] for m in lines[WARMUP:]) for k in ("time/step", *PHASES)}
    base = results[names[0]]["time/step"]
    header = f"{'backend':<12}{'step s':>9}{'ratio':>8}" + "".join(f"{p.split('/')[1]:>12}" for p in PHASES)
    print(header)
    for name, times in results.items():
        times["ratio"] = times["time/step"] / base
        cells = "".join(f"{times[p]:>12.3f}" for p in PHASES)
        print(f"{name:<12}{times['time/step']:>9.3f}{times['ratio']:>8.2f}{cells}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
