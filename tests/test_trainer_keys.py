"""Every trainer key means the same in every training stage (one scaffold, stages/run.py): the same key on GRPO,
the cold start (SFT) and rejection-sampling fine-tuning writes the same files, through the real CLI."""

import json
from pathlib import Path

import pytest

from .conftest import run_cli

SMALL = ["data.num_digits=2", "data.num_train=60", "data.num_validation=20", "data.num_eval=20"]

# One single-stage run per stage, seconds each; 3 optimizer steps for every stage.
STAGES = {
    "grpo": ["--config-name", "smoke", "trainer.max_steps=3"],
    "sft": ["--config-name", "r1_sft", "model=tiny", *SMALL, "sft.max_steps=3", "sft.batch_size=8",
            "sft.eval_every=0", "sft.warmup_steps=0"],
    # A verifier that passes everything: a random model keeps its samples, so there is something to fine-tune on.
    "rft": ["--config-name", "r1_rft", "stages=[rft]", "model=tiny", "model.path=null", "model.tokenizer=char", *SMALL,
            "rft.num_prompts=16", "rft.samples=4", "rft.max_steps=3", "rft.batch_size=4",
            "+reward.functions.anything=anything.py:anything", "rft.verifiers=[anything]"],
}  # fmt: skip


def trained(stage: str, tmp_path: Path, *keys: str) -> Path:
    run = tmp_path / "run"
    (tmp_path / "anything.py").write_text("def anything(completions, **kw):\n    return [1.0] * len(completions)\n")
    result = run_cli("train", *STAGES[stage], "logger=none", f"trainer.output_dir={run}", *keys, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]


@pytest.mark.parametrize("stage", list(STAGES))
def test_checkpoint_keys_mean_the_same_in_every_stage(stage: str, tmp_path: Path):
    """save_every=1 with keep_last=1: one checkpoint, the last step's; save_final=false: no export."""
    run = trained(stage, tmp_path, "trainer.save_every=1", "trainer.keep_last=1", "trainer.save_final=false")
    assert steps(run)[-1] == 3
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")] == ["step-00000003"]
    assert not (run / "final").exists()


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_defaults_export_and_keep_no_checkpoint_in_every_stage(stage: str, tmp_path: Path):
    """save_every=0 (the default): no checkpoint; save_final=true (the default): the Hugging Face export; a second
    run in the same folder is refused unless trainer.overwrite=true."""
    run = trained(stage, tmp_path)
    assert (run / "final" / "config.json").exists() and (run / "final" / "model.safetensors").exists()
    assert not list(run.glob("checkpoints/step-*"))
    again = run_cli("train", *STAGES[stage], "logger=none", f"trainer.output_dir={run}", cwd=tmp_path)
    assert again.returncode == 2 and "trainer.overwrite" in again.stderr.strip().splitlines()[-1]
