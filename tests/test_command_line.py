"""The command line as a new user types it: the README's weights syntax, mistyped keys and recipes, TRL's and
verl's names, --version, the recipe list in --help, shell completion, and a user's own recipe folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_rl.config import ConfigError, load_recipe
from deepseek_rl.config.aliases import TRL, VERL
from deepseek_rl.config.overrides import check_composed, key_kind

from .conftest import REPO, run_cli


def test_the_readme_weights_syntax_replaces_the_recipes_weights(tmp_path: Path):
    cfg = load_recipe("smoke", ["reward.weights={accuracy: 1.0, format: 0.2}"])
    assert cfg.reward.weights == {"accuracy": 1.0, "format": 0.2}  # the recipe's answer_match and tag_count are gone
    cfg = load_recipe("smoke", ["reward.weights={answer_match: 2.0}", "+reward.weights.format=0.5"])
    assert cfg.reward.weights == {"answer_match": 2.0, "format": 0.5}
    added = load_recipe("smoke", ["+reward.weights.repetition=0.5"]).reward.weights
    assert added == {"answer_match": 1.0, "format": 0.2, "tag_count": 0.2, "repetition": 0.5}  # `+` keeps the rest
    assert load_recipe("smoke", ["reward.args={format: {}}"]).reward.args == {"format": {}}
    result = run_cli("train", "--config-name", "smoke", "reward.weights={accuracy: 1.0, format: 0.2}", "--cfg", "job",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "  weights:\n    accuracy: 1.0\n    format: 0.2\n  functions" in result.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ("+trainer.max_step=1", "trainer.max_step is not a key of the config. Did you mean trainer.max_steps?"),
        ("+algorithm.num_generatoins=4", "Did you mean algorithm.num_generations?"),
        ("algorithm.num_generatoins=4", "Did you mean algorithm.num_generations?"),
        ("++trainer.max_step=1", "Did you mean trainer.max_steps?"),
        ("trainer.lr=1e-3", "Did you mean algorithm.lr?"),
        ("algorithm.beta=0.04", "Did you mean algorithm.kl_coef (TRL's beta;"),
        ("learning_rate=1e-6", "Did you mean algorithm.lr (TRL's learning_rate)?"),
        ("actor_rollout_ref.rollout.n=8", "algorithm.num_generations (verl's actor_rollout_ref.rollout.n)?"),
        ("data.train_batch_size=32", "Did you mean trainer.batch_size (verl's data.train_batch_size; ours counts"),
    ],
)
def test_an_unknown_key_fails_with_the_nearest_key(tmp_path: Path, override, message):
    result = run_cli("train", "--config-name", "smoke", override, "logger=none", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "To append to your config use +" not in result.stderr  # Hydra's hint leads to an ignored key
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="is not a key of the config"):
        load_recipe("smoke", [override])


def test_a_config_error_leaves_no_run_folder_and_a_run_says_where_it_writes(tmp_path: Path):
    bad = run_cli("train", "--config-name", "smoke", "trainer.max_steps=-1", "logger=none", cwd=tmp_path)
    assert bad.returncode == 2 and "trainer.max_steps=-1 must be >= 1" in bad.stderr
    assert not (tmp_path / "runs").exists()  # Hydra made runs/smoke/<time>/ before the config was validated
    (tmp_path / "runs" / "smoke" / "earlier").mkdir(parents=True)  # another run's folder stays
    run_cli("train", "--config-name", "smoke", "trainer.max_steps=-1", "logger=none", cwd=tmp_path)
    assert [p.name for p in (tmp_path / "runs" / "smoke").iterdir()] == ["earlier"]
    good = run_cli("train", "--config-name", "smoke", "trainer.max_steps=1", "logger=none", cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-2000:]
    (folder,) = [p for p in (tmp_path / "runs" / "smoke").iterdir() if p.name != "earlier"]
    assert f"deepseek-rl: run folder {folder}" in good.stdout and f"results in {folder}" in good.stdout
    assert (folder / "metrics.jsonl").exists()


def test_plus_still_adds_to_the_dict_fields():
    cfg = load_recipe("smoke", ["+data.columns.question=prompt", "+reward.args.repetition.ngram_size=2",
                                "+reward.weights.repetition=0.1"])  # fmt: skip
    assert cfg.data.columns == {"question": "prompt"} and cfg.reward.args == {"repetition": {"ngram_size": 2}}


def test_the_composed_config_is_checked_too():
    check_composed({"trainer": {"max_steps": 1}, "reward": {"weights": {"anything": 1.0}}})
    with pytest.raises(ConfigError, match="trainer.max_step is not a key"):
        check_composed({"trainer": {"max_step": 1}})


def test_every_trl_and_verl_name_maps_to_a_real_key():
    for table in (TRL, VERL):
        for name, alias in table.items():
            key = alias.ours.split("=")[0]
            if " " not in key:  # a key, or a group (logger=..., algorithm=grpo)
                assert key_kind(key) != "unknown", f"{name} -> {alias.ours}"
            assert key_kind(name) == "unknown", f"{name} is one of our keys: the alias would never be used"


def test_the_trl_verl_page_covers_every_name():
    page = (REPO / "docs" / "coming-from-trl-verl.md").read_text()
    for name in [*TRL, *VERL]:
        assert f"`{name}`" in page, name


def test_a_mistyped_recipe_lists_the_recipes_and_the_nearest(tmp_path: Path):
    result = run_cli("train", "--config-name", "smok", cwd=tmp_path)
    assert result.returncode == 2
    assert "no such recipe. Did you mean 'smoke'?" in result.stderr
    assert "r1_pipeline" in result.stderr and "gsm8k_grpo_r1_distill" in result.stderr
    assert "Traceback" not in result.stderr and "Primary config" not in result.stderr
    with pytest.raises(ConfigError, match="no such recipe. Did you mean 'smoke'"):
        load_recipe("smok")  # Python and `deepseek-rl check` too


def test_version_and_the_recipes_in_train_help(tmp_path: Path):
    from deepseek_rl import __version__

    for args in (["--version"], ["train", "--version"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith(f"deepseek-rl {__version__} (Hydra "), result
    result = run_cli("train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "  smoke  " in result.stdout and "  r1_pipeline  " in result.stdout
    assert "algorithm" in result.stdout and "dapo, dr_grpo, grpo, gspo" in result.stdout
    assert "-sc install=bash" in result.stdout


def completion_env(line: str) -> dict:
    return {"COMP_LINE": line, "COMP_POINT": str(len(line))}


@pytest.mark.parametrize(
    "line,expected",
    [
        ("deepseek-rl tr", ["train"]),
        ("deepseek-rl train algorithm.num_gen", ["algorithm.num_generations="]),
        ("deepseek-rl train algorithm=d", ["algorithm=dapo", "algorithm=dr_grpo"]),
        ("deepseek-rl train --config-name sm", ["smoke", "smoke_async", "smoke_chat", "smoke_vllm"]),
        ("deepseek-rl train --config-name smoke trainer.max_st", ["trainer.max_steps="]),
    ],
)
def test_completion_answers_hydras_query_for_train(tmp_path: Path, line, expected):
    result = run_cli("-sc", "query=bash", cwd=tmp_path, env=completion_env(line))
    assert result.returncode == 0, result.stderr
    assert [w for w in result.stdout.split() if w.startswith(line.split()[-1])] == expected


def test_completion_works_in_bash_as_installed(tmp_path: Path):
    """eval "$(deepseek-rl -sc install=bash)", then what bash runs on TAB."""
    script = (
        'eval "$(deepseek-rl -sc install=bash)"\n'
        'COMP_LINE="deepseek-rl train algorithm.num_gen"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=2\n'
        'hydra_bash_completion; echo "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.split() == ["algorithm.num_generations="], result.stderr[-2000:]


def test_a_users_recipe_folder_composes_with_ours(tmp_path: Path):
    mine = tmp_path / "my_recipes"
    (mine / "reward").mkdir(parents=True)
    (mine / "my_smoke.yaml").write_text(
        "# My smoke run: ours with my reward option.\n"
        "defaults:\n  - smoke\n  - override reward: brief\n  - _self_\n\ntrainer:\n  max_steps: 1\n"
    )
    (mine / "reward" / "brief.yaml").write_text("weights: {answer_match: 1.0, repetition: 0.5}\n")
    result = run_cli(
        "train", "--config-dir", str(mine), "--config-name", "my_smoke", "logger=none", "trainer.save_final=false",
        "trainer.output_dir=out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    config = next((tmp_path / "runs" / "my_smoke").glob("*/.hydra/config.yaml")).read_text()
    assert (tmp_path / "out" / "metrics.jsonl").exists()
    assert "max_steps: 1" in config and "repetition: 0.5" in config and "num_digits: 2" in config  # smoke's data
    listed = run_cli("train", "--config-dir", str(mine), "--help", cwd=tmp_path)
    assert "  my_smoke  " in listed.stdout and "My smoke run" in listed.stdout
    assert "brief" in listed.stdout  # the user's group option is listed with ours


def test_a_missing_shared_folder_names_deepseek_rl_shared(tmp_path: Path):
    """A recipe whose data or model lies in the shared folder (`${shared:...}`), run where that folder is not: one
    line naming the folder and the variable that moves it, for the data file as for the model directory."""
    nowhere = {"DEEPSEEK_RL_SHARED": str(tmp_path / "nowhere")}
    data = run_cli("train", "--config-name", "gsm8k_grpo_r1_distill", cwd=tmp_path, env=nowhere)
    model = run_cli("train", "--config-name", "smoke", "model.path=${shared:models/none}", "model.tokenizer=null",
                    cwd=tmp_path, env=nowhere)  # fmt: skip
    for result, key in ((data, "data.path="), (model, "model.")):
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith(f"deepseek-rl: configuration error: {key}"), last
        assert f"in the shared data folder {tmp_path / 'nowhere'} (DEEPSEEK_RL_SHARED)" in last
