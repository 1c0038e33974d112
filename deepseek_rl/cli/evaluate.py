"""`deepseek-rl eval`: evaluate any Hugging Face model directory on a procedural task or a local JSONL/parquet file.

    deepseek-rl eval --model runs/r1/grpo/final --data addition --reward answer_match
    deepseek-rl eval --model DIR --data test.jsonl --reward accuracy --template chat --samples 16 --output out.jsonl
    deepseek-rl eval --model DIR --data test.jsonl --reward accuracy --reward-args '{"sources": ["boxed"]}'

Reports greedy accuracy, sampled accuracy, pass@1 / pass@n (unbiased), maj@n, format rate and completion lengths
as one JSON line on stdout; with --output, every completion (greedy and sampled) is written as a JSON line with its
prompt, correctness, format flag, length and truncation. Exit status 2 on a bad argument or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'give a JSON object such as \'{{"sources": ["boxed"]}}\', not {text!r}')
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepseek-rl eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model directory (with its tokenizer)")
    parser.add_argument("--data", required=True, help="a procedural task name (addition) or a .jsonl/.parquet file")
    parser.add_argument("--reward", default="answer_match", help="the verifier: a reward scoring 1.0 when correct")
    parser.add_argument(
        "--reward-args",
        type=json_object,
        default={},
        help="the verifier's keyword arguments as a JSON object, like the recipe's reward.args",
    )
    parser.add_argument("--format-reward", default="format", help="reward for the format rate ('none' to skip)")
    parser.add_argument(
        "--sandbox", default="auto", choices=("strong", "weak", "auto"), help="code isolation (reward.sandbox)"
    )
    parser.add_argument("--num-prompts", type=int, default=500, help="evaluate the first N problems")
    parser.add_argument("--samples", type=int, default=8, help="sampled completions per problem (0: greedy only)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--template", default="plain", choices=["plain", "r1_zero", "chat"])
    parser.add_argument("--prompt-column", default="prompt")
    parser.add_argument("--num-digits", type=int, default=3, help="procedural addition: digits per operand")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write every completion as a JSON line here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from deepseek_rl.config import DataConfig, EvalConfig, ModelConfig, RewardConfig, RolloutConfig
    from deepseek_rl.data.prompts import build_prompt_set
    from deepseek_rl.data.tasks import TASKS
    from deepseek_rl.models.loading import eos_token_ids, load_model, load_tokenizer
    from deepseek_rl.rollout.engine import BuiltinEngine
    from deepseek_rl.stages.evaluate import evaluate

    model_cfg = ModelConfig(path=args.model, tokenizer=None)
    common = {"template": args.template, "prompt_column": args.prompt_column}
    if args.data in TASKS:
        data = DataConfig(task=args.data, num_digits=args.num_digits, **common)
    else:
        data = DataConfig(task=None, path=args.data, eval_path=args.data, **common)
    rollout = RolloutConfig(max_prompt_length=args.max_prompt_length, max_completion_length=args.max_new_tokens)
    settings = EvalConfig(
        num_prompts=args.num_prompts,
        samples=args.samples,
        temperature=args.temperature,
        correctness=args.reward,
        format_reward=None if args.format_reward.lower() == "none" else args.format_reward,
    )
    # checks the reward's name and argument names before loading the model; code rewards run as --sandbox says
    reward = RewardConfig(weights={args.reward: 1.0}, args={args.reward: args.reward_args}, sandbox=args.sandbox)
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg, tokenizer).to("cuda" if torch.cuda.is_available() else "cpu")
    prompts = build_prompt_set(data, tokenizer, rollout.max_prompt_length, split="eval")
    engine = BuiltinEngine(model, tokenizer, eos_token_ids(tokenizer, model))
    report = evaluate(engine, prompts, settings, rollout, args.seed, reward)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as f:
            for row in report.samples:
                f.write(json.dumps(row) + "\n")
    return report.metrics


def main(argv: list[str] | None = None) -> None:
    from deepseek_rl.errors import ConfigError, DataError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics = run(args)
    except (ConfigError, DataError, OSError) as err:
        print(f"deepseek-rl eval: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k.removeprefix("eval/"): round(v, 4) for k, v in metrics.items()}))


if __name__ == "__main__":
    main()
