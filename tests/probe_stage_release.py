"""Train a few GRPO steps through the Python entry, then count the models still alive in this process; writes
<OUT_DIR>/alive-<rank>.json. After `train` returns nothing of the run should be left (a ZeRO-3 run's policy and
reference were kept reachable by DeepSpeed's module-level stack and cache).

accelerate launch --config_file launch/zero3.yaml --num_processes 2 tests/probe_stage_release.py OUT_DIR
"""

import gc
import json
import os
import sys
from pathlib import Path

import torch
from transformers import PreTrainedModel

from deepseek_rl import load_recipe, train

out = Path(sys.argv[1])
torch.set_num_threads(1)
cfg = load_recipe("smoke", ["logger=none", "trainer.max_steps=2"])
train(cfg, out / "run")
gc.collect()
alive = sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())
report = {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "alive": alive}
(out / f"alive-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(report))
