"""The real-model recipes (GSM8K, MATH, MBPP with R1-Distill and Qwen2.5): each composes, validates, reads the real
data in ../shared with the real tokenizer, scores right from inside the opened think block, and runs 2 steps through
the real CLI with its model swapped for a tiny random Qwen2 (model=tiny_like)."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from deepseek_rl.config import ConfigError, RewardConfig, load_recipe
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.models.loading import load_tokenizer
from deepseek_rl.stages.reward_set import RewardSet

from .conftest import hub_model_recipes, run_cli

RECIPES = [
    "gsm8k_grpo_qwen25_math_base",
    "gsm8k_grpo_r1_distill",
    "math_dapo_r1_distill",
    "math_dapo_r1_distill_lora",
    "math_grpo_qwen25_instruct",
    "mbpp_grpo_r1_distill",
]
# CPU-sized: 2 steps, 2 prompts x 4 completions of 16 tokens, a small held-out evaluation at step 0 and 2 with
# pass@1 and pass@2. top_p=1: a random model's flat distribution puts most of the 151k vocabulary in the nucleus,
# which takes a full sort (~0.1 s per token on one CPU core; a trained model's peaked rows take a partial one).
CPU_OVERRIDES = [
    "model=tiny_like",
    "rollout.engine=builtin",  # the recipes select vLLM (GPU); tiny_like's 16-wide heads are below vLLM's CPU minimum
    "logger=none",
    "trainer.max_steps=2",
    "rollout.max_completion_length=16",
    "rollout.top_p=1.0",
    "algorithm.num_generations=4",
    "trainer.batch_size=8",
    "trainer.micro_batch_size=4",
    "algorithm.max_sampling_rounds=1",
    "data.max_rows=16",
    "eval.every=2",
    "eval.every_prompts=2",
    "eval.every_samples=2",
    "eval.batch_size=4",
]


# Cold-start and tool-use recipes of real models (tests/test_finetune.py and tests/test_tools.py run them with
# model=tiny_like).
SFT_RECIPES = ["gsm8k_sft_r1_distill"]
TOOL_RECIPES = ["math_tir_qwen25_math"]
# The asynchronous variant of a recipe above (tests/test_config.py composes it; tests/test_async.py runs async GRPO).
ASYNC_RECIPES = ["gsm8k_grpo_r1_distill_async", "math_dapo_r1_distill_async"]


def test_the_real_recipes_are_the_hub_model_recipes():
    assert hub_model_recipes() == sorted(RECIPES + SFT_RECIPES + TOOL_RECIPES + ASYNC_RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_swaps_to_a_tiny_model_of_the_same_architecture(name, shared):
    real = yaml_model(name)
    cfg = load_recipe(name, ["model=tiny_like"])
    assert cfg.model.path is None and cfg.model.arch == "qwen2"  # every real model here is a Qwen2
    assert cfg.model.tokenizer == str(shared / "tokenizers" / "deepseek-r1-distill-qwen-1.5b")
    assert real["path"].startswith(("deepseek-ai/", "Qwen/")) and cfg.stages == ["grpo"]
    assert "answer_match" not in cfg.reward.weights  # the recipe's rewards replace the default, not extend it
    assert cfg.eval.every > 0 and cfg.eval.every_samples > 1  # held-out pass@1 and pass@k during training
    try:  # the real model: fine when online or cached; offline, an error that says what to do
        load_recipe(name)
    except ConfigError as err:
        assert f"model.path={real['path']}" in str(err) and "Hugging Face Hub" in str(err)


def yaml_model(name: str) -> dict:
    import yaml

    from deepseek_rl.paths import recipes_dir

    defaults = yaml.safe_load((recipes_dir() / f"{name}.yaml").read_text())["defaults"]
    option = next(d["model"] for d in defaults if isinstance(d, dict) and "model" in d)
    return yaml.safe_load((recipes_dir() / "model" / f"{option}.yaml").read_text())


# (recipe, train rows, eval rows) on the full data in ../shared: every prompt fits the recipe's max_prompt_length
FULL_DATA = [
    ("gsm8k_grpo_r1_distill", 7473, 1319),
    ("math_dapo_r1_distill", 400, 100),
    ("mbpp_grpo_r1_distill", 464, 499),  # task_ids 511-974 / 11-510 without task 493 (3,700 prompt tokens)
    ("gsm8k_grpo_qwen25_math_base", 7473, 1319),
]


@pytest.mark.parametrize("name,train_rows,eval_rows", FULL_DATA)
def test_recipe_reads_all_of_its_real_data(name, train_rows, eval_rows, shared):
    cfg = load_recipe(name, ["model=tiny_like"])
    tokenizer = load_tokenizer(cfg.model)
    train = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="train")
    held_out = build_prompt_set(cfg.data, tokenizer, cfg.rollout.max_prompt_length, split="eval")
    assert (len(train), len(held_out)) == (train_rows, eval_rows)
    if name.startswith("mbpp"):
        assert all(511 <= t <= 974 for t in train.columns["task_id"])
        assert all(11 <= t <= 510 for t in held_out.columns["task_id"]) and 493 not in held_out.columns["task_id"]
        assert "Your code should pass these tests:\nassert " in train.texts[0]
    if cfg.data.template == "chat":
        assert all(text.endswith("<｜Assistant｜><think>\n") for text in train.texts[:50])


def score(cfg, prompt: str, completions: list[str], columns: dict) -> dict[str, list[float]]:
    """The recipe's own reward terms (reward.args included) for completions of one prompt."""
    rewards = RewardSet(RewardConfig(weights=cfg.reward.weights, args=cfg.reward.args, num_workers=0))
    n = len(completions)
    try:
        terms = rewards.score(completions, {**{k: [v] * n for k, v in columns.items()}, "prompts": [prompt] * n}).terms
    finally:
        rewards.close()
    return {name: terms[:, i].tolist() for i, name in enumerate(rewards.names)}


