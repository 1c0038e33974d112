"""A free-form dict (reward.weights, reward.args, ...) means the same in a recipe file as on the command line: the
dict shown is the dict run (it replaces the inherited one), and `+KEY.NAME=value` on the command line adds."""

import yaml

from .conftest import run_cli

MINE = """
defaults: [smoke, _self_]
reward:
  weights: {format: 1.0}
"""


def composed_weights(*args: str, cwd) -> dict:
    done = run_cli("train", "--config-dir", "my", "--config-name", "mine", *args, "--cfg", "job", cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return yaml.safe_load(done.stdout)["reward"]["weights"]


def test_a_recipe_files_dict_replaces_the_inherited_one_and_plus_adds(tmp_path):
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "mine.yaml").write_text(MINE)
    assert composed_weights(cwd=tmp_path) == {"format": 1.0}  # not smoke's three rewards plus this one
    assert composed_weights("+reward.weights.tag_count=0.5", cwd=tmp_path) == {"format": 1.0, "tag_count": 0.5}
    assert composed_weights("reward.weights={answer_match: 2.0}", cwd=tmp_path) == {"answer_match": 2.0}


def test_the_shipped_dapo_recipes_list_every_reward():
    from deepseek_rl.config import load_recipe

    cfg = load_recipe("math_dapo_r1_distill", ["model=tiny_like"])
    assert cfg.reward.weights == {"accuracy": 1.0, "think_format": 0.1, "soft_overlong": 1.0}
    assert cfg.reward.args == {"accuracy": {"sources": ["boxed"]}, "soft_overlong": {"buffer_length": 1024}}
