"""Test environment: one thread per process, no hub access, wandb offline (tests never send traffic out)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)

import torch  # noqa: E402

torch.set_num_threads(1)

from deepseek_rl.paths import shared_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
R1_TOKENIZER = shared_dir() / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder; tests that need it skip when it is absent, except in CI where it must exist."""
    path = shared_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data folder {path} is missing in CI (set DEEPSEEK_RL_SHARED)")
        pytest.skip(f"shared data folder {path} not found (set DEEPSEEK_RL_SHARED)")
    return path


def hub_model_recipes() -> list[str]:
    """Recipes whose model option names a Hugging Face Hub id (real models), directly or through the recipe they
    extend (a plain name in the defaults list): offline they run with model=tiny_like."""
    import yaml

    from deepseek_rl.hub import is_hub_id
    from deepseek_rl.paths import recipes_dir

    def model_option(name: str) -> str | None:
        path = recipes_dir() / f"{name}.yaml"
        if not path.exists():
            return None
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        for entry in reversed(defaults):  # a later entry overrides an earlier one
            if isinstance(entry, dict) and "model" in entry:
                return entry["model"]
            if isinstance(entry, str) and entry not in ("_self_",) and (option := model_option(entry)):
                return option
        return None

    names = []
    for path in sorted(recipes_dir().glob("*.yaml")):
        if option := model_option(path.stem):
            model = yaml.safe_load((recipes_dir() / "model" / f"{option}.yaml").read_text()) or {}
            if isinstance(model.get("path"), str) and is_hub_id(model["path"]):
                names.append(path.stem)
    return names


def run_cli(*args: str, cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `deepseek-rl` command (through this interpreter) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "deepseek_rl.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """The default pipeline (SFT -> GRPO -> eval), shortened: 2-digit addition, 20 RL steps, small evaluations."""
    work = tmp_path_factory.mktemp("pipeline")
    result = run_cli(
        "train", "logger=none", "data.num_digits=2", "data.num_train=2000", "sft.max_steps=300",
        "trainer.max_steps=20", "trainer.batch_size=64", "eval.every=10", "eval.every_prompts=100",
        "eval.num_prompts=100", "eval.samples=4", f"trainer.output_dir={work / 'run'}",
        cwd=work, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # the run ends with its wall time and the machine's speed, so a user can scale the README's figures
    assert re.search(
        r"sft -> grpo -> eval done in \d+ s \(\d+ torch threads?; fp32 matmul \d+ GFLOP/s\)", result.stdout
    )
    return work / "run"
