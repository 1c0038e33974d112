"""The preflight check: the memory model against hand calculations (docs/preflight.md), against autograd's own count
of saved activations, and verdicts on configurations known to fit and known not to."""

import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from deepseek_rl.config import ConfigError, load_recipe
from deepseek_rl.paths import REPO_DIR
from deepseek_rl.preflight.check import check, launch_from_env, launch_from_file, model_shape
from deepseek_rl.preflight.memory import GB, Launch, per_token_layer_activations
from deepseek_rl.preflight.problems import lora_shape
from deepseek_rl.stages.rollout_worker import copy_device

from .conftest import run_cli

ZERO3_BF16_8 = Launch("deepspeed", 8, 3, mixed_precision="bf16", source="zero3")
ONE_GPU_BF16 = Launch("single", 1, mixed_precision="bf16")
P_R1 = 1_777_088_000  # DeepSeek-R1-Distill-Qwen-1.5B, from its config.json (../shared)
P_7B = 7_615_616_512  # Qwen2.5-7B


@pytest.fixture(scope="module")
def r1_path(shared) -> str:
    return str(shared / "tokenizers" / "deepseek-r1-distill-qwen-1.5b")


@pytest.fixture(scope="module")
def qwen7b_dir(tmp_path_factory) -> str:
    """A config.json of the Qwen2.5-7B shape (no weights): 28 layers, hidden 3584, 28 heads, 4 KV heads."""
    directory = tmp_path_factory.mktemp("qwen7b")
    Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    ).save_pretrained(directory)
    return str(directory)


def test_hand_calculation_of_docs_preflight(r1_path):
    """math_dapo_r1_distill on 8 x 80 GB with ZeRO-3 and bf16, built-in engine: every number of docs/preflight.md."""
    cfg = load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}", "rollout.engine=builtin"])
    report = check(cfg, ZERO3_BF16_8, 80 * GB)
    est = report.estimate
    assert report.shape.parameters == P_R1 and report.ok
    p, n = P_R1, 8
    largest = 151_936 * 1536  # the embedding, gathered with its gradient under ZeRO-3 (4 bytes per parameter)
    # weights, grads (DeepSpeed's fp32 partition + the largest layer), AdamW, no ref: DeepSpeed's own 4 L + 18 P / N
    assert [t.bytes for t in est.static] == [p * 2 / n, p * 4 / n + 4 * largest, p * 12 / n, 0]
    assert est.static_bytes == 4_931_942_784 == 4 * largest + 18 * p / n
    kv_per_token = 2 * 28 * 2 * 128 * 2  # K and V, layers, KV heads, head dim, bf16
    assert kv_per_token == 28_672
    assert [t.bytes for t in est.rollout] == [p * 2, 64 * (1024 + 8192) * kv_per_token]
    assert est.rollout[1].bytes == 16_911_433_728
    assert est.evaluation[1].bytes == 128 * 9216 * kv_per_token == 33_822_867_456
    per_token_layer = 2 * (8 * 1536 + 4 * 8960) + 4 * (2 * 1536 + 12 + 2)
    assert per_token_layer == 108_600
    tokens = 4 * 9216
    assert est.training[0].bytes == 28 * tokens * 1536 * 2 + tokens * per_token_layer == 7_174_324_224
    assert est.training[1].bytes == 4 * 8192 * 151_936 * (2 + 4) == 29_871_833_088
    assert round(est.total("rollout") / GB, 2) == 25.40
    assert round(est.total("evaluation") / GB, 2) == 42.31
    assert round(est.total("training") / GB, 2) == 41.98
    assert est.peak()[0] == "evaluation"
    text = report.text()
    for shown in ("1,777,088,000 parameters", "16 micro-batch(es) of 4", "16.91", "29.87", "42.31", "verdict: OK"):
        assert shown in text


