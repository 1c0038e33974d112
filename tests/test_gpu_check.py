"""The GPU check's code path on CPU at its smallest shape, so it is known to work before a GPU is lent."""

import json
import subprocess
import sys

from .conftest import REPO


def test_gpu_check_tiny_runs_every_section_on_cpu(tmp_path, shared):
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "deepseek_rl.tools.gpu_check", "--shape", "tiny", "--output", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    sections = report["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {
        "engine": "ok", "decode_profile": "ok", "agreement": "ok", "grpo_step": "ok", "lora": "ok",
        "packed": sections["packed"]["status"], "fsdp2": "skipped",  # FSDP via accelerate: GPU only
    }  # fmt: skip
    assert "GPUs only" in sections["fsdp2"]["why"]
    engine = sections["engine"]
    assert engine["completion_tokens"] == 8 * 32 and report["tokens_per_second"] == engine["tokens_per_second"] > 0
    # fp32 on CPU: the sampler's and the trainer's log-probs of the same tokens agree to rounding
    assert sections["agreement"]["tokens"] > 0 and sections["agreement"]["logprob_abs_diff_max"] < 1e-4
    step = sections["grpo_step"]
    assert set(step["phases_s"]) >= {"time/generation", "time/update", "time/logprobs", "time/step"}
    assert 0 < report["mfu"] == step["update_mfu"] < 1
    assert report["model"]["layers"] == 2 and report["environment"]["peak_tflops"] > 0


def test_gpu_check_names_a_missing_tokenizer(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "deepseek_rl.tools.gpu_check", "--shape", "tiny", "--tokenizer", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "no tokenizer at" in done.stderr and "DEEPSEEK_RL_SHARED" in done.stderr
    assert "Traceback" not in done.stderr
