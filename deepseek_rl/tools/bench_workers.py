"""Workers of the TRL benchmark (bench_trl.py): the workloads, and one timed run of either trainer per process.

    python -m deepseek_rl.tools.bench_workers ours|ours_packed|trl WORKLOAD MODEL_DIR KL STEPS OUT.json

Each writes {"steps": [{"step", "generation", "reward", "logprobs", "update", "completion_tokens", "reward"}],
"peak_memory_mb", "flops_per_token"}; "update" is the rest of the step (the policy's forward, backward and
optimizer step, plus bookkeeping). `ours_packed` is ours with trainer.padding_free=true. TRL is timed by
wrapping its model's `generate`, its reward functions and its log-prob method when called without grad (old /
reference log-probs), and a callback around each step.
"""

from __future__ import annotations

import functools
import json
import math
import resource
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek_rl.config import (
    AlgorithmConfig,
    Config,
    DataConfig,
    EvalConfig,
    LoggerConfig,
    ModelConfig,
    OptimizerConfig,
    RewardConfig,
    RolloutConfig,
    TrainerConfig,
)
from deepseek_rl.paths import shared_dir


@dataclass(frozen=True)
class Workload:
    tokenizer: str  # "char" or a tokenizer directory
    model: dict  # ModelConfig fields of the tiny/large random model
    data: str  # addition | gsm8k
    prompts_per_step: int
    num_generations: int
    max_prompt_length: int
    max_completion_length: int
    lr: float
    rewards: dict  # reward name -> weight
    steps: int
    mean_length: int | None = None  # completions end with probability 1 / mean_length per token (longtail)


