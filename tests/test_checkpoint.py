"""Checkpoint files: atomic writes, the newest complete one is picked, keep_last, and a full state round trip."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from deepseek_rl.infra.checkpoint import (
    STATE_FILE,
    TrainerState,
    complete_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def setup():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    acc.register_for_checkpointing(sched)
    return acc, model, opt, sched


def _train_step(model, opt, sched):
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_round_trip_restores_model_optimizer_scheduler(setup, tmp_path: Path):
    acc, model, opt, sched = setup
    _train_step(model, opt, sched)
    saved = TrainerState(step=1, wandb_run_id="abc", mlflow_run_id="def", train_seconds=2.5, train_tokens=640.0)
    path = save_checkpoint(acc, tmp_path, saved, keep_last=2)
    weights, lr, adam = model.weight.clone(), sched.get_last_lr(), opt.state_dict()["state"][0]["exp_avg"].clone()
    _train_step(model, opt, sched)
    assert not torch.equal(model.weight, weights)
    state = load_checkpoint(acc, path)
    assert state == saved  # the tracker runs and the training budget spent so far (the control's) come back too
    assert torch.equal(model.weight, weights)
    assert sched.get_last_lr() == lr
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], adam)


def test_keep_last_and_newest_complete_is_picked(setup, tmp_path: Path):
    acc, model, opt, sched = setup
    for step in (2, 4, 6):
        save_checkpoint(acc, tmp_path, TrainerState(step=step), keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    # a folder without trainer_state.json (or a .tmp- folder) is never a checkpoint
    (tmp_path / "checkpoints" / "step-00000099").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-00000100").mkdir()
    assert complete_checkpoints(tmp_path)[-1].name == "step-00000006"


def test_a_save_killed_midway_leaves_the_previous_checkpoint(setup, tmp_path: Path, monkeypatch):
    acc, model, opt, sched = setup
    good = save_checkpoint(acc, tmp_path, TrainerState(step=2), keep_last=1)
    weights = model.weight.clone()
    _train_step(model, opt, sched)

    def crash(output_dir):  # writes part of the state, then the process "dies"
        Path(output_dir, "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(acc, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(acc, tmp_path, TrainerState(step=4), keep_last=1)
    assert (tmp_path / "checkpoints" / ".tmp-step-00000004").exists()
    assert complete_checkpoints(tmp_path)[-1] == good
    assert json.loads((good / STATE_FILE).read_text())["step"] == 2
    load_checkpoint(acc, good)
    assert torch.equal(model.weight, weights)


def test_a_full_disk_during_a_save_is_a_storage_error_and_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    import errno

    from deepseek_rl.errors import StorageError
    from deepseek_rl.infra.checkpoint import damage

    acc, model, opt, sched = setup
    good = save_checkpoint(acc, tmp_path, TrainerState(step=2), keep_last=1, config={"algorithm": {"lr": 0.1}})
    assert damage(good) is None and json.loads((good / "config.json").read_text()) == {"algorithm": {"lr": 0.1}}

    def full(output_dir):  # writes part of the state, then the disk is full
        Path(output_dir, "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(acc, "save_state", full)
    with pytest.raises(
        StorageError, match=rf"no space left .* writing checkpoint step-00000004; intact: checkpoint {good}"
    ):
        save_checkpoint(acc, tmp_path, TrainerState(step=4), keep_last=1)
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000004").exists()  # its space given back
    assert complete_checkpoints(tmp_path)[-1] == good and damage(good) is None


def test_damage_finds_missing_and_truncated_files(setup, tmp_path):
    from deepseek_rl.infra.checkpoint import damage

    acc, *_ = setup
    path = save_checkpoint(acc, tmp_path, TrainerState(step=1), keep_last=1)
    assert damage(path) is None
    (path / "optimizer.bin").write_bytes((path / "optimizer.bin").read_bytes()[:10])
    assert damage(path).startswith("optimizer.bin is 10 bytes but was saved with")
    (path / "optimizer.bin").unlink()
    assert damage(path) == "optimizer.bin is missing"
    (path / STATE_FILE).write_text('{"step": ')
    assert damage(path).startswith(f"{STATE_FILE} cannot be read")
