"""The `deepseek-rl` command: one subcommand per job.

deepseek-rl train [--config-name RECIPE] [key=value ...]   GRPO training (Hydra; default recipe: `default`)
deepseek-rl eval --model DIR --data TASK|FILE --reward NAME  evaluate a model (see cli/evaluate.py)
deepseek-rl score --reward NAME[,NAME...] --input rows.jsonl  score a JSONL file offline (see cli/score.py)
deepseek-rl check --config-name RECIPE [--launch-config F]     preflight: batch, parameters, memory (see cli/check.py)
deepseek-rl sweeps DIR [--metric reward] [--png out.png]      tabulate the runs of a sweep (see cli/sweeps.py)
deepseek-rl port-trl CONFIG.yaml [--output RECIPE.yaml]       a TRL / open-r1 config as a recipe (cli/port_trl.py)
"""

from __future__ import annotations

import sys

USAGE = """usage: deepseek-rl <command> [args]    (deepseek-rl --version; eval "$(deepseek-rl -sc install=bash)")

commands:
  train   run a recipe: deepseek-rl train [--config-name RECIPE] [--config-dir DIR] [key=value ...]
          (train --help lists the recipes; Hydra options work too: -m for sweeps, --cfg job to print the config)
  eval    evaluate a model directory: deepseek-rl eval --model DIR --data addition|rows.jsonl --reward NAME
          [--samples 8] [--num-prompts 500] [--output samples.jsonl] (--help for more)
  score   score a JSONL file with rewards: deepseek-rl score --reward NAME[,NAME...] --input rows.jsonl
          [--completion-key completion] [--output scored.jsonl] (--help for more)
  check   preflight a recipe without loading weights: deepseek-rl check --config-name RECIPE
          [--launch-config launch/zero3.yaml] [--num-processes N] [--mixed-precision bf16] [--device-memory-gb 80]
          [key=value ...] (--help for more)
  sweeps  tabulate the runs under a sweep directory: deepseek-rl sweeps DIR [--metric reward] [--mode max|min]
          [--png sweep.png] (--help for more)
  serve   the rollout worker of asynchronous GRPO: deepseek-rl serve --config-name RECIPE [--port 29600] [key=value]
          (then train with rollout.server.url=HOST:PORT; docs/async.md)
  port-trl  a TRL GRPOConfig / open-r1 YAML as our recipe: deepseek-rl port-trl CONFIG.yaml [--output RECIPE.yaml]
          [--num-processes 8] (every key it could not map is listed)
"""


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside a training run's own handling (deepseek_rl/infra/preemption.py)
        print("deepseek-rl: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)


def _main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in ("--version", "-V"):
        from deepseek_rl.cli.recipes import version

        print(version())
        return
    if "-sc" in argv[:2] or "--shell-completion" in argv[:2]:
        from deepseek_rl.cli import completion

        completion.main(argv)
        return
    command, rest = argv[0], argv[1:]
    if command in ("train", "eval", "check", "serve"):  # they import transformers, which a broken torchvision breaks
        from deepseek_rl.cli.wheels import exit_if_broken

        exit_if_broken()
    if command == "train":
        from deepseek_rl.cli import train

        sys.argv = [f"{sys.argv[0]} train", *rest]  # Hydra parses sys.argv
        train.main()
        return
    if command == "eval":
        from deepseek_rl.cli import evaluate

        evaluate.main(rest)
        return
    if command == "score":
        from deepseek_rl.cli import score

        score.main(rest)
        return
    if command == "check":
        from deepseek_rl.cli import check

        check.main(rest)
        return
    if command == "serve":
        from deepseek_rl.cli import serve

        serve.main(rest)
        return
    if command == "port-trl":
        from deepseek_rl.cli import port_trl

        port_trl.main(rest)
        return
    if command == "sweeps":
        from deepseek_rl.cli import sweeps

        sweeps.main(rest)
        return
    print(f"deepseek-rl: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
