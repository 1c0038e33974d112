"""More failures through the real command line, as in test_faults.py (which grew long): each ends in one line on
stderr naming the cause and the fix, without a traceback, and loses nothing. Each section names its cases."""

from __future__ import annotations

import json
import os

from .conftest import run_cli
from .test_faults import message, no_unshare_path, train

# ------------------------------------------------------------------------------- errors that used to end in a traceback


def test_a_reward_model_without_model_type_is_one_line(tmp_path):
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "num_labels": 1}))
    result = train(f"+reward.models.rm={folder}", f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert message(result, 2) == (
        f"deepseek-rl: configuration error: reward.models.rm={folder}: its config.json has no `model_type`, so "
        'transformers cannot tell the architecture; save the model with save_pretrained, or add "model_type" (e.g. '
        '"llama", "qwen2") to config.json'
    )


def test_wandb_that_cannot_be_imported_is_one_line_before_any_model_loads(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "wandb.py").write_text("raise ImportError('wandb is broken here (a test)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(broken), *filter(None, [os.environ.get("PYTHONPATH")])])}
    args = ["--config-name", "smoke", "logger=wandb", f"trainer.output_dir={tmp_path / 'run'}"]
    line = message(run_cli("train", *args, cwd=tmp_path, env=env), 2)
    assert line == ("deepseek-rl: configuration error: logger=wandb needs the wandb package, which cannot be imported "
                    "(ImportError: wandb is broken here (a test)); install it (pip install wandb) or choose another "
                    "logger: logger=none (metrics.jsonl only), logger=tensorboard or logger=mlflow")  # fmt: skip
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------- tool calls


def test_tool_calls_refuse_to_run_without_isolation_before_any_model_loads(tmp_path):
    env = no_unshare_path(tmp_path)
    tools = ["rollout.tools.enabled=true", "trainer.max_steps=1", f"trainer.output_dir={tmp_path / 'run'}"]
    line = message(train(*tools, cwd=tmp_path, env=env), 2)
    assert line.startswith("deepseek-rl: configuration error: reward.sandbox=auto: refusing to run untrusted code "
                           "without isolation (util-linux `unshare` not found)")  # fmt: skip
    assert line.endswith("or set reward.sandbox=weak to run it weakly on purpose")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    line = message(train(*tools, "reward.sandbox=strong", cwd=tmp_path, env=env), 2)
    assert "reward.sandbox=strong: strong isolation is not available here (util-linux `unshare` not found)" in line
    weak = train(*tools, "reward.sandbox=weak", cwd=tmp_path, env=env)  # the explicit opt-in trains
    assert weak.returncode == 0, weak.stderr[-3000:]
