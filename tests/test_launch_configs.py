"""Every accelerate config in launch/ parses and its header shows the exact command that uses it."""

import pytest
import yaml

from .conftest import REPO

CONFIGS = sorted((REPO / "launch").glob("*.yaml"))


def test_launch_folder_has_every_backend():
    names = {p.name for p in CONFIGS}
    assert {"cpu_ddp.yaml", "ddp.yaml", "zero2.yaml", "zero3.yaml", "zero3_offload.yaml", "fsdp2.yaml"} <= names
    assert any("multinode" in n for n in names) and (REPO / "launch" / "slurm.sh").exists()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_header_shows_its_command(path):
    text = path.read_text()
    config = yaml.safe_load(text)
    assert config["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert f"accelerate launch --config_file launch/{path.name}" in header
    assert "-m deepseek_rl.train --config-name" in header
    if config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 3:
        assert config["deepspeed_config"]["zero3_save_16bit_model"] is True  # needed for the HF export