def first_row(cfg, split: str = "train"):
    data = build_prompt_set(cfg.data, load_tokenizer(cfg.model), cfg.rollout.max_prompt_length, split=split)
    return data.texts[0], {k: v[0] for k, v in data.columns.items()}


def test_r1_chat_template_completion_inside_the_think_block_scores_right(shared):
    """The R1 template ends the prompt with `<think>\\n`: the completion starts inside the think block."""
    cfg = load_recipe("gsm8k_grpo_r1_distill", ["model=tiny_like", "data.max_rows=1"])
    prompt, row = first_row(cfg)
    assert prompt.endswith("<｜Assistant｜><think>\n") and row["answer"].endswith("#### 72")
    right = "Natalia sold 48 in April and 48 / 2 = 24 in May.\n48 + 24 = 72.\n</think>\n\nShe sold \\boxed{72} clips."
    wrong = right.replace("\\boxed{72}", "\\boxed{71}")
    unclosed = "Natalia sold 48 in April, so 48 + 24 = 72 and the answer is \\boxed{72}"  # never left the think block
    terms = score(cfg, prompt, [right, wrong, unclosed], row)
    assert terms["think_format"] == [1.0, 1.0, 0.0]
    assert terms["accuracy"] == [1.0, 0.0, 1.0]


def test_math_and_mbpp_recipes_score_right_inside_the_think_block(shared):
    cfg = load_recipe("math_dapo_r1_distill", ["model=tiny_like", "data.max_rows=1"])
    prompt, row = first_row(cfg)
    right = f"Let me work it out.\n</think>\n\nSo the answer is $\\boxed{{{row['answer']}}}$."
    terms = score(cfg, prompt, [right, right.replace("\\boxed", "")], row)
    assert terms["accuracy"] == [1.0, 0.0] and terms["think_format"] == [1.0, 1.0]  # only a boxed answer counts

    cfg = load_recipe("mbpp_grpo_r1_distill", ["model=tiny_like", "data.max_rows=1"])
    prompt, row = first_row(cfg)
    solution = f"I need a function.\n</think>\n\n```python\n{row['code']}\n```"
    terms = score(cfg, prompt, [solution, "I need a function.\n</think>\n\nno code"], row)
    assert terms["code"] == [1.0, 0.0] and terms["think_format"] == [1.0, 1.0]


def test_r1_zero_template_for_the_base_model_scores_right(shared):
    cfg = load_recipe("gsm8k_grpo_qwen25_math_base", ["model=tiny_like", "data.max_rows=1"])
    prompt, row = first_row(cfg)
    assert prompt.endswith("Assistant: <think>") and cfg.rollout.stop_strings == ["</answer>"]
    right = " 48 / 2 = 24 in May, 48 + 24 = 72 in all. </think> <answer> 72 </answer>"
    terms = score(cfg, prompt, [right, right.replace("72 </", "70 </"), "72"], row)
    assert terms["format"] == [1.0, 1.0, 0.0] and terms["accuracy"] == [1.0, 0.0, 0.0]


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_two_steps_on_cpu(name, shared, tmp_path: Path):
    lora = "lora" in name
    result = run_cli(
        "train",
        "--config-name",
        name,
        *CPU_OVERRIDES,
        f"trainer.save_final={lora}",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    cfg = load_recipe(name, CPU_OVERRIDES)
    assert [m["step"] for m in lines] == [0, 1, 2]  # evaluation before training, then two steps
    for key in ("eval/pass@1", "eval/pass@2", "eval/maj@2", "eval/greedy_accuracy"):
        assert key in lines[0] and key in lines[2]
    for name_ in cfg.reward.weights:
        assert f"reward/{name_}/mean" in lines[1] and lines[1][f"reward/{name_}/errors"] == 0
    assert lines[1]["completion_length/mean"] > 0
    if lora:  # the merged export loads in transformers, the adapters are saved apart
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
        assert model.config.model_type == "qwen2" and not any("lora" in n for n, _ in model.named_parameters())
        assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()


def test_think_format_and_a_worked_solution_as_gold():
    from deepseek_rl.rewards import REWARDS

    r1 = "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>\n"
    completions = ["a\n</think>\n\nIt is 4.", "<think>a</think>4", "a\n</think>\n", "a</think>4<think>b</think>4", "4"]
    assert REWARDS["think_format"](completions, prompts=[r1] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert REWARDS["think_format"](["a</think>4"], prompts=["Q: 2+2?"]) == [0.0]  # this prompt opened no think block
    # MATH from the Hub has no answer column: its worked solution is the gold, read at its last \boxed{}
    solution = r"Half of 1 is $\frac{1}{2}$, so $x = \boxed{\frac{1}{2}}$."
    assert REWARDS["accuracy"]([r"\boxed{0.5}", r"\boxed{1}"], answer=[solution] * 2) == [1.0, 0.0]
