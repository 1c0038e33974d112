"""Test environment: one thread per process, no hub access, wandb offline (tests never send traffic out)."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: each worker (and every process it starts) gets a temp dir of its own, so a test that counts what is
    # left in the temp dir (sandbox folders) sees only what its own worker made
    _run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:8]
    _own_tmp = Path(tempfile.gettempdir()) / f"deepseek-rl-tests-{_run}-{worker}"
    _own_tmp.mkdir(mode=0o1777, exist_ok=True)
    _own_tmp.chmod(0o1777)  # like /tmp: tests that run as another user write here too
    os.environ["TMPDIR"] = str(_own_tmp)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    atexit.register(shutil.rmtree, _own_tmp, ignore_errors=True)
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
