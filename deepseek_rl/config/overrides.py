"""How command-line overrides meet the schema: unknown keys are errors, and `KEY={...}` replaces a dict.

Hydra alone gets two things wrong for us:
- An unknown key: `algorithm.num_generatoins=4` fails with the hint "use +algorithm.num_generatoins=4", and that
  adds the key to a struct node, where it is silently ignored (`+trainer.max_step=1` trained 4 steps). Here every
  override's key is checked against the dataclass schema before Hydra composes (`check_override_keys`), `+` or
  not: an unknown key is a ConfigError that names the nearest key, or ours for a TRL or verl name (`aliases`).
  Only the free-form dict fields (reward.weights, reward.functions, reward.args, data.columns, ...) take new keys,
  with `+` (`+reward.weights.brevity=0.5`). After composition, `check_composed` checks every key of the result
  too (a recipe file, a `++` override, anything that slipped through).
- A dict value: `reward.weights={accuracy: 1.0}` is merged into the recipe's dict (which keeps the recipe's other
  rewards) and, in struct mode, fails on a new key. Here a plain `KEY={...}` on a dict field replaces the dict:
  `install_dict_replacement` wraps Hydra's override step (ConfigLoaderImpl._apply_overrides_to_config, Hydra 1.3)
  so that this one case assigns instead of merging; everything else goes through Hydra unchanged. Because it
  happens while Hydra composes, `--cfg job`, the saved .hydra/config.yaml, sweeps and the Python `load_recipe` all
  see the same config.
- The same dict in a recipe file: a file (a recipe, or a group option such as reward/*.yaml) that sets a dict field
  would merge into what the files before it set, so `reward.weights` meant "replace" on the command line and "add"
  in a file. Here a file's dict field replaces the inherited one too (`install_dict_replacement` also wraps the
  composition of the defaults list): the dict a recipe shows is the dict it runs. To add to an inherited dict, list
  the inherited keys in the file, or use `+KEY.NAME=value` on the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any

from deepseek_rl.config.aliases import lookup
from deepseek_rl.errors import ConfigError


def _root() -> type:
    from deepseek_rl.config.schema import Config

    return Config


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: _unwrap(hints[f.name]) for f in dataclasses.fields(cls)}


def _is_dict(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def key_kind(key: str) -> str:
    """'node' (a group), 'dict' (a free-form dict field), 'leaf', 'open' (inside a dict field) or 'unknown'."""
    node: Any = _root()
    parts = key.split(".")
    for index, part in enumerate(parts):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            if _is_dict(node):
                return "open"
            if typing.get_origin(node) is list and part.isdigit() and index == len(parts) - 1:
                return "leaf"
            return "unknown"
        if part not in _fields(node):
            return "unknown"
        node = _fields(node)[part]
    if isinstance(node, type) and dataclasses.is_dataclass(node):
        return "node"
    return "dict" if _is_dict(node) else "leaf"


@functools.lru_cache(maxsize=1)
def all_keys() -> tuple[str, ...]:
    """Every key of the schema, dotted (groups, dict fields and leaves)."""
    keys: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        for name, tp in _fields(cls).items():
            keys.append(prefix + name)
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{name}.")

    walk(_root(), "")
    return tuple(keys)


def nearest(key: str) -> str:
    """' Did you mean X?' for an unknown key: ours for a TRL or verl name, else the same last part elsewhere, else
    the closest spelling; '' when nothing is close."""
    found = lookup(key)
    if found is not None:
        whose, alias = found
        note = f"; {alias.note}" if alias.note else ""
        return f" Did you mean {alias.ours} ({whose}{note})?"
    keys = all_keys()
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return f" Did you mean {same_leaf[0]}?"
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f" Did you mean {close[0]}?" if close else ""


def unknown_key_error(key: str, added: bool = False) -> ConfigError:
    """The one-line error for a key the schema does not have."""
    how = (
        " '+' adds keys only inside the dict fields (reward.weights, reward.functions, reward.args, data.columns, ...)."
        if added
        else ""
    )
    return ConfigError(
        f"{key} is not a key of the config.{nearest(key)}{how} "
        "(`deepseek-rl train --cfg job` prints every key; docs/coming-from-trl-verl.md maps TRL's and verl's names)"
    )


def check_override_keys(overrides: list[str], groups: set[str]) -> None:
    """Raise ConfigError for the first override whose key the schema does not have. `groups` are the names of the
    config groups (an override `group=option` selects an option); Hydra's own keys (`hydra.*`) are not checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for line in overrides:
        try:
            override = parser.parse_override(line)
        except HydraException as err:
            target = line.split("=", 1)[0]
            if ":" in target:  # +reward.weights.my_rewards:my_reward=1.0
                raise function_hint(line, target.lstrip("+").removeprefix("reward.weights.")) from err
            raise ConfigError(f"'{line}' is not a valid override: {str(err).splitlines()[0]}") from err
        key = override.key_or_group
        if override.package is not None or key.startswith("hydra") or "/" in key or key in groups:
            continue
        if key_kind(key) == "unknown":
            raise unknown_key_error(key, added=override.is_add() or override.is_force_add())
        value = override.value() if not override.is_sweep_override() else None
        if key == "reward.weights" and isinstance(value, dict):  # {my_rewards:my_reward: 1.0} parses as a str value
            for name, weight in value.items():
                if isinstance(weight, str) and ":" in weight:
                    raise function_hint(line, f"{name}:{weight.split(':')[0].strip()}")


