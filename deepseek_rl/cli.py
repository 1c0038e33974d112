"""The `deepseek-rl` command: one subcommand per job.

deepseek-rl train [--config-name RECIPE] [key=value ...]   GRPO training (Hydra; default recipe: `default`)
deepseek-rl eval --model DIR --data TASK|FILE --reward NAME  evaluate a model (see eval_cli.py)
deepseek-rl score --reward NAME[,NAME...] --input rows.jsonl  score a JSONL file offline (see score_cli.py)
"""

from __future__ import annotations

import sys

USAGE = """usage: deepseek-rl <command> [args]

commands:
  train   run a recipe from recipes/: deepseek-rl train [--config-name RECIPE] [key=value ...]
          (Hydra options work too: -m for sweeps, --cfg job to print the composed config)
  eval    evaluate a model directory: deepseek-rl eval --model DIR --data addition|rows.jsonl --reward NAME
          [--samples 8] [--num-prompts 500] [--output samples.jsonl] (--help for more)
  score   score a JSONL file with rewards: deepseek-rl score --reward NAME[,NAME...] --input rows.jsonl
          [--completion-key completion] [--output scored.jsonl] (--help for more)
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        from deepseek_rl import train

        sys.argv = [f"{sys.argv[0]} train", *rest]  # Hydra parses sys.argv
        train.main()
        return
    if command == "eval":
        from deepseek_rl import eval_cli

        eval_cli.main(rest)
        return
    if command == "score":
        from deepseek_rl import score_cli

        score_cli.main(rest)
        return
    print(f"deepseek-rl: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
