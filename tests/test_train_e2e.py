"""The real CLI end to end: the smoke recipe trains, logs, exports a checkpoint that transformers reloads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deepseek_rl.config import load_recipe
from deepseek_rl.models.loading import load_model, load_tokenizer

from .conftest import run_cli


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One run of the smoke recipe through the real CLI, with wandb in offline mode."""
    work = tmp_path_factory.mktemp("smoke")
    result = run_cli("train", "--config-name", "smoke", f"trainer.output_dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def test_smoke_writes_metrics_for_every_step(smoke_run: Path):
    lines = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    cfg = load_recipe("smoke")
    assert [m["step"] for m in lines] == list(range(1, cfg.trainer.max_steps + 1))
    for m in lines:
        for key in (
            "reward",
            "loss",
            "kl",
            "entropy",
            "grad_norm",
            "completion_length/mean",
            "reward/format/mean",
            "time/generation",
        ):
            assert key in m
        assert m["grad_norm"] > 0
    assert lines[0]["kl"] == 0.0 and lines[-1]["kl"] > 0  # the reference is the initial policy


def test_smoke_logs_to_wandb_offline(smoke_run: Path):
    runs = list((smoke_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_smoke_checkpoint_reloads_and_every_parameter_changed(smoke_run: Path):
    final = smoke_run / "final"
    assert (
        (final / "config.json").exists()
        and (final / "model.safetensors").exists()
        and (final / "tokenizer.json").exists()
    )
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)

    cfg = load_recipe("smoke")
    initial = load_model(cfg.model, load_tokenizer(cfg.model), seed=cfg.trainer.seed)  # the run's initial weights
    trained = dict(model.named_parameters())
    for name, param in initial.named_parameters():
        assert not torch.equal(param, trained[name]), f"{name} did not change"

    prompt = tokenizer("Q:12+34=", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_r1_tokenizer_recipe_runs_one_step(shared, tmp_path: Path):
    result = run_cli(
        "train",
        "--config-name",
        "r1_tokenizer_smoke",
        "logger=none",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["completion_length/mean"] > 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert len(tokenizer) == 151665
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").config.model_type == "qwen2"


def test_accelerate_launch_runs_the_same_recipe(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "-m",
            "deepseek_rl.train",
            "--config-name",
            "smoke",
            "logger=none",
            "trainer.max_steps=2",
            f"trainer.output_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_training_continues_from_a_local_hf_directory(smoke_run: Path, tmp_path: Path):
    """model.path loads any local Hugging Face causal LM (here: the smoke run's export) and trains it further."""
    result = run_cli(
        "train",
        "--config-name",
        "smoke",
        "logger=none",
        f"model.path={smoke_run / 'final'}",
        "model.tokenizer=null",
        "trainer.max_steps=1",
        f"trainer.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before = AutoModelForCausalLM.from_pretrained(smoke_run / "final")
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)
    assert before.config.hidden_size == after.config.hidden_size
