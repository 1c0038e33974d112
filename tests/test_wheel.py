"""The wheel works outside the checkout: built from the package's files, installed into a fresh venv, run from
another folder, it has the recipes and the launch configs and trains the smoke recipe.

The fresh venv gets its dependencies (torch, transformers, ...) without a download: a `.pth` file lists this venv's
site-packages directories. A `.pth` line that is a path only adds that path; the `.pth` files inside it (this
checkout's editable install among them) are not run, so `deepseek_rl` can only come from the installed wheel, which
the test checks.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO


def build_wheel(dist: Path, scratch: Path) -> Path:
    """The wheel of a copy of the project's files (the checkout itself stays untouched: no build/ or egg-info)."""
    source = scratch / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "deepseek_rl", source / "deepseek_rl", ignore=ignore)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("deepseek_rl-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed (and this venv's dependencies on its path); returns its bin/."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(work / "dist", work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "deps_from_the_test_venv.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return venv / "bin"


def outside(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_ships_the_recipes_and_launch_configs(installed: Path, tmp_path: Path):
    code = "import deepseek_rl, deepseek_rl.paths as p; print(deepseek_rl.__file__, p.recipes_dir(), p.launch_dir())"
    where = outside(installed, "python", "-c", code, cwd=tmp_path)
    package, recipes, launch = where.stdout.split()
    assert package.startswith(str(installed.parent)) and not package.startswith(str(REPO)), where.stdout
    assert (Path(recipes) / "smoke.yaml").is_file() and (Path(recipes) / "model" / "tiny.yaml").is_file()
    assert (Path(launch) / "zero3.yaml").is_file()
    version = outside(installed, "deepseek-rl", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("deepseek-rl 0.1.0")


def test_the_installed_command_trains_from_another_folder(installed: Path, tmp_path: Path):
    result = outside(
        installed, "deepseek-rl", "train", "--config-name", "smoke", "trainer.max_steps=1", "logger=none",
        "trainer.output_dir=out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "metrics.jsonl").is_file() and (tmp_path / "out" / "final" / "config.json").is_file()


def test_a_users_recipe_folder_composes_with_the_installed_recipes(installed: Path, tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "quick.yaml").write_text("defaults:\n  - smoke\n  - _self_\n\ntrainer:\n  max_steps: 3\n")
    result = outside(
        installed, "deepseek-rl", "train", "--config-dir", "mine", "--config-name", "quick", "--cfg", "job",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_steps: 3" in result.stdout and "num_generations: 4" in result.stdout  # ours (smoke) under theirs
