"""The GPU check: one command that measures what matters on one GPU and writes it to one JSON report.

    python -m deepseek_rl.tools.gpu_check --shape r1_1.5b --output report.json   # one GPU, under 8 minutes
    python -m deepseek_rl.tools.gpu_check --shape tiny                           # the same code path on CPU, seconds
    bash launch/gpu_check.sh run --shape r1_1.5b                                 # on a machine without network

On a random model of DeepSeek-R1-Distill-Qwen-1.5B's shape (its config.json, beside the R1 tokenizer in ../shared;
`7b`: DeepSeek-R1-Distill-Qwen-7B's dimensions; `tiny`: 2 layers of width 64 with the same vocabulary), in bf16 on a
GPU (fp32 on CPU), with GSM8K-like arithmetic prompts written by the check itself (no data download):

engine      the built-in engine's completion tokens/s (rows x new tokens; a random model rarely samples EOS, so
            every row runs to the limit) and its peak memory; then an eighth of the tokens with each decode step
            replayed from a CUDA graph (the default) and eagerly (rollout.cuda_graphs=false);
decode_profile  one decode step's model time, eager and replayed from a CUDA graph (and their logits' largest
            gap), and the sampling's;
agreement   the sampler's log-prob of each sampled token (KV-cached decode) against the trainer's (one forward over
            prompt + completion), both in the model's dtype: the mismatch a user sees before any correction;
grpo_step   two steps of the real `gsm8k_grpo_r1_distill` recipe through the real CLI (rollout, rewards, reference
            log-probs, update; gradient checkpointing as the recipe has it); the second step's phases, and the
            update's MFU: useful model FLOPs (6 x matmul parameters + causal attention, per real token; the
            recomputed forward not counted) / update seconds / the GPU's dense bf16 peak;
packed      the same with trainer.padding_free=true;
fsdp2       the same, smaller, under `accelerate launch --config_file launch/fsdp2.yaml` on one process (GPU only);
lora        the same, smaller, with LoRA adapters (model.lora.r=32);
async       four steps, smaller still, with asynchronous rollouts (rollout.max_staleness=1): a rollout worker
            started beside the trainer on the same device samples step s + 1 while the trainer updates step s and
            receives the weights after each optimizer step (over gloo); the seconds and megabytes of one weight
            sync, the staleness, the sampler's log-prob gap;
fsdp2_async both: the weights streamed to the worker from FSDP2's sharded parameters (GPU only).

Each section is timed and recorded as ok, failed (with the end of its error) or skipped (with why: a missing
package, CPU, the time budget, or the preflight of train: the training sections run with trainer.preflight=error,
so what this GPU cannot hold, such as the 7B shape's full fine-tuning, stops in seconds with the estimate); the
report is rewritten after every section, so a run cut short keeps what it measured. Top-level keys:
`tokens_per_second` (engine), `mfu` (grpo_step's update), `sections`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from deepseek_rl.batch import PromptBatch
from deepseek_rl.paths import launch_dir, shared_dir
from deepseek_rl.rollout.seeds import RowNoise
from deepseek_rl.tools.gpu_setup import (
    DATASHEET_BF16_TFLOPS,
    SIZES,
    Sizes,
    build_model,
    matmul_tflops,
    padding_free_available,
    pythonpath,
    synchronize,
    unusable_packages,
    write_prompts,
)

# progress bars, left out of a failed section's error
PROGRESS = re.compile(r"\d+%\||examples/s\]|it/s\]")


class Skipped(Exception):
    """A section that cannot run here, found out once it started (e.g. the preflight: it does not fit the GPU)."""


class Check:
    """The sections, sharing one model directory and one report."""

    def __init__(self, shape: str, sizes: Sizes, work: Path, output: Path | None, tokenizer_dir: Path):
        self.shape, self.sizes, self.work, self.output = shape, sizes, work, output
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.start = time.perf_counter()
        self.model_dir, self.prompts = work / "model", work / "prompts.jsonl"
        self.tokenizer_dir = tokenizer_dir
        self.report: dict = {"shape": shape, "sizes": sizes.__dict__, "sections": {}}

    def save(self) -> None:
        self.report["wall_s"] = round(time.perf_counter() - self.start, 1)
        if self.output is not None:
            self.output.write_text(json.dumps(self.report, indent=2) + "\n")

    def section(self, name: str, run, skip: str | None = None) -> None:
        """Run one section, recording ok / failed / skipped and its seconds."""
        elapsed = time.perf_counter() - self.start
        if skip is None and elapsed > self.sizes.budget_s:
            skip = f"time budget: {elapsed:.0f} s used of {self.sizes.budget_s:.0f}"
        if skip is not None:
            self.report["sections"][name] = {"status": "skipped", "why": skip}
            print(f"gpu_check: {name}: skipped ({skip})", flush=True)
            self.save()
            return
        print(f"gpu_check: {name} ...", flush=True)
        begin = time.perf_counter()
        try:
            result = {"status": "ok", **run()}
        except Skipped as why:
            result = {"status": "skipped", "why": str(why)}
        except Exception as err:  # a failed section is a finding, not the end of the check
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[-4000:],
                      "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        result["seconds"] = round(time.perf_counter() - begin, 1)
        self.report["sections"][name] = result
        print(f"gpu_check: {name}: {json.dumps(result)[:600]}", flush=True)
        self.save()

    def environment(self) -> dict:
        import accelerate
        import transformers

        info = {"torch": torch.__version__, "transformers": transformers.__version__,
                "accelerate": accelerate.__version__, "python": sys.version.split()[0]}  # fmt: skip
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name()
            memory = torch.cuda.get_device_properties(0).total_memory / 2**30
            info |= {"device": name, "cuda": torch.version.cuda, "device_memory_gib": round(memory, 1)}
            datasheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
        else:
            info["device"] = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
            datasheet = None
        info["matmul_tflops_measured"] = round(matmul_tflops(self.device, self.dtype), 2)
        # the peak MFU is counted against: the datasheet's dense bf16 peak on a known GPU, else the measured rate
        info["peak_tflops"] = datasheet or info["matmul_tflops_measured"]
        info["peak_source"] = "datasheet dense bf16" if datasheet else "measured matmul"
        return info

    def prompt_batch(self, rows: int, group: int, tokenizer) -> PromptBatch:
        """The first rows // group prompts, rendered with the chat template (as the recipe's data.template=chat)."""
        lines = self.prompts.read_text().splitlines()[: rows // group]
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": json.loads(line)["question"]}],
                                          tokenize=False, add_generation_prompt=True)
            for line in lines
        ]  # fmt: skip
        encoded = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        return PromptBatch(encoded["input_ids"], encoded["attention_mask"], texts, {})

    def load(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype).to(self.device)
        return model.eval(), tokenizer

    def engine(self) -> dict:
        from deepseek_rl.config.rollout import RolloutConfig
        from deepseek_rl.models.loading import eos_token_ids
        from deepseek_rl.rollout.engine import BuiltinEngine

        model, tokenizer = self.load()
        rows, tokens = self.sizes.engine_rows, self.sizes.engine_tokens
        engine = BuiltinEngine(model, tokenizer, eos_token_ids(tokenizer, model))
        batch = self.prompt_batch(rows, 8 if rows >= 8 else rows, tokenizer)
        group = rows // len(batch)

        def timed(cfg: RolloutConfig):
            synchronize(self.device)
            begin = time.perf_counter()
            out = engine.generate(batch, group, cfg, RowNoise(1, rows))
            synchronize(self.device)
            return out, time.perf_counter() - begin

        with engine.session():
            warm = RolloutConfig(max_prompt_length=256, max_completion_length=16, temperature=0.6, top_p=0.95)
            engine.generate(batch, group, warm, RowNoise(0, rows))
            cfg = replace(warm, max_completion_length=tokens)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out, seconds = timed(cfg)
            sampled = int(out.completion_mask.sum())
            result = {"rows": rows, "new_tokens": tokens, "completion_tokens": sampled, "generate_s": round(seconds, 2),
                      "tokens_per_second": round(sampled / seconds, 1),
                      "decode_steps_per_second": round(out.completion_ids.shape[1] / seconds, 1)}  # fmt: skip
            if self.device.type == "cuda":
                result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            # an eighth of the tokens, each step replayed from a CUDA graph (the default) and eagerly: their ratio
            short = max(16, tokens // 8)
            for graphs in (True, False):
                out, seconds = timed(replace(cfg, max_completion_length=short, cuda_graphs=graphs))
                rate = int(out.completion_mask.sum()) / seconds
                result[f"{'graphed' if graphs else 'eager'}_tokens_per_second_{short}"] = round(rate, 1)
        self.report["tokens_per_second"] = result["tokens_per_second"]
        return result

    def agreement(self) -> dict:
        from deepseek_rl.algo.logprobs import completion_logprobs
        from deepseek_rl.config.rollout import RolloutConfig
        from deepseek_rl.models.loading import eos_token_ids
        from deepseek_rl.rollout.sampler import RowUniforms, StopStrings, sample_completions

        model, tokenizer = self.load()
        rows, tokens = min(16, self.sizes.engine_rows), min(512, self.sizes.engine_tokens)
        batch = self.prompt_batch(rows, 4, tokenizer)
        group = rows // len(batch)
        cfg = RolloutConfig(max_prompt_length=256, max_completion_length=tokens, temperature=1.0, top_p=1.0)
        ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        completion, completion_mask, _, sampled = sample_completions(
            model, ids, mask, group, cfg, eos_token_ids(tokenizer, model), tokenizer.pad_token_id,
            StopStrings(tokenizer, []), RowUniforms(3, rows, 0, rows), with_logprobs=True,
        )  # fmt: skip
        full_ids = torch.cat([ids.repeat_interleave(group, 0), completion], dim=1)
        full_mask = torch.cat([mask.repeat_interleave(group, 0), completion_mask], dim=1)
        with torch.no_grad():
            trained = torch.cat([
                completion_logprobs(model, full_ids[i : i + 4], full_mask[i : i + 4], completion.shape[1])[0]
                for i in range(0, rows, 4)
            ])  # fmt: skip
        on = completion_mask.bool()
        diff = (trained - sampled)[on].float()
        ratio = diff.exp()
        return {"dtype": str(self.dtype).removeprefix("torch."), "tokens": int(on.sum()),
                "logprob_abs_diff_mean": diff.abs().mean().item(), "logprob_abs_diff_max": diff.abs().max().item(),
                "ratio_mean": ratio.mean().item(), "ratio_max": ratio.max().item(), "ratio_min": ratio.min().item(),
                "share_ratio_off_by_1pct": (ratio - 1).abs().gt(0.01).float().mean().item(),
                "kl_k3": (ratio - 1 - diff).mean().item()}  # fmt: skip

    def decode_profile(self) -> dict:
        """Where a decode step's time goes: the model's step alone (eager, and replayed from a CUDA graph), sampling
        alone, each over 32 steps."""
        from deepseek_rl.config.rollout import RolloutConfig
        from deepseek_rl.rollout.graphed_decode import GraphedDecoder
        from deepseek_rl.rollout.sampler import RowUniforms, make_decoder, sample_tokens

        model, tokenizer = self.load()
        rows = self.sizes.engine_rows
        batch = self.prompt_batch(rows, 8 if rows >= 8 else rows, tokenizer)
        group = rows // len(batch)
        cfg = RolloutConfig(max_prompt_length=256, max_completion_length=64, temperature=0.6, top_p=0.95)
        ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        decoder, graphed = make_decoder(model), GraphedDecoder(model, capture=self.device.type == "cuda")
        logits = decoder.prefill(ids, mask, group, 80)
        graphed.prefill(ids, mask, group, 80)
        uniforms = RowUniforms(0, rows, 0, rows)
        token = sample_tokens(logits, cfg, uniforms.next())
        # the same first step both ways (the graphed one captured here): the logits a CUDA graph changes
        gap = (graphed.step(token).float() - decoder.step(token).float()).abs().max().item()
        result = {"rows": rows, "graphed": graphed.graph is not None, "graphed_logit_abs_diff_max": gap}
        for name, work in (("model_step_ms", lambda: decoder.step(token)),
                           ("graphed_step_ms", lambda: graphed.step(token)),
                           ("sample_ms", lambda: sample_tokens(logits, cfg, uniforms.next())),
                           ("sample_top_p_1_ms", lambda: sample_tokens(logits, RolloutConfig(), uniforms.next())),
                           ("sync_ms", lambda: bool(token.eq(0).all()))):  # fmt: skip
            work()
            synchronize(self.device)
            begin = time.perf_counter()
            for _ in range(32):
                work()
            synchronize(self.device)
            result[name] = round((time.perf_counter() - begin) / 32 * 1000, 3)
        return result

    def grpo_step(
        self, name: str, rows: int, tokens: int, overrides: list[str], launcher: list[str], steps: int = 2
    ) -> dict:
        """`steps` steps of the GSM8K recipe through the real CLI; the last step's phases and the update's MFU."""
        from deepseek_rl.preflight.check import STOPPED

        out = self.work / name
        group = 8 if rows >= 16 else 4
        # full fine-tuning keeps fp32 master weights under bf16 autocast on a GPU (what the preflight asks for);
        # LoRA trains fp32 adapters on the bf16 base
        lora = any(o.startswith("model.lora.r=") for o in overrides)
        dtype = "bfloat16" if self.device.type == "cuda" and lora else "float32"
        cmd = [
            *launcher, "--config-name", "gsm8k_grpo_r1_distill", "logger=none", f"model.path={self.model_dir}",
            f"model.dtype={dtype}", f"data.path={self.prompts}", "data.eval_path=null",
            "rollout.engine=builtin", f"rollout.max_completion_length={tokens}", f"algorithm.num_generations={group}",
            f"trainer.batch_size={rows}", f"trainer.micro_batch_size={min(self.sizes.micro_batch, rows)}",
            f"trainer.max_steps={steps}", "trainer.save_every=0", "trainer.save_final=false", "trainer.preflight=error",
            "eval.every=0", "reward.num_workers=2", f"trainer.output_dir={out}", *overrides,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": pythonpath()}
        if self.device.type == "cuda":
            env.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.work)
        if STOPPED in done.stderr:  # on a GPU: what does not fit is skipped in seconds, not run out of memory
            problems = done.stderr[done.stderr.find("verdict:") :].split("\n\n")[0]
            raise Skipped(f"the preflight check of this GPU: {problems}")
        if done.returncode != 0:  # the error without progress bars, from the first traceback on where there is one
            lines = [line for line in done.stderr.splitlines() if not PROGRESS.search(line)]
            text = "\n".join(lines)
            first = text.find("Traceback")
            raise RuntimeError(f"exit {done.returncode}: {text[first if first >= 0 else 0 :][:6000]}")
        rows_logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        last = rows_logged[-1]
        phases = {k: round(v, 3) for k, v in last.items() if k.startswith("time/")}
        result = {"rows": rows, "new_tokens": tokens, "model_dtype": dtype, "overrides": overrides, "phases_s": phases,
                  "completion_length_mean": last.get("completion_length/mean"),
                  "tokens_per_second_generation": last.get("tokens_per_second"), "loss": last.get("loss"),
                  "reward": last.get("reward")}  # fmt: skip
        if "rollout/staleness_max" in last:  # async: the last weight sync between two steps (not the first one)
            synced = [row for row in rows_logged[1:] if row.get("rollout/weight_sync_mb")]
            result |= {"staleness_max": last["rollout/staleness_max"],
                       "logprob_abs_diff": last.get("rollout/logprob_abs_diff"),
                       "weight_sync_s": synced[-1]["time/weight_sync"] if synced else None,
                       "weight_sync_mb": synced[-1]["rollout/weight_sync_mb"] if synced else None}  # fmt: skip
        flops = self.update_flops(rows, last.get("completion_length/mean", tokens))
        peak = self.report["environment"]["peak_tflops"] * 1e12
        if phases.get("time/update"):
            result["update_mfu"] = round(flops / phases["time/update"] / peak, 4)
            result["update_tflops"] = round(flops / phases["time/update"] / 1e12, 4)
        if phases.get("time/logprobs"):  # the reference model's forward (kl_coef > 0): a third of the update's FLOPs
            result["logprobs_mfu"] = round(flops / 3 / phases["time/logprobs"] / peak, 4)
        return result

    def update_flops(self, rows: int, completion_length: float) -> float:
        """Useful FLOPs of one policy forward + backward over the step's real tokens: 6 x matmul parameters per
        token, plus causal attention (6 x layers x width x context per token on average)."""
        model = self.report["model"]
        context = self.report["prompt_tokens_mean"] + completion_length
        per_token = 6 * model["matmul_parameters"] + 6 * model["layers"] * model["hidden_size"] * context
        return rows * context * per_token


SECTIONS = ("engine", "decode_profile", "agreement", "grpo_step", "packed", "fsdp2", "lora", "async", "fsdp2_async")


def run_check(shape: str, sizes: Sizes, sections: list[str], output: Path | None, tokenizer_dir: Path, work: Path):
    check = Check(shape, sizes, work, output, tokenizer_dir)
    check.report["environment"] = check.environment()
    check.report["model"] = build_model(shape, tokenizer_dir, check.model_dir, check.device, check.dtype)
    write_prompts(check.prompts)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(check.model_dir)
    check.report["prompt_tokens_mean"] = float(check.prompt_batch(8, 1, tokenizer).attention_mask.sum(1).float().mean())
    check.save()
    broken = unusable_packages()
    no_cli = f"the training CLI cannot import {'; '.join(broken)}" if broken else None
    if no_cli:
        print(f"gpu_check: {no_cli}: the training sections are skipped (launch/gpu_check.sh carries the packages "
              "of launch/gpu_wheels.txt)")  # fmt: skip
    cli = [sys.executable, "-m", "deepseek_rl.cli", "train"]
    fsdp2 = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_dir() / "fsdp2.yaml"),
             "--num_processes", "1", "-m", "deepseek_rl.train"]  # fmt: skip
    big, small = (sizes.step_rows, sizes.step_tokens), (sizes.small_rows, sizes.small_tokens)
    # async: 4 steps with k = 1 (step 1's row holds a weight sync between two steps), on shorter completions
    ahead = (sizes.small_rows, max(16, sizes.small_tokens // 4))
    k1 = ["rollout.max_staleness=1"]
    on_gpu = None if check.device.type == "cuda" else "FSDP through accelerate runs on GPUs only"
    plan = {  # name -> (what runs, why it cannot run here or None)
        "engine": (check.engine, None),
        "decode_profile": (check.decode_profile, None),
        "agreement": (check.agreement, None),
        "grpo_step": (lambda: check.grpo_step("grpo_step", *big, [], cli), no_cli),
        "packed": (
            lambda: check.grpo_step("packed", *big, ["trainer.padding_free=true"], cli),
            no_cli or (None if padding_free_available() else "no trainer.padding_free in this version"),
        ),
        "fsdp2": (lambda: check.grpo_step("fsdp2", *small, [], fsdp2), no_cli or on_gpu),
        "lora": (
            lambda: check.grpo_step("lora", *small, ["model.lora.r=32"], cli),
            no_cli or (None if importlib.util.find_spec("peft") else "peft is not installed"),
        ),
        "async": (lambda: check.grpo_step("async", *ahead, k1, cli, steps=4), no_cli),
        "fsdp2_async": (lambda: check.grpo_step("fsdp2_async", *ahead, k1, fsdp2, steps=4), no_cli or on_gpu),
    }
    for name in sections:
        check.section(name, *plan[name])
        if name == "grpo_step" and "update_mfu" in check.report["sections"][name]:
            check.report["mfu"] = check.report["sections"][name]["update_mfu"]
    return check.report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m deepseek_rl.tools.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--shape", choices=tuple(SIZES), default="r1_1.5b" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--output", type=Path, help="write the JSON report here (default: print it only)")
    r1 = shared_dir() / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"
    parser.add_argument("--tokenizer", type=Path, default=r1, help=f"the R1 tokenizer and config.json ({r1})")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--engine-tokens", type=int, help="new tokens per row in the engine section")
    parser.add_argument("--step-tokens", type=int, help="completion length of the training sections")
    parser.add_argument("--budget-s", type=float, help="skip the sections that would start after this many seconds")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        sys.exit(f"gpu_check: unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    sizes = SIZES[args.shape]
    changes = {"engine_tokens": args.engine_tokens, "budget_s": args.budget_s}
    if args.step_tokens:
        changes |= {"step_tokens": args.step_tokens, "small_tokens": args.step_tokens}
    sizes = replace(sizes, **{k: v for k, v in changes.items() if v})
    missing = [name for name in ("transformers", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"gpu_check: missing {', '.join(missing)}: pip install {' '.join(missing)}")
    if not (args.tokenizer / "tokenizer.json").is_file():
        sys.exit(f"gpu_check: no tokenizer at {args.tokenizer}: set DEEPSEEK_RL_SHARED or --tokenizer "
                 "(launch/gpu_check.sh carries it)")  # fmt: skip
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        report = run_check(args.shape, sizes, sections, args.output, args.tokenizer, Path(tmp))
    summary = {k: report.get(k) for k in ("shape", "tokens_per_second", "mfu", "wall_s")}
    summary["sections"] = {k: v["status"] for k, v in report["sections"].items()}
    print(json.dumps(summary, indent=2))
    return report


if __name__ == "__main__":
    main()