def test_hand_calculation_with_vllm(r1_path):
    """The same recipe with its vLLM engine (docs/preflight.md, "With vLLM"): vLLM's 0.3 x 80 GB replaces the KV
    cache and gathered weights of generation; awake, it also sits beside the training phase; asleep it does not."""
    cfg = load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}"])
    est = check(cfg, ZERO3_BF16_8, 80 * GB).estimate
    static, vllm, sync = 4_931_942_784, 0.3 * 80 * GB, 151_936 * 1536 * 2
    assert [t.bytes for t in est.rollout] == [vllm, sync] and sync == 466_747_392
    assert est.total("rollout") == pytest.approx(static + vllm + sync)
    assert round(est.total("rollout") / GB, 2) == 29.40
    assert round(est.total("evaluation") / GB, 2) == 28.93
    assert round(est.total("training") / GB, 2) == 65.98  # 41.98 + 24.00
    asleep = check(
        load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}", "rollout.vllm.sleep_level=2"]),
        ZERO3_BF16_8,
        80 * GB,
    )
    assert round(asleep.estimate.total("training") / GB, 2) == 41.98
    tight = check(cfg, ZERO3_BF16_8, 64 * GB)  # 57.6 GB budget: the awake engine no longer fits the training phase
    assert not tight.ok and "rollout.vllm.sleep_level=2" in tight.text()


def test_async_rollouts_with_vllm_put_the_engine_on_the_worker(r1_path):
    """rollout.max_staleness > 0 with vLLM: the worker holds vLLM; the trainer has no rollout phase (the worker
    samples) and its evaluations use the built-in sampler, and the report says what the worker holds. On devices of
    its own the worker adds nothing to the trainer's; started beside it without them, vLLM's reservation sits on the
    trainer's first device in every phase."""
    own = ["rollout.max_staleness=1", "rollout.server.devices=8"]
    asynchronous = load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}", *own])
    builtin = load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}", "rollout.engine=builtin"])
    assert asynchronous.rollout.engine == "vllm"
    report, reference = check(asynchronous, ZERO3_BF16_8, 80 * GB), check(builtin, ZERO3_BF16_8, 80 * GB)
    assert report.estimate.rollout == [] and not report.estimate.beside
    for phase in ("evaluation", "training"):
        assert report.estimate.total(phase) == reference.estimate.total(phase), phase
    assert round(report.estimate.total("training") / GB, 2) == 41.98  # no vLLM reservation beside the update
    assert report.estimate.peak() == ("evaluation", reference.estimate.total("evaluation"))
    text = report.text()
    assert "asynchronous, max_staleness=1" in text and "rollout.vllm.gpu_memory_utilization=0.3 of its GPU" in text
    assert f"{P_R1 * 2 / 1e9:.2f} GB of host memory (the copy of the weights it receives)" in text
    assert "rollout: " not in text and "verdict: OK" in text
    # beside the trainer, on its devices: 0.3 x 80 GB on the first one, all along
    beside = check(load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}", "rollout.max_staleness=1"]),
                   ZERO3_BF16_8, 80 * GB)  # fmt: skip
    assert [t.bytes for t in beside.estimate.beside] == [0.3 * 80 * GB]
    for phase in ("evaluation", "training"):
        assert beside.estimate.total(phase) == reference.estimate.total(phase) + 24 * GB, phase
    assert round(beside.estimate.total("evaluation") / GB, 2) == 66.31 and beside.ok  # of a 72.0 GB budget
    # the worker's copy stages the weights for vLLM in host memory; the built-in sampler samples with it
    assert copy_device("vllm", torch.device("cuda")) == torch.device("cpu")
    assert copy_device("builtin", torch.device("cuda")) == torch.device("cuda")
    # the built-in sampler's copy keeps model.dtype: fp32 master weights under bf16 mixed precision (as the trainer's
    # forward reads them), while vLLM's copy is in vLLM's bf16
    fp32 = ["rollout.max_staleness=1", "model.dtype=float32"]
    for engine, size in (("builtin", 4), ("vllm", 2)):
        cfg = load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}", f"rollout.engine={engine}", *fp32])
        text = check(cfg, Launch("ddp", 8, mixed_precision="bf16"), 80 * GB).text()
        weights = f"{P_R1 * size / 1e9:.2f} GB of"
        assert (weights + " weights + " if engine == "builtin" else weights + " host memory") in text, engine


