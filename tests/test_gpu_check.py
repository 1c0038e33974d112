"""The GPU check's code path on CPU at its smallest shape, so it is known to work before a GPU is lent."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

# What deepseek-rl depends on that the lent GPU machines' image lacks and launch/gpu_wheels.txt does not carry (the
# image has torch 2.11, transformers 5.17, accelerate 1.15, peft, matplotlib, pandas, pyarrow, tensorboard, ...;
# docs/benchmarks.md): the check must run without them
NOT_ON_THE_GPU_IMAGE = ("deepspeed", "wandb", "vllm", "mlflow", "trl")

SITECUSTOMIZE = """
import importlib.machinery
import sys

ABSENT = {absent!r}


class Absent:
    \"\"\"The path finder without these packages: importing one fails, and find_spec (what accelerate and
    transformers ask before they use a package) says it is not there.\"\"\"

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Absent(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def without_packages(site, names: tuple[str, ...]) -> dict:
    """An environment whose Python processes (and the processes they start) cannot import `names`."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(absent=set(names)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH"))))}


def test_gpu_check_tiny_runs_every_section_on_cpu(tmp_path, shared):
    """Every section, with only what the lent GPU machine has: the packages its image lacks cannot be imported."""
    env = without_packages(tmp_path / "site", NOT_ON_THE_GPU_IMAGE)
    probe = "import importlib.util as u; print([n for n in {names!r} if u.find_spec(n) is None]); import deepspeed"
    hidden = subprocess.run([sys.executable, "-c", probe.format(names=NOT_ON_THE_GPU_IMAGE)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert hidden.stdout.strip() == str(list(NOT_ON_THE_GPU_IMAGE)), hidden.stdout + hidden.stderr
    assert "No module named 'deepspeed'" in hidden.stderr
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "deepseek_rl.tools.gpu_check", "--shape", "tiny", "--output", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    sections = report["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {
        "engine": "ok", "decode_profile": "ok", "agreement": "ok", "grpo_step": "ok", "lora": "ok", "packed": "ok",
        "async": "ok", "fsdp2": "skipped", "fsdp2_async": "skipped",  # FSDP via accelerate: GPU only
    }  # fmt: skip
    assert "GPUs only" in sections["fsdp2"]["why"] and "GPUs only" in sections["fsdp2_async"]["why"]
    # async: a step sampled one version behind, and one weight sync sends every fp32 parameter once
    ahead = sections["async"]
    assert ahead["staleness_max"] == 1 and ahead["weight_sync_s"] > 0
    assert ahead["weight_sync_mb"] * 2**20 == pytest.approx(4 * report["model"]["parameters"])
    engine = sections["engine"]
    assert engine["completion_tokens"] == 8 * 32 and report["tokens_per_second"] == engine["tokens_per_second"] > 0
    assert engine["graphed_tokens_per_second_16"] > 0 and engine["eager_tokens_per_second_16"] > 0
    # on CPU the graphed decoder's fixed-shape step runs eagerly: no graph, the eager step's logits to rounding
    profile = sections["decode_profile"]
    assert profile["graphed"] is False and profile["graphed_logit_abs_diff_max"] < 1e-4
    assert profile["graphed_step_ms"] > 0 and profile["model_step_ms"] > 0
    # fp32 on CPU: the sampler's and the trainer's log-probs of the same tokens agree to rounding
    assert sections["agreement"]["tokens"] > 0 and sections["agreement"]["logprob_abs_diff_max"] < 1e-4
    step = sections["grpo_step"]
    assert set(step["phases_s"]) >= {"time/generation", "time/update", "time/logprobs", "time/step"}
    assert 0 < report["mfu"] == step["update_mfu"] < 1
    assert set(sections["packed"]["phases_s"]) >= {"time/generation", "time/update"}  # trainer.padding_free=true
    assert report["model"]["layers"] == 2 and report["environment"]["peak_tflops"] > 0


def test_gpu_check_names_a_missing_tokenizer(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "deepseek_rl.tools.gpu_check", "--shape", "tiny", "--tokenizer", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "no tokenizer at" in done.stderr and "DEEPSEEK_RL_SHARED" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("module", "named"), [("hydra", "hydra-core"), ("matplotlib", "matplotlib")])
def test_gpu_check_without_the_training_clis_packages_says_so_and_skips_those_sections(tmp_path, shared, module, named):
    """A GPU machine without a package the training CLI imports (nothing to install from there): the engine sections
    run, the training sections are skipped with the reason, and one line names the package. Hydra is one the check
    carries (gpu_wheels.txt); matplotlib is one the lent image has, so the check looks for it only through the
    CLI's own import (deepseek_rl/infra/plots.py imports it)."""
    env = without_packages(tmp_path / "site", (module,))
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "deepseek_rl.tools.gpu_check", "--shape", "tiny", "--sections", "engine,grpo_step",
         "--output", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sections = json.loads(report_path.read_text())["sections"]
    assert sections["engine"]["status"] == "ok" and sections["grpo_step"]["status"] == "skipped"
    assert sections["grpo_step"]["why"].startswith(f"the training CLI cannot import {named} (ModuleNotFoundError")
    line = next(x for x in done.stdout.splitlines() if "the training CLI cannot import" in x)
    assert named in line and "launch/gpu_wheels.txt" in line


def test_a_training_section_the_gpu_cannot_hold_is_skipped_with_the_preflights_problem(tmp_path, shared, monkeypatch):
    """On a GPU the training sections run with trainer.preflight=error: the 7B shape's full fine-tuning (152 GB of
    states) on an 85 GB GPU stops in seconds with the preflight's report, and the section is recorded as skipped
    with its problem, not as a failure minutes later out of memory. The report here is the real preflight's, of the
    command the section runs, for that model and GPU (`deepseek-rl check` without a GPU)."""
    import shutil

    from deepseek_rl.preflight.check import STOPPED
    from deepseek_rl.tools import gpu_check
    from deepseek_rl.tools.gpu_setup import SEVEN_B, SIZES

    r1 = shared / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"
    model = tmp_path / "work" / "model"
    shutil.copytree(r1, model)
    config = json.loads((r1 / "config.json").read_text()) | SEVEN_B
    (model / "config.json").write_text(json.dumps(config))
    ran = []
    real_run = subprocess.run

    def run(cmd, **kwargs):  # the section's train command, checked by the preflight as an 85 GB GPU would
        ran.append(cmd)
        overrides = [a for a in cmd[cmd.index("gsm8k_grpo_r1_distill") + 1 :] if "=" in a]
        report = real_run(
            [sys.executable, "-m", "deepseek_rl.cli", "check", "--config-name", "gsm8k_grpo_r1_distill",
             "--mixed-precision", "bf16", "--device-memory-gb", "85", *overrides],
            capture_output=True, text=True, cwd=REPO, timeout=300,
        )  # fmt: skip
        stop = f"deepseek-rl: {STOPPED} (above); fix them, or set trainer.preflight=warn to run anyway"
        return subprocess.CompletedProcess(cmd, 1, "", report.stdout + report.stderr + "\n" + stop + "\n")

    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    check = gpu_check.Check("7b", SIZES["7b"], tmp_path / "work", None, r1)
    (tmp_path / "work" / "prompts.jsonl").write_text("")
    check.section("grpo_step", lambda: check.grpo_step("grpo_step", 32, 512, [], ["train"]))
    result = check.report["sections"]["grpo_step"]
    assert "trainer.preflight=error" in ran[0] and "model.dtype=float32" in ran[0]
    assert result["status"] == "skipped", result
    assert result["why"].startswith("the preflight check of this GPU: verdict: 1 problem(s)")
    assert "152.3 GB per device" in result["why"] and "over the 76.5 GB budget" in result["why"]
