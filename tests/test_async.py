"""Asynchronous GRPO (rollout.max_staleness = k): a rollout worker beside the trainer samples step s with the policy
of step s - k; the versions are logged and never staler than k; a run killed at any point (SIGKILL, SIGTERM) and
resumed trains on exactly the samples of the uninterrupted run; no worker outlives its trainer; a worker that
fails or runs another config is one line."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from deepseek_rl.config import ModelConfig
from deepseek_rl.models.char_tokenizer import build_char_tokenizer
from deepseek_rl.models.loading import load_model
from deepseek_rl.rollout.remote import TRAINER, WORKER, Channel, send_weights
from deepseek_rl.stages.async_rollouts import free_port, worker_environment

from .conftest import run_cli
from .test_distributed import _interrupted_then_resumed, metrics, rank_reports

ASYNC = ["--config-name", "smoke_async", "logger=none", "trainer.max_steps=10", "trainer.save_every=2",
         "trainer.keep_last=2"]  # fmt: skip


def workers(under: Path) -> list[int]:
    """Pids of the rollout workers (`deepseek_rl.cli serve`) a run under `under` started: their command line names its
    output folder, so the workers of tests running beside this one (pytest -n) are not counted."""
    out = subprocess.run(["pgrep", "-af", "deepseek_rl.cli serve"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if f" {under}/" in line]


@pytest.mark.parametrize("k", [1, 2])
def test_async_rollouts_log_their_versions_and_never_exceed_the_staleness(k, tmp_path):
    # k=2 without the off-policy correction: it trains, and says that nothing corrects for the staleness
    cap = "algorithm.tis_cap=2" if k == 1 else "algorithm.tis_cap=null"
    done = run_cli("train", *ASYNC, f"rollout.max_staleness={k}", "trainer.max_steps=6", cap,
                   f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("algorithm.tis_cap=null corrects nothing" in done.stdout) == (k == 2)
    lines = metrics(tmp_path / "run")
    versions = [m["rollout/policy_version"] for m in lines]
    assert versions == [max(0, s - k) for s in range(6)]  # step s sampled with the policy of step s - k
    assert [m["rollout/staleness_max"] for m in lines] == [min(s, k) for s in range(6)]
    assert all(m["rollout/staleness_max"] <= k for m in lines)
    assert lines[0]["rollout/logprob_abs_diff"] < 1e-5  # the first step: the same policy samples and trains
    assert lines[-1]["rollout/logprob_abs_diff"] > 1e-3  # later: the behaviour policy is k steps old
    assert all("time/weight_sync" in m for m in lines) and not workers(tmp_path)
    # full fine-tuning sends every parameter (fp32) once per version
    params = sum(p.numel() for p in load_model(ModelConfig(), build_char_tokenizer()).parameters())
    assert lines[1]["rollout/weight_sync_mb"] * 2**20 == pytest.approx(4 * params)


def test_a_weight_sync_tells_the_wait_for_a_busy_worker_from_the_transfer():
    """A worker takes new weights only once its batch is sampled: the trainer's wait until then is idle time
    (time/wait_rollout), not transfer (time/weight_sync). A worker thread busy for 1 s, then receiving.
    The trainer's tensors need not have the dtypes of the worker's copy (DeepSpeed's bf16 weights of an fp32
    model.dtype): the worker receives each in the dtype the trainer sends (else gloo aborts the worker's process)."""
    port, received = free_port(), {"b": torch.zeros(3), "a": torch.zeros(2, 2)}
    versions = []
    weights = {"a": torch.arange(4.0).reshape(2, 2).bfloat16(), "b": torch.tensor([5.0, 6.0, 7.0])}
    dtypes = {name: w.dtype for name, w in weights.items()}

    def busy_worker():
        channel = Channel("127.0.0.1", port, WORKER, 30, "worker")
        time.sleep(1.0)  # still sampling
        versions.append(channel.receive_weights(received, dtypes))

    thread = threading.Thread(target=busy_worker)
    thread.start()
    trainer = Channel("127.0.0.1", port, TRAINER, 30, f"127.0.0.1:{port}")
    sent, waited = send_weights([trainer], 3, iter(sorted(weights.items())))
    thread.join()
    assert versions == [3] and sent == 2 * 4 + 4 * 3  # bytes to one worker: 4 bf16 values and 3 fp32 ones
    assert all(torch.equal(received[name], weights[name].float()) for name in weights)
    assert received["a"].dtype == torch.float32  # the worker's copy keeps its dtype
    assert waited > 0.5  # the version waited for the busy worker; the tensors went after it


def test_a_worker_started_by_a_zero3_trainer_is_no_rank_of_its_launch():
    """`accelerate launch` gives each trainer rank its rendezvous and its DeepSpeed settings; a worker started
    beside rank 0 keeps neither (its own Accelerator, vLLM's, would turn DeepSpeed and ZeRO-3 on)."""
    launch = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none", "GROUP_RANK": "0",
              "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
              "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}  # fmt: skip
    kept = {"PATH": os.environ["PATH"], "CUDA_VISIBLE_DEVICES": "", "DEEPSEEK_RL_WORKER_THREADS": "1"}
    env = worker_environment({**kept, **launch}, parent_pid=123)
    assert env == {**kept, "OMP_NUM_THREADS": "1", "DEEPSEEK_RL_PARENT_PID": "123"}
    probe = "from accelerate import Accelerator; print(Accelerator(cpu=False).distributed_type.value)"
    seen = []
    for environment in ({**os.environ, **launch, "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}, {**os.environ, **env}):
        done = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        seen.append(done.stdout.split()[-1])
    assert seen == ["DEEPSPEED", "NO"]  # the trainer's settings as a rank has them; the worker's


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_lora_policy_sends_its_adapters_only(dtype, tmp_path):
    """The frozen base never changes, so a weight sync sends the adapters: r x (in + out) floats per target, fp32
    on a bf16 base too (as PEFT makes them on both sides: the worker used to cast its copy's adapters to bf16, and the
    fp32 adapters sent into bf16 buffers aborted it)."""
    done = run_cli("train", *ASYNC, "trainer.max_steps=4", "model.lora.r=4", "model.lora.alpha=8",
                   f"model.dtype={dtype}", f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # the tiny model: 2 layers of width 64, MLP 256; q, k, v, o are 64 -> 64, gate and up 64 -> 256, down 256 -> 64
    adapters = 2 * 4 * (4 * (64 + 64) + 3 * (64 + 256))  # 11,776 floats
    lines = metrics(tmp_path / "run")
    sent = [m["rollout/weight_sync_mb"] * 2**20 / 4 for m in lines]
    # step 0: the first weights and version 1; step 1: version 2 (step 3 samples with it); then nothing, as no step
    # left samples with a later version
    assert sent == pytest.approx([2 * adapters, adapters, 0, 0])
    assert [m["rollout/policy_version"] for m in lines] == [0, 0, 1, 2]
    # step 0: the same policy samples and trains, up to rounding (bf16: the decode's against the full forward's)
    assert lines[0]["rollout/logprob_abs_diff"] < (1e-5 if dtype == "float32" else 2e-3)
    assert lines[-1]["rollout/logprob_abs_diff"] > 1e-4
    assert not workers(tmp_path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The ASYNC run without interruption, once for both kinds of interruption."""
    work = tmp_path_factory.mktemp("uninterrupted")
    full = run_cli("train", *ASYNC, f"trainer.output_dir={work / 'full'}", cwd=work)
    assert full.returncode == 0, full.stderr[-3000:]
    return work / "full"


@pytest.mark.parametrize(
    ("sig", "n"), [(signal.SIGTERM, 1), (signal.SIGKILL, 2)], ids=["preempted", "killed-two-workers"]
)
def test_an_async_run_killed_and_resumed_trains_on_the_same_samples(sig, n, tmp_path: Path, uninterrupted: Path):
    """Interrupted and resumed, the run trains on the uninterrupted run's samples, step for step. With two workers
    (rollout.server.workers=2, worker i sampling the i-th half of each step's prompts as rank i of a synchronous run
    would) the samples are those one worker draws: the same completions, rewards and versions; the losses agree to
    float precision (the sampler's log-probs come from batches of 8 rows instead of 16)."""
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *ASYNC, f"rollout.server.workers={n}",
           f"trainer.output_dir={tmp_path / 'cut'}"]  # fmt: skip
    _interrupted_then_resumed(cmd, tmp_path / "cut", tmp_path, sig, lines=5)
    cut, whole = metrics(tmp_path / "cut"), metrics(uninterrupted)
    assert [m["step"] for m in cut] == list(range(1, 11))  # no step twice, none skipped
    for key in ("reward", "rollout/policy_version", "completion_length/mean", "reward_std", "zero_std_groups"):
        assert [m[key] for m in cut] == [m[key] for m in whole], key
    if n == 1:
        assert [m["loss"] for m in cut] == [m["loss"] for m in whole]
        hashes = [rank_reports(run)[0]["parameter_sha256"] for run in (tmp_path / "cut", uninterrupted)]
        assert hashes[0] == hashes[1]
    else:
        assert [m["loss"] for m in cut] == pytest.approx([m["loss"] for m in whole], rel=1e-4, abs=1e-7)
        assert [(tmp_path / "cut" / f"rollout_worker_{i}.log").exists() for i in range(3)] == [True, True, False]
    assert not workers(tmp_path)


def test_sigterm_stops_the_worker_and_exits_75(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *ASYNC, "trainer.max_steps=200",
           f"trainer.output_dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    path = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= 2):
        time.sleep(0.05)
    assert workers(tmp_path), "no rollout worker beside the trainer"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert "checkpoint saved" in err.strip().splitlines()[-1]
    time.sleep(0.5)
    assert not workers(tmp_path)


def test_a_worker_that_dies_is_one_line(tmp_path: Path):
    """The worker is killed mid-run: the trainer says so in one line naming it, its last checkpoint intact."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deepseek_rl.cli", "train", *ASYNC, "trainer.max_steps=200",
           f"trainer.output_dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    path = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= 3):
        time.sleep(0.05)
    for pid in workers(tmp_path):
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("deepseek-rl: rollout server error: the rollout worker at 127.0.0.1:"), last
    assert "Traceback" not in err
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert checkpoints and not workers(tmp_path)
    # the same command resumes from the last checkpoint with a new worker (a shorter run, to stay quick)
    resumed = run_cli("train", *ASYNC, "trainer.max_steps=8", "trainer.resume=auto", "trainer.resume_override=true",
                      f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [m["step"] for m in metrics(tmp_path / "run")]
    assert steps[-1] == 8 and steps == sorted(set(steps)) and not workers(tmp_path)


def test_a_remote_worker_with_another_config_is_refused(tmp_path: Path):
    """`deepseek-rl serve` with one recipe, a trainer with another algorithm.num_generations: one line each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(29000 + os.getpid() % 500)
    serve = subprocess.Popen(
        [sys.executable, "-m", "deepseek_rl.cli", "serve", "--config-name", "smoke_async", "--host", "127.0.0.1",
         "--port", port, "algorithm.num_generations=2"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        done = run_cli("train", *ASYNC, f"rollout.server.url=127.0.0.1:{port}", "rollout.server.timeout=60",
                       f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2, done.stderr[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert "the trainer's config differs from this worker's" in last and "algorithm.num_generations" in last
        _, err = serve.communicate(timeout=60)
        assert serve.returncode == 2 and "algorithm.num_generations" in err
    finally:
        serve.kill()


def test_a_worker_that_cannot_load_says_why_in_one_line(tmp_path: Path):
    """The worker machine's copy of the data has a bad row: the worker fails while loading, and the trainer prints
    the worker's own one-line error naming the file and line (before, the trainer was stuck in its first weight
    transfer until the worker exited, then said only that the connection closed). Caught at configuration instead:
    vLLM tensor parallelism inside a worker."""
    from .test_faults import ROWS, _malformed, write_jsonl

    trainer_dir, worker_dir = tmp_path / "trainer", tmp_path / "worker"
    trainer_dir.mkdir(), worker_dir.mkdir()
    write_jsonl(trainer_dir / "train.jsonl", ROWS)
    _malformed(worker_dir / "train.jsonl")
    data = ["data.task=null", "data.path=train.jsonl"]
    port = str(29500 + os.getpid() % 400)
    serve = subprocess.Popen(
        [sys.executable, "-m", "deepseek_rl.cli", "serve", "--config-name", "smoke_async", "--host", "127.0.0.1",
         "--port", port, *data],
        cwd=worker_dir, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        done = run_cli("train", *ASYNC, *data, f"rollout.server.url=127.0.0.1:{port}", "rollout.server.timeout=60",
                       f"trainer.output_dir={tmp_path / 'run'}", cwd=trainer_dir)  # fmt: skip
        assert done.returncode == 2, done.stderr[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last == (
            f"deepseek-rl: rollout server error: the rollout worker at 127.0.0.1:{port} failed: configuration error: "
            "data file train.jsonl, line 7: not valid JSON (Expecting value, column 32); fix or remove the line (one "
            "JSON object per line)"
        ), last
        assert "Traceback" not in done.stderr
        _, err = serve.communicate(timeout=60)
        assert serve.returncode == 2 and "line 7: not valid JSON" in err
    finally:
        serve.kill()
    tp = run_cli("train", *ASYNC, "rollout.engine=vllm", "rollout.vllm.tensor_parallel_size=2", cwd=tmp_path)
    assert tp.returncode == 2 and tp.stderr.strip().splitlines()[-1] == (
        "deepseek-rl: configuration error: rollout.vllm.tensor_parallel_size=2: an asynchronous rollout worker runs "
        "vLLM on one process and one device; start one worker per device instead (rollout.server.workers=2 "
        "rollout.vllm.tensor_parallel_size=1)"
    ), tp.stderr[-2000:]


@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "zero3.yaml"])
def test_two_trainer_ranks_share_one_worker(config: str, tmp_path: Path):
    """DDP or ZeRO-3 x2 trainers and one worker: each rank trains on its rows of the worker's global batch; the ranks
    end with identical parameters, and the versions are the same schedule. Under ZeRO-3 each partitioned parameter
    is gathered while it is sent: the worker samples with the same weights as for one trainer process (the
    sampler's log-probs against the trainer's, and the lengths, match the single-process run's step for step)."""
    from .test_distributed import launch

    overrides = [*ASYNC, "trainer.max_steps=4", f"trainer.output_dir={tmp_path / 'run'}"]
    done = launch(config, overrides, tmp_path)
    assert done.returncode == 0, done.stderr[-6000:]
    reports = rank_reports(tmp_path / "run")
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["parameter_sha256"] == reports[1]["parameter_sha256"]
    two = metrics(tmp_path / "run")
    assert [m["rollout/policy_version"] for m in two] == [0, 0, 1, 2]
    assert not workers(tmp_path)
    if config == "zero3.yaml":
        single = run_cli("train", *ASYNC, "trainer.max_steps=4", f"trainer.output_dir={tmp_path / 'one'}", cwd=tmp_path)
        assert single.returncode == 0, single.stderr[-3000:]
        one = metrics(tmp_path / "one")
        assert reports[0]["local_parameter_elements"] < rank_reports(tmp_path / "one")[0]["local_parameter_elements"]
        assert [m["completion_length/mean"] for m in two] == [m["completion_length/mean"] for m in one]
        diffs = [(a["rollout/logprob_abs_diff"], b["rollout/logprob_abs_diff"]) for a, b in zip(one, two, strict=True)]
        assert diffs[-1][0] > 1e-3  # the behaviour policy is a step old: a weight sync that failed would show here
        assert all(b == pytest.approx(a, rel=1e-3, abs=1e-6) for a, b in diffs), diffs


def test_a_worker_started_beside_the_trainer_runs_the_trainers_config_exactly(tmp_path: Path):
    """The trainer hands its config to the worker as JSON; a dict field (reward.weights) arrives as the recipe set
    it, not merged into the default's (the bug: the worker scored answer_match too and refused the trainer)."""
    import argparse

    from deepseek_rl.cli.serve import load_config
    from deepseek_rl.config import load_recipe
    from deepseek_rl.stages.rollout_worker import config_snapshot

    cfg = load_recipe("gsm8k_grpo_r1_distill_async", ["model=tiny_like"])
    assert "answer_match" not in cfg.reward.weights and "answer_match" in load_recipe("smoke").reward.weights
    (tmp_path / "config.json").write_text(config_snapshot(cfg))
    assert load_config(argparse.Namespace(config_json=str(tmp_path / "config.json")), []) == cfg
    dapo = load_recipe("math_dapo_r1_distill_async", ["model=tiny_like"])  # its reward weights and args: dicts too
    assert set(dapo.reward.weights) == {"accuracy", "think_format", "soft_overlong"}
    (tmp_path / "dapo.json").write_text(config_snapshot(dapo))
    assert load_config(argparse.Namespace(config_json=str(tmp_path / "dapo.json")), []) == dapo


def test_several_workers_split_the_prompts_the_devices_and_the_addresses():
    from deepseek_rl.config import ConfigError, load_recipe

    cfg = load_recipe("smoke_async", ["rollout.server.workers=2", "rollout.server.devices='4,5,6,7'"])
    assert [cfg.rollout.server.worker_devices(i) for i in range(2)] == ["4,5", "6,7"]
    plan = cfg.rollout_plan(2)  # 16 rows, groups of 4: each worker samples 2 prompts, rows 0-7 and 8-15
    assert (plan.prompts_per_rank, plan.first_row(1)) == (2, 8)
    remote = load_recipe("smoke_async", ["rollout.server.url=10.0.0.2:29600 10.0.0.3:29601"])
    assert remote.rollout.server.addresses() == [("10.0.0.2", 29600), ("10.0.0.3", 29601)]
    assert remote.rollout.server.workers == 2
    with pytest.raises(ConfigError, match="4 prompts per step, which do not split evenly over rollout.server.workers"):
        load_recipe("smoke_async", ["rollout.server.workers=3"])
    with pytest.raises(ConfigError, match="rollout.server.workers=3 but rollout.server.url names 2 worker"):
        load_recipe("smoke_async", ["rollout.server.workers=3", "rollout.server.url='a:1,b:2'"])
    with pytest.raises(ConfigError, match="rollout.server.devices=0,1,2 does not split evenly"):
        load_recipe("smoke_async", ["rollout.server.workers=2", "rollout.server.devices='0,1,2'"])