WORKLOADS = {
    "tiny": Workload(
        tokenizer="char",
        model={"arch": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4,
               "intermediate_size": 256, "max_position_embeddings": 256},
        data="addition", prompts_per_step=4, num_generations=4, max_prompt_length=32, max_completion_length=48,
        lr=1e-3, rewards={"answer_match": 1.0, "format": 0.2, "tag_count": 0.2}, steps=30,
    ),
    "large": Workload(
        tokenizer=str(shared_dir() / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"),
        model={"arch": "qwen2", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
               "intermediate_size": 1024, "max_position_embeddings": 1024},
        data="gsm8k", prompts_per_step=2, num_generations=4, max_prompt_length=256, max_completion_length=256,
        lr=1e-5, rewards={"repetition": 1.0}, steps=4,
    ),
    # R1-like long-tailed lengths: EOS with probability 1/160 per token (a geometric law: median 111, mean 160,
    # 1 in 10 over 368 tokens), cut at 768, so most micro-batches are mostly padding when padded to the longest row
    "longtail": Workload(
        tokenizer=str(shared_dir() / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"),
        model={"arch": "qwen2", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
               "intermediate_size": 1024, "max_position_embeddings": 2048, "tie_word_embeddings": False},
        data="gsm8k", prompts_per_step=2, num_generations=4, max_prompt_length=256, max_completion_length=768,
        lr=1e-5, rewards={"repetition": 1.0}, steps=4, mean_length=160,
    ),
}  # fmt: skip


@torch.no_grad()
def end_with_probability(model: torch.nn.Module, eos_id: int, mean_length: int) -> None:
    """Edit a random model so that it samples EOS with probability about 1 / mean_length at every step, whatever
    the context: every token's embedding gets a large constant in feature 0, so after the final RMSNorm that
    feature is nearly the same at every position; the LM head reads feature 0 only for EOS, with a weight calibrated
    on random sequences (two corrections of the log-odds) so that the mean EOS probability is 1 / mean_length."""
    model.get_input_embeddings().weight[:, 0] = 4.0
    head = model.get_output_embeddings().weight
    head[:, 0] = 0.0
    ids = torch.randint(0, model.config.vocab_size, (2, 256), generator=torch.Generator().manual_seed(0))
    target = 1.0 / mean_length
    for _ in range(3):
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        feature = out.hidden_states[-1][..., 0].mean()  # after the final norm: nearly constant
        p = out.logits.float().softmax(-1)[..., eos_id].mean()
        head[eos_id, 0] += (math.log(target / (1 - target)) - math.log(p / (1 - p))) / feature


def prepare_workload(name: str, directory: Path) -> Path:
    """Save the workload's initial weights, tokenizer and prompts (prompts.jsonl) into `directory`."""
    from deepseek_rl.data.tasks.addition import AdditionTask
    from deepseek_rl.models.loading import load_model, load_tokenizer

    spec = WORKLOADS[name]
    model_cfg = ModelConfig(tokenizer=spec.tokenizer, **spec.model)
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg, tokenizer, seed=0)
    if spec.mean_length is not None:
        end_with_probability(model, tokenizer.eos_token_id, spec.mean_length)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if spec.data == "addition":
        problems = AdditionTask(2, 1234).splits(200, 0, 0)["train"]
        rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in problems]
    else:
        lines = (shared_dir() / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:64]
        rows = [{"prompt": json.loads(line)["question"], "answer": json.loads(line)["answer"]} for line in lines]
    (directory / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def flops_per_token(model_dir: Path) -> dict:
    """Model FLOPs of the training phase with KL off (one forward + backward of the policy = 3 forwards), per real
    token: `layer` = 6 x layers x (attention + MLP matrices) for every token, `head` = 6 x hidden x vocab for each
    completion token (logits only there), `attention` = 6 x layers x hidden per token per position attended
    (causal: half the sequence on average). bench_trl multiplies them by each step's real token counts."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * d // config.num_attention_heads
    per_layer = d * d * 2 + 2 * d * kv + 3 * d * config.intermediate_size
    prompt = json.loads((model_dir / "prompts.jsonl").read_text().splitlines()[0])["prompt"]
    from transformers import AutoTokenizer

    p = len(AutoTokenizer.from_pretrained(model_dir)(prompt)["input_ids"])
    return {"layer": 6 * layers * per_layer, "head": 6 * d * vocab, "attention": 6 * layers * d, "prompt_tokens": p}


def run_ours(spec: Workload, model_dir: Path, kl: float, steps: int, packed: bool = False) -> dict:
    from deepseek_rl.stages.grpo import train

    batch = spec.prompts_per_step * spec.num_generations
    cfg = Config(
        model=ModelConfig(path=str(model_dir), tokenizer=None),
        data=DataConfig(task=None, path=str(model_dir / "prompts.jsonl")),
        rollout=RolloutConfig(
            max_prompt_length=spec.max_prompt_length, max_completion_length=spec.max_completion_length
        ),
        reward=RewardConfig(weights=dict(spec.rewards)),
        algorithm=AlgorithmConfig(num_generations=spec.num_generations, lr=spec.lr, loss_type="dapo", kl_coef=kl),
        optimizer=OptimizerConfig(betas=[0.9, 0.999], max_grad_norm=1.0),
        trainer=TrainerConfig(
            batch_size=batch, micro_batch_size=batch, max_steps=steps, save_final=False, padding_free=packed
        ),
        logger=LoggerConfig(kind="none"),
        eval=EvalConfig(every=0),
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp))
        lines = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    records = []
    for m in lines:
        phases = {"generation": m["time/generation"], "reward": m["time/reward"], "logprobs": m["time/logprobs"]}
        records.append(
            {"step": m["time/step"], **phases, "update": m["time/step"] - sum(phases.values()),
             "completion_tokens": m["completion_length/mean"] * batch, "mean_reward": m["reward"]}
        )  # fmt: skip
    return {"steps": records, "peak_memory_mb": peak_memory_mb()}


def _timed(fn, times: dict, key: str, only_without_grad: bool = False):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if only_without_grad and torch.is_grad_enabled():
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[key] += time.perf_counter() - start

    return wrapper


def run_trl(spec: Workload, model_dir: Path, kl: float, steps: int) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from deepseek_rl.rewards import resolve_reward

    times: dict[str, float] = defaultdict(float)
    records: list[dict] = []
    batch = spec.prompts_per_step * spec.num_generations
    funcs = [_timed(resolve_reward(name), times, "reward") for name in spec.rewards]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            times.clear()
            times["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - times["start"]
            phases = {k: times.get(k, 0.0) for k in ("generation", "reward", "logprobs")}
            metrics = trainer._metrics["train"]
            tokens, reward = metrics["completions/mean_length"][-1] * batch, metrics["reward"][-1]
            records.append(
                {"step": total, **phases, "update": total - sum(phases.values()), "completion_tokens": tokens,
                 "mean_reward": reward}
            )  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=batch, num_generations=spec.num_generations,
            max_completion_length=spec.max_completion_length, learning_rate=spec.lr, lr_scheduler_type="constant",
            adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0, loss_type="dapo", beta=kl,
            epsilon=0.2, scale_rewards="group", temperature=1.0, top_p=1.0, num_iterations=1,
            gradient_accumulation_steps=1, max_steps=steps, logging_steps=1, report_to="none", use_cpu=True,
            bf16=False, seed=0, save_strategy="no", reward_weights=list(spec.rewards.values()), disable_tqdm=True,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dataset = datasets.load_dataset("json", data_files=str(model_dir / "prompts.jsonl"), split="train")
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[StepTimer()])  # fmt: skip
        trainer.model.generate = _timed(trainer.model.generate, times, "generation")
        trainer._get_per_token_logps_and_entropies = _timed(
            trainer._get_per_token_logps_and_entropies, times, "logprobs", only_without_grad=True
        )
        trainer.train()
    return {"steps": records, "peak_memory_mb": peak_memory_mb()}


@torch.no_grad()
def sampler_vs_generate(model_dir: Path, rows: int = 16, new_tokens: int = 256) -> tuple[float, float]:
    """Tokens/s of our sampler and of HF `generate` (sampling, KV cache) on the same prompts and weights."""
    from transformers import AutoModelForCausalLM

    from deepseek_rl.data.prompts import build_prompt_set
    from deepseek_rl.models.loading import eos_token_ids, load_tokenizer
    from deepseek_rl.rollout.sampler import RowUniforms, generate_rollouts

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(ModelConfig(path=str(model_dir), tokenizer=None))
    data = DataConfig(task=None, path=str(model_dir / "prompts.jsonl"))
    batch = build_prompt_set(data, tokenizer, 512).batch(list(range(rows)), tokenizer.pad_token_id)
    rollout = RolloutConfig(max_prompt_length=512, max_completion_length=new_tokens)
    best_ours, best_hf = 0.0, 0.0
    for _ in range(2):
        start = time.perf_counter()
        uniforms = RowUniforms(0, rows, 0, rows)
        out = generate_rollouts(model, tokenizer, batch, rollout, 1, eos_token_ids(tokenizer, model), uniforms)
        best_ours = max(best_ours, out.completion_mask.sum().item() / (time.perf_counter() - start))
        start = time.perf_counter()
        generated = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=True,
                                   max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        tokens = (generated[:, batch.input_ids.shape[1] :] != tokenizer.pad_token_id).sum().item()
        best_hf = max(best_hf, tokens / (time.perf_counter() - start))
    return best_ours, best_hf


def main() -> None:
    framework, workload, model_dir, kl, steps, out = sys.argv[1:7]
    spec = WORKLOADS[workload]
    if framework == "trl":
        result = run_trl(spec, Path(model_dir), float(kl), int(steps))
    else:
        result = run_ours(spec, Path(model_dir), float(kl), int(steps), packed=framework == "ours_packed")
    result["flops_per_token"] = flops_per_token(Path(model_dir))
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
