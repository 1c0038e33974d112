"""Every shipped recipe composes and validates; each invalid configuration fails with its message, not a traceback."""

from pathlib import Path

import pytest
import yaml

from deepseek_rl.config import Config, ConfigError, load_recipe
from deepseek_rl.models.loading import load_model, load_tokenizer
from deepseek_rl.paths import recipes_dir

from .conftest import hub_model_recipes, run_cli

GROUPS = ("model", "data", "rollout", "reward", "algorithm", "optimizer", "trainer", "logger")


def primary_recipes() -> list[str]:
    """Every recipe (a YAML with a defaults list, outside the group folders), in recipes/ and its subfolders."""
    names = []
    for path in sorted(recipes_dir().rglob("*.yaml")):
        relative = path.relative_to(recipes_dir())
        doc = yaml.safe_load(path.read_text()) or {}
        if relative.parts[0] not in GROUPS and isinstance(doc.get("defaults"), list):
            names.append(str(relative.with_suffix("")))
    return names


def required_overrides(name: str, tmp_path_factory) -> list[str]:
    """Recipes that start from a checkpoint (model.path: ???) get a small exported model; recipes of real Hub
    models get the tiny random model of the same architecture (no download offline)."""
    if name in hub_model_recipes():
        return ["model=tiny_like"]
    text = (recipes_dir() / f"{name}.yaml").read_text()
    if "path: ???" not in text:
        return []
    directory = tmp_path_factory.getbasetemp() / "recipe-model"
    if not (directory / "config.json").exists():
        cfg = load_recipe("smoke")
        tokenizer = load_tokenizer(cfg.model)
        load_model(cfg.model, tokenizer).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return [f"model.path={directory}"]


def group_options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((recipes_dir() / g).glob("*.yaml"))]


def test_recipes_are_found():
    assert {"default", "smoke", "r1_tokenizer_smoke", "r1_pipeline", "r1_grpo", "r1_rft"} <= set(primary_recipes())


@pytest.mark.parametrize("name", primary_recipes())
def test_recipe_composes_and_validates(name, tmp_path_factory):
    cfg = load_recipe(name, required_overrides(name, tmp_path_factory))
    assert isinstance(cfg, Config)


def test_checkpoint_recipes_require_a_model_path():
    with pytest.raises(Exception, match="model.path"):
        load_recipe("r1_grpo")


@pytest.mark.parametrize("group,option", group_options())
def test_every_group_option_composes_into_the_default_recipe(group, option):
    """A Hub model composes when it is reachable (online or cached); offline it fails with the message to fix it."""
    try:
        cfg = load_recipe("default", [f"{group}={option}"])
    except ConfigError as err:
        assert group == "model" and "model.path=" in str(err) and "Hugging Face Hub" in str(err), err
        return
    assert isinstance(cfg, Config)


INVALID = {
    "num_generations": (
        ["algorithm.num_generations=1"],
        "algorithm.num_generations=1: GRPO needs at least 2 completions",
    ),
    "batch_groups": (
        ["trainer.batch_size=30"],
        "trainer.batch_size=30 does not divide into whole groups of algorithm.num_generations=4",
    ),
    "micro_batch": (
        ["trainer.micro_batch_size=6"],
        "trainer.micro_batch_size=6 does not divide the 16 completions per rank",
    ),
    "unknown_reward": (["+reward.weights.acuracy=1.0"], "reward.weights.acuracy: unknown reward 'acuracy'"),
    "missing_file": (
        ["data.task=null", "data.path=/nonexistent/train.jsonl"],
        "data.path=/nonexistent/train.jsonl: no such file",
    ),
    "lengths": (
        ["rollout.max_completion_length=250"],
        "max_prompt_length + rollout.max_completion_length = 282 does not fit",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_config_in_process(case):
    overrides, message = INVALID[case]
    with pytest.raises(ConfigError, match=message.replace("+", r"\+").replace("(", r"\(")):
        load_recipe("smoke", overrides)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_config_from_cli_prints_message_not_traceback(case, tmp_path: Path):
    overrides, message = INVALID[case]
    result = run_cli("train", "--config-name", "smoke", *overrides, "logger=none", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.jsonl"))  # failed before training


def test_typo_in_a_key_is_caught_by_the_schema():
    with pytest.raises(Exception, match="algorithm.lrr"):
        load_recipe("default", ["algorithm.lrr=1e-3"])
