"""Under accelerate's bf16 mixed precision (fp32 master weights, the training forward autocast to bf16) a rollout
computes as the training forward does: the built-in sampler under the same autocast, its KV cache in bf16 (in fp32
it held the bf16 keys in twice the memory the preflight counts), the sampler's log-probs those of the bf16
computation. Without mixed precision nothing changes. Each run in its own process: accelerate's state is one per
process."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import run_cli

SCRIPT = r"""
import json, sys, torch
from accelerate import Accelerator
from deepseek_rl.config import DataConfig, ModelConfig, RolloutConfig
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model
from deepseek_rl.rollout import kv_decode
from deepseek_rl.rollout.engine import BuiltinEngine
from deepseek_rl.rollout.sampler import RowUniforms, StopStrings, sample_completions
from deepseek_rl.rollout.seeds import RowNoise

accelerator = Accelerator(cpu=True, mixed_precision=sys.argv[1])
tok = build_char_tokenizer()
model = accelerator.prepare(load_model(ModelConfig(), tok, seed=1))
caches = []
plain_init = kv_decode.StaticCache.__init__
def spy(self, *args):
    plain_init(self, *args)
    caches.append(str(self.keys.dtype))
kv_decode.StaticCache.__init__ = spy
prompts = build_prompt_set(DataConfig(), tok, 64).batch([0, 1, 2], tok.pad_token_id)
cfg = RolloutConfig(max_completion_length=16, temperature=1.0)
engine = BuiltinEngine(model, tok, [tok.eos_token_id], accelerator, logprobs=True)
with engine.session():
    out = engine.generate(prompts, 4, cfg, RowNoise(7, 12))
engine_caches = sorted(set(caches))
def by_hand(autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return sample_completions(model, prompts.input_ids, prompts.attention_mask, 4, cfg, [tok.eos_token_id],
                                  tok.pad_token_id, StopStrings(tok, []), RowUniforms(7, 12, 0, 12), True)
same = {}
for name, autocast in (("fp32", False), ("bf16", True)):
    ids, mask, _, logprobs = by_hand(autocast)
    same[name] = torch.equal(ids, out.completion_ids) and torch.equal(logprobs, out.sampling_logprobs)
print(json.dumps({"caches": engine_caches, "same": same, "dtype": str(next(model.parameters()).dtype)}))
"""


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_sampler_computes_as_the_training_forward(precision):
    done = subprocess.run([sys.executable, "-c", SCRIPT, precision], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["dtype"] == "torch.float32"  # the master weights stay fp32 either way
    if precision == "bf16":  # exactly the bf16 computation, not the fp32 one (what it sampled before)
        assert seen == {"caches": ["torch.bfloat16"], "same": {"fp32": False, "bf16": True}, "dtype": "torch.float32"}
    else:
        assert seen["caches"] == ["torch.float32"] and seen["same"] == {"fp32": True, "bf16": False}


def test_an_async_worker_samples_under_the_trainers_mixed_precision(tmp_path):
    """The trainer tells its worker the precision it trains in; the worker (whose launch settings are dropped)
    samples under the same autocast."""
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16"}
    done = run_cli("train", "--config-name", "smoke_async", "logger=none", "trainer.max_steps=2",
                   f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "run" / "rollout_worker.log").read_text()
    assert "sampling under bf16 autocast (the trainer's mixed precision)" in log