def test_an_async_worker_beside_the_trainer_counts_on_its_device(r1_path):
    """gsm8k_grpo_r1_distill_async on one 80 GB GPU (fp32 master weights, bf16 mixed precision), its worker started
    beside the trainer without devices of its own: the worker's copy (fp32, as the trainer's forward reads it) and
    the KV cache of the whole global batch sit on the trainer's GPU all along; the trainer samples no rollouts. The
    check says so, gives the worker a device of its own, and that line fits."""
    given = [f"model.path={r1_path}", "model.dtype=float32"]
    cfg = load_recipe("gsm8k_grpo_r1_distill_async", given)
    report = check(cfg, ONE_GPU_BF16, 80 * GB, name="gsm8k_grpo_r1_distill_async", given=given)
    est = report.estimate
    p, kv_per_token = P_R1, 28_672  # 2 (K, V) x 28 layers x 2 KV heads x 128 x 2 B (bf16)
    copy, kv = p * 4, 192 * (256 + 4096) * kv_per_token  # 12 prompts x G=16 rows of 4,352 tokens
    assert kv == 23_957_864_448
    assert [t.bytes for t in est.beside] == [copy + kv] and est.rollout == []
    static = p * 4 + p * 4 + p * 8 + p * 4  # fp32 weights, gradients, AdamW m and v, reference model
    assert est.static_bytes == static
    training = 28 * 17_408 * 1536 * 2 + 17_408 * 108_600 + 4 * 4096 * 151_936 * 6
    assert est.total("training") == static + copy + kv + training
    assert round(est.total("training") / GB, 2) == 84.93 and est.peak()[0] == "training"
    assert not report.ok
    (problem,) = report.problems
    assert "started beside the trainer share its first device (31.1 GB there all along)" in problem.what
    assert "rollout.server.devices=1" in problem.fix
    assert "rollout.server.devices unset" in report.text()
    assert "peak 53.9 GB in the training phase" in report.combined
    # the line is the whole check it re-ran: the launch (bf16 mixed precision) and the overrides given, then the fix
    assert report.combined.endswith(
        f"--mixed-precision bf16 --device-memory-gb 80 {' '.join(given)} rollout.server.devices=1"
    )
    own = ["model.dtype=float32", "rollout.server.devices=1"]
    own = check(load_recipe("gsm8k_grpo_r1_distill_async", [f"model.path={r1_path}", *own]), ONE_GPU_BF16, 80 * GB)
    assert own.ok and own.estimate.total("training") == static + training


def test_seven_b_full_adamw_on_one_80gb_gpu_is_rejected_with_the_reason(qwen7b_dir):
    overrides = [f"model.path={qwen7b_dir}", "model.dtype=float32", "eval.every=0", "rollout.engine=builtin"]
    small_steps = ["trainer.batch_size=64", "trainer.micro_batch_size=1"]  # 4 prompts x 16 completions
    cfg = load_recipe("math_dapo_r1_distill", overrides + small_steps)
    report = check(cfg, ONE_GPU_BF16, 80 * GB)
    assert report.shape.parameters == P_7B and not report.ok
    (problem,) = report.problems
    # fp32 weights 4 B + gradients 4 B + AdamW m, v 8 B per parameter on the one GPU
    assert report.estimate.static_bytes == P_7B * 16
    assert "take 121.8 GB per device (optimizer state 60.9 GB) before any activation, over the 72.0 GB" in problem.what
    # ZeRO-3 over 4 GPUs (4 prompts split evenly): rollout 30.5 static + 15.2 gathered + 16 rows x 0.53 GB KV cache;
    # LoRA r=16 (40.4M adapters) on one GPU: 31.1 static + 64 rows x 9,216 tokens x 57,344 B of KV cache = 64.9 GB
    assert problem.fix == (
        "shard with launch/zero3.yaml across >= 4 GPUs, or train LoRA adapters (model.lora.r=16: peak 64.9 GB), "
        "or offload the optimizer state to CPU (launch/zero3_offload.yaml)"
    )
    assert check(cfg, Launch("deepspeed", 4, 3, mixed_precision="bf16"), 80 * GB).ok
    assert not check(cfg, Launch("deepspeed", 2, 3, mixed_precision="bf16"), 80 * GB).ok
    # the recipe's own 512 completions per step: only sharding helps (one GPU cannot hold their KV cache)
    fix = check(load_recipe("math_dapo_r1_distill", overrides), ONE_GPU_BF16, 80 * GB).problems[0].fix
    assert fix.startswith("shard with launch/zero3.yaml across >= 8 GPUs, or offload")


