"""Per-step time of one recipe on 1 process, DDP x2, ZeRO-2 x2 and ZeRO-3 x2 (same global batch), in one run.

    python -m deepseek_rl.tools.bench_distributed [--steps 12] [--recipe smoke] [key=value ...]

Each backend runs the recipe through `accelerate launch` with the configs in launch/; the table shows the median
step time (first two steps skipped as warm-up), its split into generation / reward / log-probs / update, and the
ratio to the single process. On CPU the processes share the machine's cores (OMP_NUM_THREADS=1 each).
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


def run_backend(config: str | None, recipe: str, overrides: list[str], output_dir: Path) -> list[dict]:
    train = ["-m", "deepseek_rl.train", "--config-name", recipe, "logger=none", "trainer.save_final=false"]
    train += [*overrides, f"trainer.output_dir={output_dir}"]
    if config is None:
        cmd = [sys.executable, *train]
    else:
        launch = ["--config_file", str(launch_dir() / config), "--num_processes", "2"]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--recipe", default="smoke")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the recipe")
    args = parser.parse_args(argv)
    overrides = [f"trainer.max_steps={args.steps}", *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in BACKENDS.items():
            lines = run_backend(config, args.recipe, overrides, Path(tmp) / name.replace(" ", "_"))[2:]
            rows.append((name, {k: statistics.median(m[k] for m in lines) for k in ("time/step", *PHASES)}))
    base = rows[0][1]["time/step"]
    header = f"{'backend':<12}{'step s':>9}{'ratio':>8}" + "".join(f"{p.split('/')[1]:>12}" for p in PHASES)
    print(header)
    for name, times in rows:
        cells = "".join(f"{times[p]:>12.3f}" for p in PHASES)
        print(f"{name:<12}{times['time/step']:>9.3f}{times['time/step'] / base:>8.2f}{cells}")


if __name__ == "__main__":
    main()
