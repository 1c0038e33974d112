"""`deepseek-rl port-trl`: an open-r1 / TRL GRPOConfig YAML becomes a recipe that composes, with the batch arithmetic
done and the keys it could not map listed; TRL-style --flags on `train` name our key."""

import yaml

from .conftest import run_cli

OPEN_R1 = """
model_name_or_path: {model}
model_revision: main
torch_dtype: bfloat16
dataset_name: open-r1/OpenR1-Math-220k
dataset_prompt_column: problem
system_prompt: "You are a helpful AI Assistant."
bf16: true
use_vllm: true
gradient_accumulation_steps: 4
gradient_checkpointing: true
learning_rate: 1e-6
lr_scheduler_type: cosine_with_min_lr
lr_scheduler_kwargs: {{min_lr_rate: 0.1}}
max_prompt_length: 512
max_completion_length: 2048
max_steps: 300
num_generations: 16
num_train_epochs: 1
per_device_train_batch_size: 16
report_to: [wandb]
reward_funcs: [accuracy, format, tag_count, length]
reward_weights: [1.0, 0.5, 0.2, 1.0]
save_steps: 50
seed: 42
temperature: 0.7
warmup_ratio: 0.1
beta: 0.001
loss_type: dr_grpo
scale_rewards: false
"""


def test_an_open_r1_config_becomes_a_recipe_that_composes(tmp_path, shared):
    model = shared / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"
    (tmp_path / "config_demo.yaml").write_text(OPEN_R1.format(model=model))
    done = run_cli("port-trl", "config_demo.yaml", "--output", "my/ported.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "my" / "ported.yaml").read_text()
    recipe = yaml.safe_load(text)
    assert recipe["trainer"]["batch_size"] == 16 * 8 * 4 and recipe["trainer"]["micro_batch_size"] == 16
    assert recipe["trainer"]["max_steps"] == 300 and recipe["optimizer"]["warmup_steps"] == 30
    assert recipe["algorithm"] == {
        "num_generations": 16, "loss_type": "dr_grpo", "clip_eps_low": 0.2, "clip_eps_high": 0.2,
        "scale_rewards": "none", "lr": 1e-6, "kl_coef": 0.001,
    }  # fmt: skip
    assert recipe["reward"]["weights"] == {"accuracy": 1.0, "think_format": 0.5, "tag_count": 0.2}
    assert recipe["rollout"]["engine"] == "vllm" and recipe["optimizer"]["schedule"] == "cosine"
    assert recipe["data"]["hub_name"] == "open-r1/OpenR1-Math-220k" and recipe["data"]["template"] == "chat"
    for listed in ("model_revision=main", "lr_scheduler_kwargs", "reward_funcs: length", "32 prompts per step"):
        assert listed in text, listed
    # it composes and the preflight reads it
    check = run_cli("check", "--config-dir", "my", "--config-name", "ported", "--device-memory-gb", "80", cwd=tmp_path)
    assert check.returncode in (0, 1), check.stderr[-2000:]
    assert "512 completions per step = 32 prompts x G=16" in check.stdout


def test_cispo_and_sapo_port_to_policy_losses(tmp_path):
    (tmp_path / "c.yaml").write_text("loss_type: cispo\nepsilon_high: 5.0\nnum_generations: 4\n")
    recipe = yaml.safe_load(run_cli("port-trl", "c.yaml", cwd=tmp_path).stdout)
    assert recipe["algorithm"]["policy_loss"] == "cispo" and recipe["algorithm"]["clip_eps_high"] == 4.0


def test_trl_style_flags_name_our_key(tmp_path):
    done = run_cli("train", "--config-name", "smoke", "--learning_rate", "1e-6", cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert "--learning_rate is TRL's learning_rate flag" in line and "algorithm.lr=1e-6" in line
    assert "port-trl" in line and "Traceback" not in done.stderr