def function_hint(line: str, spec: str) -> ConfigError:
    """The error for a "module:function" reward written as a weights key on the command line."""
    name = spec.rsplit(":", 1)[-1].strip() or "my_reward"
    return ConfigError(
        f"'{line}': a key cannot hold ':' on the command line; name your function, then weigh it: "
        f"+reward.functions.{name}={spec} +reward.weights.{name}=1.0"
    )


def check_composed(cfg: Any) -> None:
    """Raise ConfigError for a key of the composed config (a DictConfig or dict) that the schema does not have."""
    from omegaconf import DictConfig

    def walk(node: Any, prefix: str) -> None:
        for name in node.keys() if isinstance(node, DictConfig | dict) else ():
            key = f"{prefix}{name}"
            if key == "hydra":
                continue
            kind = key_kind(key)
            if kind == "unknown":
                raise unknown_key_error(key)
            if kind == "node":
                walk(node[name], key + ".")

    walk(cfg, "")


def install_dict_replacement() -> None:
    """Make Hydra's `KEY={...}` on a dict field of the schema replace the dict instead of merging into it."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import DictConfig, OmegaConf, open_dict

    original = ConfigLoaderImpl._apply_overrides_to_config
    if getattr(original, "replaces_dicts", False):
        return

    def apply(overrides: list, cfg: Any) -> None:
        for override in overrides:
            plain = not (override.is_delete() or override.is_add() or override.is_force_add())
            if plain and override.package is None and isinstance(override.value(), dict):
                if key_kind(override.key_or_group) == "dict":
                    with open_dict(cfg):
                        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
                    continue
            original([override], cfg)

    apply.replaces_dicts = True  # type: ignore[attr-defined]
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply)
    load_single = ConfigLoaderImpl._load_single_config

    def load(self: Any, default: Any, repo: Any) -> Any:
        """A loaded file, marked with the dict fields it sets, so that the merge that follows replaces them."""
        loaded = load_single(self, default, repo)
        paths = dict_fields_set(loaded.config)
        if paths:
            pending.append(paths)
        return loaded

    def merge_with(cfg: Any, *others: Any) -> None:
        for paths in pending:  # emptied first, so that the merge leaves exactly the file's dict
            with open_dict(cfg):
                for path in paths:
                    if OmegaConf.select(cfg, path) is not None:
                        OmegaConf.update(cfg, path, {}, merge=False)
        pending.clear()
        original_merge(cfg, *others)

    pending: list[list[str]] = []
    original_merge = DictConfig.merge_with
    ConfigLoaderImpl._load_single_config = load
    compose = ConfigLoaderImpl._compose_config_from_defaults_list

    def compose_replacing(self: Any, defaults: Any, repo: Any) -> Any:
        DictConfig.merge_with = merge_with  # only while the defaults list is composed
        try:
            return compose(self, defaults, repo)
        finally:
            DictConfig.merge_with = original_merge
            pending.clear()

    ConfigLoaderImpl._compose_config_from_defaults_list = compose_replacing


def dict_fields_set(node: Any, prefix: str = "") -> list[str]:
    """The free-form dict fields of the schema (reward.weights, data.columns, ...) that a loaded file sets."""
    from omegaconf import DictConfig

    found = []
    if not isinstance(node, DictConfig):
        return found
    for name in node.keys():
        path = f"{prefix}.{name}" if prefix else str(name)
        kind = key_kind(path)
        if kind == "dict" and node._get_node(name) is not None and not node._get_node(name)._is_none():
            found.append(path)
        elif kind == "node":
            found += dict_fields_set(node._get_node(name), path)
    return found