def test_known_fit_1_5b_zero3_on_8_gpus_and_other_verdicts(r1_path):
    cfg = load_recipe("gsm8k_grpo_r1_distill", [f"model.path={r1_path}", "rollout.engine=builtin"])
    assert check(cfg, ZERO3_BF16_8, 80 * GB).ok
    assert check(cfg, Launch("deepspeed", 8, 2, mixed_precision="bf16"), 80 * GB).ok  # the recipe's ZeRO-2
    # bf16 weights without an fp32 master copy: the learning rate rounds away
    (problem,) = check(cfg, Launch("ddp", 8, mixed_precision="bf16"), 80 * GB).problems
    assert "keeps no fp32 master copy" in problem.what and "--mixed_precision bf16" in problem.fix
    # 256 completions do not split over 3 ranks in whole groups
    problems = check(cfg, Launch("deepspeed", 3, 3), None).problems
    assert [(p.what.split(", which ")[1], p.fix) for p in problems] == [
        ("do not split evenly over 3 ranks (each rank keeps whole groups)", "use a multiple of 48")
    ]
    # a too large evaluation batch and micro-batch, with the values that fit
    builtin = [f"model.path={r1_path}", "rollout.engine=builtin"]
    big = load_recipe("math_dapo_r1_distill", [*builtin, "eval.batch_size=1024"])
    assert [p.fix for p in check(big, ZERO3_BF16_8, 80 * GB).problems] == ["set eval.batch_size=128"]
    no_ckpt = load_recipe("math_dapo_r1_distill", [*builtin, "model.gradient_checkpointing=false"])
    (problem,) = check(no_ckpt, ZERO3_BF16_8, 80 * GB).problems
    # 28 layers x 36,864 tokens x 108,600 B = 112.1 GB of activations without checkpointing
    assert problem.what.startswith("the training phase needs 146.9 GB (activations 112.1 GB, logits 29.9 GB")
    assert problem.fix == "set model.gradient_checkpointing=true, or lower trainer.micro_batch_size to 1"


def test_lora_recipe_fits_24gb_and_counts_adapters_like_peft(r1_path):
    cfg = load_recipe(
        "math_dapo_r1_distill_lora", [f"model.path={r1_path}", "algorithm.kl_coef=0.04", "rollout.engine=builtin"]
    )
    report = check(cfg, Launch(), 24 * GB)
    shape = report.shape
    assert report.ok and shape.lora and shape.trainable == 28 * 32 * 41_216  # r x (in + out) of 7 projections
    assert lora_shape(shape, r=32).trainable == shape.trainable
    assert report.estimate.static[3].formula == "none (LoRA: the base with adapters off)"
    tiny = load_recipe("smoke", ["model.arch=qwen2", "model.num_kv_heads=2", "model.lora.r=4"])
    from deepseek_rl.models.loading import load_model, load_tokenizer

    policy = load_model(tiny.model, load_tokenizer(tiny.model), trainable=True)
    assert model_shape(tiny).trainable == sum(p.numel() for p in policy.parameters() if p.requires_grad)


