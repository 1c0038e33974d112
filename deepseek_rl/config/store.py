"""Hydra registration of the schema, and composing a recipe from Python (tests, `deepseek-rl check`, `train()`).

Registration also makes a `KEY={...}` override replace a dict field instead of merging into it, and
`load_recipe` checks the recipe's name (listing the recipes) and the override keys against the schema first
(config/overrides.py), as `deepseek-rl train` does.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from deepseek_rl.config.overrides import check_composed, check_override_keys, install_dict_replacement
from deepseek_rl.config.schema import Config
from deepseek_rl.errors import ConfigError, did_you_mean
from deepseek_rl.paths import recipes_dir, shared_dir


def register_configs() -> None:
    cs = ConfigStore.instance()
    schema = OmegaConf.structured(Config)
    schema.reward.weights = None  # a recipe's reward weights replace the default instead of merging into it
    cs.store(name="deepseek_rl_schema", node=schema)
    OmegaConf.register_new_resolver("shared", lambda sub="": str(shared_dir() / sub), replace=True)
    install_dict_replacement()


def group_names(*directories: Path) -> set[str]:
    """The config groups (sub-folders holding YAML options) of recipe directories."""
    return {d.name for directory in directories if directory.is_dir() for d in directory.iterdir() if d.is_dir()}


def recipe_files(dirs: list[Path]) -> dict[str, Path]:
    """Recipe name -> file: the YAML files at the top of each directory (not `_common.yaml`-style includes)."""
    found: dict[str, Path] = {}
    for directory in reversed(dirs):  # the first directory wins, as in Hydra's search path
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            if not path.name.startswith("_"):
                found[path.stem] = path
    return dict(sorted(found.items()))


def check_recipe(name: str, dirs: list[Path]) -> None:
    """ConfigError naming the nearest recipe and listing them all, for a recipe that is in none of `dirs`."""
    name = name.removesuffix(".yaml")
    if any((d / f"{name}.yaml").is_file() for d in dirs):
        return
    names = list(recipe_files(dirs))
    hint = did_you_mean(name, names)
    where = ", ".join(str(d) for d in dirs)
    raise ConfigError(
        f"--config-name {name}: no such recipe.{hint} Recipes: {', '.join(names)} (in {where}); "
        "your own: --config-dir DIR --config-name NAME"
    )


def load_recipe(name: str, overrides: list[str] | None = None, config_dir: str | Path | None = None) -> Config:
    """Compose a recipe from `recipes/` (and the user's `config_dir`, searched first, as `--config-dir`) with Hydra
    overrides and validate it (without running anything)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    dirs = [Path(config_dir).resolve(), recipes_dir()] if config_dir else [recipes_dir()]
    check_recipe(name, dirs)
    check_override_keys(overrides, group_names(*dirs))
    search = [f"hydra.searchpath=[file://{recipes_dir()}]"] if config_dir else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(dirs[0]), version_base="1.3"):
        composed = compose(config_name=name, overrides=overrides + search)
    check_composed(composed)
    return OmegaConf.to_object(composed)


register_configs()
