"""SFT and RFT on the shared machinery: the cold start on 2 processes (DDP and ZeRO-3) against one process, exact
resume after preemption, the LR schedule sized in optimizer steps, and fine-tuning examples from chat data."""

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from deepseek_rl.config import DataConfig
from deepseek_rl.data.examples import load_examples, strip_reopened_think, tokenize_examples
from deepseek_rl.models.char_tokenizer import build_char_tokenizer

from .conftest import R1_TOKENIZER, run_cli
from .test_distributed import _interrupted_then_resumed, launch, metrics, rank_reports

SFT = [
    "--config-name", "r1_sft", "logger=none", "model=tiny", "data.num_digits=2", "data.num_train=300",
    "data.num_validation=16", "sft.max_steps=6", "sft.batch_size=16", "sft.micro_batch_size=4", "sft.eval_every=3",
    "sft.num_validation=16", "sft.stop_accuracy=null", "sft.warmup_steps=2", "optimizer.schedule=linear",
]  # fmt: skip


@pytest.fixture(scope="module")
def single_sft(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sft1")
    result = run_cli("train", *SFT, f"trainer.output_dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def test_sft_single_process_logs_loss_lr_and_validation(single_sft: Path):
    lines = metrics(single_sft)
    losses = [m for m in lines if "loss" in m]
    assert [m["step"] for m in losses] == [1, 2, 3, 4, 5, 6]
    # warmup 2 then linear decay to 0 at step 6, the logged lr being the one after each optimizer step
    lr = 1e-3
    expected = [lr * f for f in (2 / 3, 1.0, 0.75, 0.5, 0.25, 0.0)]
    assert [m["lr"] for m in losses] == pytest.approx(expected, abs=1e-12)
    assert [m["step"] for m in lines if "validation/sampled_accuracy" in m] == [3, 6]
    assert (single_sft / "final" / "model.safetensors").exists()


def test_the_cold_start_stops_on_the_metric_it_names(tmp_path: Path):
    from deepseek_rl.config.stages import SFTConfig
    from deepseek_rl.stages.sft import reached

    check = {"eval/greedy_accuracy": 0.5, "eval/sampled_accuracy": 0.1}
    assert reached(check, SFTConfig(stop_metric="greedy_accuracy", stop_accuracy=0.45))
    assert not reached(check, SFTConfig(stop_metric="sampled_accuracy", stop_accuracy=0.15))
    assert reached(check, SFTConfig(stop_metric="sampled_accuracy", stop_accuracy=0.1))
    assert not reached(check, SFTConfig(stop_metric="greedy_accuracy", stop_accuracy=None))
    # the band: a check whose greedy accuracy overshoots it (or falls short of it) does not stop
    assert reached(check, SFTConfig(stop_accuracy=0.1, stop_greedy_band=[0.35, 0.5]))
    assert not reached(check, SFTConfig(stop_accuracy=0.1, stop_greedy_band=[0.35, 0.49]))
    assert not reached(check, SFTConfig(stop_accuracy=0.1, stop_greedy_band=[0.51, 0.7]))
    assert not reached(check, SFTConfig(stop_accuracy=0.15, stop_greedy_band=[0.35, 0.7]))
    args = [a for a in SFT if not a.startswith("sft.stop_accuracy")]
    stop = ["sft.stop_metric=greedy_accuracy", "sft.stop_accuracy=0.0", "sft.stop_greedy_band=null",
            f"trainer.output_dir={tmp_path / 'run'}"]
    result = run_cli("train", *args, *stop, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cold start stopped after 3 steps" in result.stdout + result.stderr  # the first check: greedy >= 0
    wrong = run_cli("train", *args, "sft.stop_metric=pass@8", cwd=tmp_path)
    assert wrong.returncode == 2 and "sft.stop_metric" in wrong.stderr.strip().splitlines()[-1]
    wrong = run_cli("train", *args, "sft.stop_greedy_band=[0.7,0.3]", cwd=tmp_path)
    assert wrong.returncode == 2 and "sft.stop_greedy_band" in wrong.stderr.strip().splitlines()[-1]
    # a band no check can meet: the cold start runs to sft.max_steps and says so
    never = ["sft.stop_accuracy=0.0", "sft.stop_greedy_band=[1.0,1.0]", f"trainer.output_dir={tmp_path / 'never'}"]
    result = run_cli("train", *args, *never, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no validation check met sft.stop_accuracy=0.0" in result.stdout


@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "zero3.yaml"])
def test_sft_on_two_processes_matches_one(config, single_sft: Path, tmp_path: Path):
    result = launch(config, [*SFT, f"trainer.output_dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = rank_reports(tmp_path / "run")
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    assert reports[0]["parameter_sha256"] == reports[1]["parameter_sha256"]
    one, two = metrics(single_sft), metrics(tmp_path / "run")
    assert [m["step"] for m in one] == [m["step"] for m in two]
    for a, b in zip(one, two, strict=True):
        if "loss" in a:  # the loss is the same global token mean, split over ranks and micro-batches
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
            assert b["tokens"] == a["tokens"]
        else:  # the validation check is split over ranks in whole batches: the same samples
            assert b["validation/sampled_accuracy"] == a["validation/sampled_accuracy"]
    if config == "zero3.yaml":
        (single,) = rank_reports(single_sft)
        assert reports[0]["local_parameter_elements"] < single["local_parameter_elements"]  # partitioned


def test_sft_resumes_exactly_after_preemption(single_sft: Path, tmp_path: Path):
    run = tmp_path / "cut"
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *SFT, "trainer.save_every=2", f"trainer.output_dir={run}"]
    _interrupted_then_resumed(cmd, run, tmp_path, signal.SIGTERM, lines=2)
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert losses == [m["loss"] for m in metrics(single_sft) if "loss" in m]
    assert rank_reports(run)[0]["parameter_sha256"] == rank_reports(single_sft)[0]["parameter_sha256"]


@pytest.mark.parametrize("iterations", [1, 2])
def test_grpo_lr_schedule_counts_optimizer_steps(iterations, tmp_path: Path):
    """4 steps x num_iterations optimizer steps, 1 warmup step: the lr logged after each training step is the same
    for 1 and 2 passes, and reaches 0 exactly at the last one (sized by max_steps alone, 2 passes hit 0 at step 2)."""
    result = run_cli(
        "train", "--config-name", "smoke", "logger=none", "trainer.max_steps=4", "optimizer.schedule=linear",
        "optimizer.warmup_steps=1", f"algorithm.num_iterations={iterations}", "trainer.save_final=false",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lr = 1e-3
    assert [m["lr"] for m in metrics(tmp_path / "run")] == pytest.approx([lr, lr * 2 / 3, lr / 3, 0.0], abs=1e-12)


def test_examples_train_on_completion_tokens_only():
    tok = build_char_tokenizer()
    examples, cut = tokenize_examples(tok, ["Q:1+2=", "Q:10+20="], ["<answer>3</answer>", "<answer>30</answer>"])
    assert cut == 0
    ids, attention, loss_mask = examples.batch([0, 1], tok.pad_token_id)
    p = ids.shape[1] - loss_mask.shape[1]
    for row, (prompt, completion) in enumerate(zip(examples.prompt_ids, examples.completion_ids, strict=True)):
        assert completion[-1] == tok.eos_token_id
        assert ids[row, p - len(prompt) : p].tolist() == prompt  # left-padded prompt
        assert loss_mask[row].sum().item() == len(completion)  # every completion token and EOS, nothing else
        assert attention[row].sum().item() == len(prompt) + len(completion)
    short, cut = tokenize_examples(tok, ["Q:1+2="], ["<answer>3</answer>"], max_length=8)  # 6 + 3 + EOS
    assert cut == 1 and len(short.prompt_ids[0]) + len(short.completion_ids[0]) == 8


def test_chat_examples_with_the_r1_template(tmp_path: Path, shared):
    """A `messages` column: the prompt is the chat template through the generation prompt (which opens <think>),
    the completion the last assistant message without a second <think>."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(R1_TOKENIZER)
    answer = "<think>\nfour\n</think>\n\n4"
    rows = [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": answer}]},
        {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(task=None, path=str(path), template="chat")
    examples = load_examples(data, tok, "train", "messages", "solution", None)
    prompt = tok.decode(examples.prompt_ids[0])
    assert prompt.rstrip().endswith("<think>") and "2+2?" in prompt
    assert tok.decode(examples.completion_ids[0]) == "four\n</think>\n\n4" + tok.eos_token
    assert tok.decode(examples.completion_ids[1]) == "6" + tok.eos_token
    assert strip_reopened_think("Q:", "<think>x</think>") == "<think>x</think>"


def test_chat_data_errors_name_the_row(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    result = run_cli(
        "train", "--config-name", "r1_sft", "logger=none", "model=tiny_qwen2_r1", "data.task=null",
        f"data.path={path}", "data.template=chat", "sft.messages_column=messages", "sft.eval_every=0",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bad.jsonl, line 1" in result.stderr and "assistant" in result.stderr


def test_cold_start_recipe_runs_on_a_tiny_model(tmp_path: Path, shared):
    """The real cold-start recipe (GSM8K traces for R1-Distill) for 2 steps with model=tiny_like."""
    result = run_cli(
        "train", "--config-name", "gsm8k_sft_r1_distill", "model=tiny_like", "logger=none", "sft.max_steps=2",
        "sft.batch_size=4", "sft.micro_batch_size=2", "sft.eval_every=2", "sft.num_validation=2",
        "rollout.max_completion_length=8", "rollout.top_p=1.0", "data.max_rows=32", "eval.batch_size=2",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = metrics(tmp_path / "run")
    assert [m["step"] for m in lines if "loss" in m] == [1, 2]
    assert any("validation/sampled_accuracy" in m for m in lines)
    assert torch.isfinite(torch.tensor([m["loss"] for m in lines if "loss" in m])).all()
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_pipeline_stages_share_one_process_group(tmp_path: Path):
    """SFT -> GRPO -> eval in 2 DDP processes: each stage gets a fresh accelerator on the same process group, and
    the evaluation is split over the ranks."""
    overrides = [
        "--config-name", "r1_pipeline", *SFT[3:], "trainer.max_steps=2", "trainer.batch_size=16",
        "trainer.micro_batch_size=8", "eval.every=0", "eval.num_prompts=16", "eval.samples=2", "eval.batch_size=8",
        f"trainer.output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    result = launch("cpu_ddp.yaml", overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    for stage in ("sft", "grpo"):
        reports = rank_reports(tmp_path / "run" / stage)
        assert all(r["world_size"] == 2 for r in reports) and len({r["parameter_sha256"] for r in reports}) == 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results) == {"sft", "grpo"}
    samples = (tmp_path / "run" / "eval" / "samples-grpo.jsonl").read_text().splitlines()
    assert len(samples) == 16 * (1 + 2)  # both ranks' shards, gathered


def test_sft_with_lora_adapters(tmp_path: Path):
    """The cold start with LoRA adapters: only the adapters train, the export is a plain model with them merged."""
    from transformers import AutoModelForCausalLM

    result = run_cli(
        "train", *SFT, "sft.max_steps=3", "sft.eval_every=0", "model.lora.r=4",
        f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
