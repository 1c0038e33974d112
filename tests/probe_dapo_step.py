"""One SGD step of the `dapo` loss on 8 fixed completions; writes the parameter change (= -lr * gradient).

python tests/probe_dapo_step.py MICRO_BATCH OUT.pt                      # 1 process, 8 / MICRO micro-batches
accelerate launch --num_processes 2 ... tests/probe_dapo_step.py 4 OUT.pt  # 2 ranks x 4 completions
"""

import sys

import torch

from deepseek_rl.algo.update import UpdateSettings, update_policy
from deepseek_rl.batch import LossInputs
from deepseek_rl.config import AlgorithmConfig, Config, ModelConfig, OptimizerConfig, TrainerConfig
from deepseek_rl.infra.distributed import launched_world_size, make_accelerator
from deepseek_rl.infra.optim import lr_schedule
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model

micro, out = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
cfg = Config(
    algorithm=AlgorithmConfig(num_generations=2, lr=1.0, loss_type="dapo"),
    optimizer=OptimizerConfig(max_grad_norm=None),
    trainer=TrainerConfig(batch_size=8, micro_batch_size=micro),
)
plan = cfg.grpo_plan(launched_world_size())
accelerator = make_accelerator(plan, None)
tok = build_char_tokenizer()
model = load_model(ModelConfig(), tok, seed=0)
before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()

g = torch.Generator().manual_seed(0)
ids = torch.randint(4, len(tok), (8, 11), generator=g)
loss_mask = (torch.rand(8, 5, generator=g) > 0.3).float()
loss_mask[:, 0] = 1
attention = torch.ones(8, 11, dtype=torch.long)
attention[:, 6:] = loss_mask.long()
inputs = LossInputs(ids, attention, loss_mask, torch.randn(8, generator=g), None, None)
per_rank = 8 // accelerator.num_processes
inputs = inputs.rows(accelerator.process_index * per_rank, (accelerator.process_index + 1) * per_rank)

optimizer = torch.optim.SGD(model.parameters(), lr=cfg.algorithm.lr)
model, optimizer = accelerator.prepare(model, optimizer)
settings = UpdateSettings(cfg.algorithm, plan, 1.0, 5, None)
update_policy(accelerator, model, optimizer, lr_schedule(optimizer, cfg.optimizer, 1, 0), inputs, settings)
after = torch.cat([p.detach().flatten() for p in accelerator.unwrap_model(model).parameters()])
if accelerator.is_main_process:
    torch.save({"delta": after - before, "world_size": accelerator.num_processes}, out)
