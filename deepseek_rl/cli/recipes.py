"""What `deepseek-rl train` does before Hydra composes: the recipe list (`--help`), the recipe name, the keys.

Hydra reads the same command line afterwards; here it is parsed with Hydra's own argument parser, so the options
mean the same thing. The recipes are those shipped in the package (`deepseek_rl/recipes`, the `recipes/` symlink of
a checkout) plus, with `--config-dir DIR`, the user's own folder, which Hydra searches first: a recipe there can
start from ours (`defaults: [smoke, _self_]`) and use our groups (`model: tiny`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepseek_rl.config.overrides import check_override_keys
from deepseek_rl.config.store import check_recipe, group_names, recipe_files
from deepseek_rl.errors import ConfigError
from deepseek_rl.paths import recipes_dir

USAGE = "usage: deepseek-rl train [--config-name RECIPE] [--config-dir DIR] [key=value ...] [+dict.key=value ...]"


def hydra_args(argv: list[str]) -> argparse.Namespace:
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


def search_dirs(config_dir: str | None) -> list[Path]:
    """Where recipes are looked up, in Hydra's order: the user's --config-dir first, then ours."""
    return ([Path(config_dir).expanduser().absolute()] if config_dir else []) + [recipes_dir()]


def describe(path: Path) -> str:
    """The first comment line of a recipe file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def help_text(dirs: list[Path]) -> str:
    recipes = recipe_files(dirs)
    width = max(len(n) for n in recipes) + 2
    lines = [USAGE, "", "Run a recipe (Hydra). Recipes (--config-name; default: default):"]
    lines += [f"  {name.ljust(width)}{shorten(describe(path), 118 - width)}" for name, path in recipes.items()]
    lines += ["", "Groups (pick an option with group=option, e.g. algorithm=dapo):"]
    for group in sorted(group_names(*dirs) - {"sweeps"}):
        options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
        lines.append(f"  {group.ljust(width)}{shorten(', '.join(options), 118 - width)}")
    lines += [
        "",
        "Keys: every key is a typed field (deepseek_rl/config/); a wrong one fails with the nearest key.",
        "  key=value                 set a key, e.g. algorithm.lr=1e-3 trainer.max_steps=10",
        "  dict.key={a: 1, b: 2}     replace a dict, e.g. reward.weights={accuracy: 1.0, format: 0.2}",
        "  +dict.key.name=value      add to a dict, e.g. +reward.functions.brevity=my_rewards.py:brevity",
        "",
        "Options (Hydra's):",
        "  --cfg job                 print the composed config instead of running",
        "  -m, --multirun            a sweep: algorithm.lr=1e-3,3e-3",
        "  --config-dir DIR          your own recipes, composed with ours (defaults: [smoke, _self_])",
        '  -sc install=bash          shell completion: eval "$(deepseek-rl -sc install=bash)"',
        "  --hydra-help              Hydra's own help",
        "",
        "Coming from TRL or verl: docs/coming-from-trl-verl.md maps their settings to these keys.",
    ]
    return "\n".join(lines)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    import hydra

    try:
        ours = installed("deepseek-rl")
    except PackageNotFoundError:
        from deepseek_rl import __version__ as ours
    return f"deepseek-rl {ours} (Hydra {hydra.__version__})"


def check_flag_style(argv: list[str]) -> None:
    """`--learning_rate 1e-6` (TRL's `trl grpo` flags) is not how keys are set here: name our key instead."""
    from deepseek_rl.config.aliases import lookup

    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg in ("--config-name", "--config-dir", "--config-path"):
            continue
        name, _, value = arg[2:].partition("=")
        found = lookup(name.replace("-", "_"))
        if found is None:
            continue
        whose, alias = found
        if not value and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value = argv[i + 1]
        example = f"{alias.ours}={value}" if "=" not in alias.ours and value else alias.ours
        raise ConfigError(
            f"{arg} is {whose} flag; here keys are set as key=value: {example}"
            + (f" ({alias.note})" if alias.note else "")
            + ". `deepseek-rl port-trl CONFIG.yaml` turns a TRL/open-r1 config into a recipe"
        )


def prepare(argv: list[str]) -> bool:
    """Check `deepseek-rl train`'s arguments (ConfigError when the recipe or a key is wrong); True when the command
    was answered here (--help, --version) and Hydra must not run."""
    if "--version" in argv:  # Hydra's would print Hydra's version only
        print(version())
        return True
    check_flag_style(argv)
    args = hydra_args(argv)
    if args.help:
        print(help_text(search_dirs(args.config_dir)))
        return True
    if args.shell_completion or args.hydra_help:
        return False
    dirs = search_dirs(args.config_dir)
    check_recipe(args.config_name or "default", dirs)
    check_override_keys(args.overrides, group_names(*dirs))
    return False
