"""docs/coming-from-trl-verl.md, "Porting open-r1's rewards": every command and code block of the section runs as
written (the reward file, the CLI run, the Python run with TRL's arguments), on CPU, with no ../shared."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def section_blocks() -> list[tuple[str, str]]:
    doc = (REPO / "docs" / "coming-from-trl-verl.md").read_text()
    section = doc[doc.index("## Porting open-r1's rewards") :]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)


def test_the_open_r1_port_runs_as_written(tmp_path: Path):
    blocks = section_blocks()
    files = [body for lang, body in blocks if lang == "python" and body.startswith("# ")]
    assert len(files) == 1
    (tmp_path / files[0].splitlines()[0][2:].strip()).write_text(files[0])
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "DEEPSEEK_RL_SHARED": str(tmp_path / "no-shared")}
    commands = [line for lang, body in blocks if lang == "bash" for line in body.strip().splitlines()]
    assert commands and all(c.startswith("deepseek-rl ") for c in commands)
    for command in commands:
        args = command.split()[1:]
        done = subprocess.run([sys.executable, "-m", "deepseek_rl.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    scripts = [body for lang, body in blocks if lang == "python" and not body.startswith("# ")]
    assert len(scripts) == 1
    done = subprocess.run([sys.executable, "-c", scripts[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for run, steps in (("open_r1_port", 3), ("open_r1_python", 2)):
        lines = [json.loads(x) for x in (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == steps
        for name in ("accuracy_reward", "format_reward"):  # ran on conversational completions without failing
            assert all(m[f"reward/{name}/errors"] == 0 and m[f"reward/{name}/none"] == 0 for m in lines), name
