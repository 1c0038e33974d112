"""The built-in engine on an FSDP2-sharded policy (plain torch `fully_shard` on one gloo process: accelerate's FSDP
plugin does not run on CPU). Sharded as accelerate shards a Llama/Qwen2 (each decoder layer, the final norm with the
LM head as one unit, the root): the rollout unshards every unit for the phase, samples exactly what the unsharded
model samples, and training afterwards still works. The first GPU check failed here ("FSDP requires a single root
module"): the decoder called the FSDP-wrapped LM head as a module, whose hook then claimed to be FSDP's root."""

import os
import subprocess
import sys

from deepseek_rl.stages.async_rollouts import free_port

SCRIPT = r"""
import os, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"], RANK="0", WORLD_SIZE="1")
torch.distributed.init_process_group("gloo")
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from accelerate import Accelerator
from deepseek_rl.config import DataConfig, ModelConfig, RolloutConfig
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.infra.distributed import parameter_digest
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model
from deepseek_rl.rollout.engine import BuiltinEngine
from deepseek_rl.rollout.seeds import RowNoise

tok = build_char_tokenizer()
cfg = ModelConfig(tie_word_embeddings=False)
plain, sharded = load_model(cfg, tok, seed=1), load_model(cfg, tok, seed=1)
for layer in sharded.model.layers:
    fully_shard(layer)
fully_shard([sharded.model.norm, sharded.lm_head])
fully_shard(sharded)
assert isinstance(sharded.lm_head, FSDPModule) and isinstance(sharded.lm_head.weight, DTensor)
prompts = build_prompt_set(DataConfig(), tok, 64).batch([0, 1, 2], tok.pad_token_id)
out = []
for model in (plain, sharded):
    engine = BuiltinEngine(model, tok, [tok.eos_token_id], Accelerator())
    with engine.session():
        out.append(engine.generate(prompts, 4, RolloutConfig(max_completion_length=12), RowNoise(7, 12)))
assert torch.equal(out[0].completion_ids, out[1].completion_ids), (out[0].completions, out[1].completions)
assert isinstance(sharded.lm_head.weight, DTensor)  # resharded after the rollout
assert parameter_digest(sharded)[0] == parameter_digest(plain)[0]
sharded(input_ids=out[1].input_ids).logits.float().square().mean().backward()
assert sharded.model.layers[0].mlp.up_proj.weight.grad is not None
print("OK", out[1].completions[0])
"""


def test_builtin_engine_samples_from_an_fsdp2_policy(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PORT": str(free_port()), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("OK")