def saved_bytes(model, input_ids, attention_mask) -> int:
    """Bytes autograd keeps for backward during a forward of the decoder layers (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return sum(storages.values())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_formula_matches_what_autograd_saves(checkpointing):
    """Per layer and token, transformers' Qwen2 layer in bf16 with a padding mask keeps what memory.py says."""
    counts = {}
    for layers in (2, 4):
        config = Qwen2Config(
            vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2,
        )  # fmt: skip
        config._attn_implementation = "sdpa"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[0, :5] = 0  # left padding, as in training
        counts[layers] = saved_bytes(model, ids, mask)
    per_layer_token = (counts[4] - counts[2]) / 2 / ids.numel()
    shape = model_shape(load_recipe("smoke", ["model.arch=qwen2", "model.hidden_size=128", "model.num_kv_heads=2"]))
    shape = replace(shape, intermediate=384)
    expected = 128 * 2 if checkpointing else per_token_layer_activations(shape, 2)
    assert per_layer_token == pytest.approx(expected, rel=0.03)


def test_launch_configs_are_read_like_accelerate():
    launch = REPO_DIR / "launch"
    z3 = launch_from_file(launch / "zero3.yaml", mixed_precision="bf16")
    assert (z3.backend, z3.world_size, z3.zero_stage, z3.mixed_precision) == ("deepspeed", 8, 3, "bf16")
    off = launch_from_file(launch / "zero3_offload.yaml", num_processes=4)
    assert off.offload_optimizer and off.offload_params and off.world_size == 4 and off.mixed_precision == "no"
    assert launch_from_file(launch / "fsdp2.yaml").backend == "fsdp"
    assert launch_from_file(launch / "ddp.yaml").mixed_precision == "bf16"
    assert launch_from_file(launch / "cpu_ddp.yaml").world_size == 2
    env = {
        "WORLD_SIZE": "16",
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "ACCELERATE_MIXED_PRECISION": "bf16",
    }
    assert launch_from_env(env) == Launch("deepspeed", 16, 2, mixed_precision="bf16", source="accelerate launch")
    assert launch_from_env({}) == Launch()


def test_train_runs_the_preflight_first(monkeypatch, r1_path, tmp_path: Path):
    """With a device whose memory is known (here: a pretend 8 GB GPU), train stops before loading anything."""
    import deepseek_rl.preflight.check as preflight
    from deepseek_rl.stages.grpo import train

    monkeypatch.setattr(preflight, "detected_device_memory", lambda: 8 * GB)
    cfg = load_recipe("gsm8k_grpo_r1_distill", [f"model.path={r1_path}", "logger=none"])
    with pytest.raises(ConfigError, match="the preflight check found problems"):
        train(cfg, tmp_path)
    warn = load_recipe("gsm8k_grpo_r1_distill", [f"model.path={r1_path}", "trainer.preflight=warn"])
    preflight.preflight_before_training(warn)  # prints, does not stop


