"""The Python entry: compose a recipe, then run its stages with your own reward functions, data and model, in TRL's
shapes as well as ours.

    from deepseek_rl import load_recipe, train

    def brevity(completions, **kwargs):
        return [-len(c) / 100 for c in completions]

    cfg = load_recipe("smoke", ["trainer.max_steps=2"])
    train(cfg, "runs/mine", reward_funcs={"brevity": brevity})          # ours: name -> callable
    train(cfg, "runs/trl", reward_funcs=[brevity], reward_weights=[0.5],  # TRL's: a list, weights in order
          train_dataset=dataset, eval_dataset=held_out, model="path/or/hub-id")

Callables run in the training process (they may hold state, a client or a model), one sample per call, or one group
per call when marked `per_group` (`deepseek_rl.rewards.group_reward`); their metrics are `reward/<name>/...` like
every reward's, named by the mapping or, for a list, by each function's `__name__`. They add to the recipe's rewards
(`reward.weights`). `train_dataset` / `eval_dataset` (a `datasets.Dataset`, a pandas DataFrame or a list of dicts;
TRL's standard or conversational rows) replace the recipe's data: they are written once to
`<output_dir>/data/{train,eval}.parquet` and read from there. `model` is a local directory, a Hub id, or a model
object (saved once to `<output_dir>/initial_model`, with `processing_class` as its tokenizer, else the tokenizer of
its `name_or_path`). Rewards named in the config (`reward.functions`: "file.py:function") run in the reward workers.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepseek_rl.config.schema import Config
from deepseek_rl.config.store import load_recipe
from deepseek_rl.errors import ConfigError
from deepseek_rl.infra.distributed import release_accelerator
from deepseek_rl.stages.grpo import RewardFunctions
from deepseek_rl.stages.pipeline import run_stages

__all__ = ["load_recipe", "train"]

RewardFuncs = RewardFunctions | Sequence[Callable[..., list]] | Callable[..., list]


def train(
    cfg: Config,
    output_dir: str | Path | None = None,
    reward_funcs: RewardFuncs | None = None,
    *,
    reward_weights: Sequence[float] | Mapping[str, float] | None = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    model: Any = None,
    processing_class: Any = None,
) -> dict[str, Path]:
    """Run `cfg.stages` into `output_dir` (default: trainer.output_dir, else runs/python/<time>); returns each
    training stage's checkpoint directory. See the module docstring for the TRL-shaped arguments."""
    directory = Path(output_dir or cfg.trainer.output_dir or f"runs/python/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    functions = named_rewards(reward_funcs)
    if reward_weights is not None:
        cfg.reward.weights = {**(cfg.reward.weights or {}), **weights_by_name(reward_weights, list(functions))}
    if train_dataset is not None:
        cfg.data.task, cfg.data.hub_name = None, None
        cfg.data.path = str(write_once(directory / "data" / "train.parquet", lambda p: save_rows(train_dataset, p)))
    if eval_dataset is not None:
        cfg.data.eval_path = str(write_once(directory / "data" / "eval.parquet", lambda p: save_rows(eval_dataset, p)))
    if model is not None:
        use_model(cfg, model, processing_class, directory)
    try:
        return run_stages(cfg, directory, functions)
    finally:
        release_accelerator()


def named_rewards(reward_funcs: RewardFuncs | None) -> dict[str, Callable[..., list]]:
    """name -> callable from a mapping (ours), a list of callables (TRL's: named by `__name__`) or one callable."""
    if reward_funcs is None:
        return {}
    if callable(reward_funcs) and not isinstance(reward_funcs, Mapping):
        reward_funcs = [reward_funcs]
    if isinstance(reward_funcs, Mapping):
        named = dict(reward_funcs)
    else:
        named = {}
        for i, func in enumerate(reward_funcs):
            if isinstance(func, str):
                raise TypeError(
                    f"reward_funcs[{i}] is the string {func!r}: pass the function itself, or name a reward of the "
                    "table or a file in the recipe (reward.weights, +reward.functions.NAME=file.py:function)"
                )
            name = getattr(func, "__name__", type(func).__name__)
            name = f"reward_{i}" if name == "<lambda>" else name
            named[name if name not in named else f"{name}_{i}"] = func
    for name, func in named.items():
        if not callable(func):
            raise TypeError(f"reward_funcs['{name}'] is {type(func).__name__}, not a callable")
    return named


def weights_by_name(weights: Sequence[float] | Mapping[str, float], names: list[str]) -> dict[str, float]:
    """TRL's `reward_weights` (a list, in the order of reward_funcs) or a mapping, as name -> weight."""
    if isinstance(weights, Mapping):
        return {str(k): float(v) for k, v in weights.items()}
    if len(weights) != len(names):
        raise ConfigError(
            f"reward_weights has {len(weights)} weights for {len(names)} reward_funcs ({', '.join(names)}): give one "
            "weight per function, in the same order"
        )
    return {name: float(w) for name, w in zip(names, weights, strict=True)}


def save_rows(rows: Any, path: Path) -> None:
    """A datasets.Dataset, a pandas DataFrame or a list of dicts, written as parquet."""
    if hasattr(rows, "to_parquet"):
        rows.to_parquet(str(path))
        return
    if isinstance(rows, list) and all(isinstance(r, Mapping) for r in rows):
        import datasets

        datasets.Dataset.from_list([dict(r) for r in rows]).to_parquet(str(path))
        return
    raise TypeError(
        f"a dataset is {type(rows).__name__}: give a datasets.Dataset, a pandas DataFrame or a list of dicts"
    )


def write_once(path: Path, write: Callable[[Path], None], timeout: float = 600.0) -> Path:
    """`path` written by the first process of this machine (LOCAL_RANK 0) and awaited by the others, so that every
    rank reads the same file; written to a temporary name first, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        write(partial)
        if path.is_dir():  # a model folder from an earlier run in this directory
            shutil.rmtree(path)
        os.replace(partial, path)
        return path
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not written by local rank 0 within {timeout:.0f} s")
        time.sleep(0.5)
    return path


def use_model(cfg: Config, model: Any, processing_class: Any, directory: Path) -> None:
    """TRL's `model`: a path or Hub id, or a model object (saved with its tokenizer, then loaded like a path)."""
    if isinstance(model, (str, os.PathLike)):
        cfg.model.path, cfg.model.tokenizer = str(model), None
        return
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"model is {type(model).__name__}: give a path, a Hub id or a transformers model")
    tokenizer = processing_class
    if tokenizer is None:
        source = getattr(model, "name_or_path", "") or ""
        if not source:
            raise ConfigError("model is an object without name_or_path: pass its tokenizer as processing_class=")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)

    def save(partial: Path) -> None:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)

    saved = write_once(directory / "initial_model", save)
    cfg.model.path, cfg.model.tokenizer = str(saved), None