def test_check_command(r1_path, qwen7b_dir, tmp_path: Path):
    result = run_cli(
        "check", "--config-name", "math_dapo_r1_distill", "--launch-config", str(REPO_DIR / "launch" / "zero3.yaml"),
        "--mixed-precision", "bf16", "--device-memory-gb", "80", f"model.path={r1_path}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DeepSpeed ZeRO-3, bf16 mixed precision, 8 process(es)" in result.stdout
    assert "rollout: vLLM (weights + KV cache)" in result.stdout and "peak 66.0 GB" in result.stdout
    assert "verdict: OK" in result.stdout
    result = run_cli(
        "check", "--config-name", "math_dapo_r1_distill", "--mixed-precision", "bf16", "--device-memory-gb", "80",
        f"model.path={qwen7b_dir}", "model.dtype=float32", "rollout.engine=builtin", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "verdict: 1 problem(s)" in result.stdout
    assert "optimizer state 60.9 GB" in result.stdout and "fix: shard with launch/zero3.yaml" in result.stdout
    result = run_cli("check", "--config-name", "math_dapo_r1_distill", "trainer.batch_size=30", cwd=tmp_path)
    assert result.returncode == 2 and "configuration error" in result.stderr and "Traceback" not in result.stderr


def test_one_combined_line_that_fits_is_rechecked_by_running_it(r1_path, tmp_path):
    """On 24 GB the DAPO recipe needs two fixes; the check prints one command with both, and that command fits."""
    zero3 = str(REPO_DIR / "launch" / "zero3.yaml")
    args = ["check", "--config-name", "math_dapo_r1_distill", "--launch-config", zero3, "--mixed-precision", "bf16",
            "--device-memory-gb", "24", f"model.path={r1_path}"]  # fmt: skip
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 1 and "one line that fits (re-checked" in first.stdout
    line = first.stdout.strip().splitlines()[-1].strip()
    assert line.startswith("deepseek-rl check --config-name math_dapo_r1_distill")
    assert "rollout.vllm.sleep_level=2" in line and "trainer.micro_batch_size=" in line
    assert f"model.path={r1_path}" in line  # the overrides given come along: the line runs as printed
    again = run_cli(*shlex.split(line)[1:], cwd=tmp_path)
    assert again.returncode == 0 and "verdict: OK" in again.stdout, again.stdout[-2000:]


def test_vllm_kv_capacity_and_deepspeeds_own_zero3_estimate(r1_path):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cfg = load_recipe("math_dapo_r1_distill", [f"model.path={r1_path}"])
    report = check(cfg, ZERO3_BF16_8, 80 * GB)
    # vLLM's 24 GB minus its bf16 weights, over 28,672 B x 9,216 tokens per sequence
    sequences = int((24e9 - P_R1 * 2) // (28_672 * 9216))
    assert f"its KV cache holds {sequences:,} sequences of 9,216 tokens" in report.text() and sequences == 77
    model_states = sum(t.bytes for t in report.estimate.static[:3])  # weights, gradients, optimizer
    _, deepspeed_gpu, _ = estimate_zero3_model_states_mem_needs(
        P_R1, 151_936 * 1536, num_gpus_per_node=8, cpu_offload=False, cpu_offload_params=False
    )
    assert 0.9 <= model_states / deepspeed_gpu <= 1.1


def test_offline_a_hub_model_fails_at_once(tmp_path):
    """No network (a Hub endpoint that refuses): one connect decides, no half minute of retries."""
    import time

    start = time.perf_counter()
    offline = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    done = run_cli("check", "--config-name", "gsm8k_grpo_r1_distill", cwd=tmp_path, env=offline)
    assert done.returncode == 2 and "the Hub is not reachable from here" in done.stderr
    assert time.perf_counter() - start < 20  # the Hub client alone retried for 28 s here


def test_no_vllm_share_is_offered_that_leaves_it_no_room_for_one_sequence(r1_path):
    """fp32 weights, gradients, AdamW and reference on one 40 GB GPU: 35.5 GB static of a 36.0 GB budget. A vLLM share
    that fits beside that (0.01 x 40 GB) holds no sequence of 4,352 tokens, so the fix is sharding, not that share."""
    given = [f"model.path={r1_path}", "model.dtype=float32"]
    report = check(load_recipe("gsm8k_grpo_r1_distill", given), ONE_GPU_BF16, 40 * GB)
    assert report.estimate.static_bytes == P_R1 * 20  # 4 + 4 + 8 + 4 bytes per parameter
    rollout = [p for p in report.problems if p.what.startswith("the rollout phase needs")]
    assert len(rollout) == 1 and "gpu_memory_utilization" not in str(rollout[0].overrides)
    assert rollout[0].fix.startswith("shard with launch/zero3.yaml across >= ")
    assert "leaves its KV cache no room for one sequence of 4,352 tokens" in rollout[0].fix
