"""The reference-run page: tables and plain-words verdicts built from run directories (hand-made result files,
hand-computed gaps), and the curves it draws."""

import json
from pathlib import Path

from deepseek_rl.infra.plots import Curves, held_out_points, moving_average, plot_grid
from deepseek_rl.tools.reference_run import CONTROLS, METRICS, rft_markdown, summary_markdown, verdict


def _metrics(greedy: float, sampled: float = 0.5) -> dict[str, float]:
    return {m: (greedy if m == "eval/greedy_accuracy" else sampled) for m in METRICS}


def _fake_run(run: Path, sft: float, grpo: float, time_: float, tokens: float, sampled=(0.2, 0.4, 0.5, 0.45)) -> Path:
    results = {
        "sft": _metrics(sft, sampled[0]),
        "grpo": _metrics(grpo, sampled[1]),
        CONTROLS[0]: _metrics(time_, sampled[2]),
        CONTROLS[1]: _metrics(tokens, sampled[3]),
    }
    (run / "grpo").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results))
    (run / "wall_seconds.txt").write_text("250.0\n")
    lines = [{"step": 0, "eval/greedy_accuracy": sft}, {"step": 1, "reward": 0.1, "train/seconds": 0.5}]
    lines += [{"step": 2, "reward": 0.3, "train/seconds": 1.25, "eval/greedy_accuracy": grpo}]
    (run / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run


def test_tables_and_verdicts(tmp_path):
    wins = {s: _fake_run(tmp_path / "u" / f"seed-{s}", 0.35, 0.90 + s / 100, 0.52, 0.55) for s in (0, 1)}
    mixed = {0: _fake_run(tmp_path / "a" / "seed-0", 0.5, 0.97, 0.95, 0.90)}
    behind = {0: _fake_run(tmp_path / "b" / "seed-0", 0.5, 0.90, 0.95, 0.80)}
    page = summary_markdown({"unreliable": wins, "addition": mixed})
    # seed 0: RL 0.900 against the better control 0.550: +35.0 points; seed 1: 0.910 - 0.550 = +36.0
    assert "| 0 | 250.0 s | 1 s | greedy_accuracy | 0.350 | 0.900 | 0.520 | 0.550 | +35.0 pts |" in page
    assert "RL beats more SFT on every seed**, by +35.0 to +36.0 points" in page
    assert "on sampled accuracy (temperature 1) RL is behind (-10.0 to -10.0 points)" in page  # 0.4 - 0.5
    assert "by less than 15 points on some** (+2.0 to +2.0" in verdict("addition", mixed)  # 0.97 - 0.95
    assert "more SFT does as well as RL or better** on seed(s) 0 (RL minus the better control: -5.0" in verdict(
        "addition", behind
    )


def test_rft_table(tmp_path):
    run = tmp_path / "seed-0"
    rft_dir = run / "rft-after-rl"
    (rft_dir / "rft").mkdir(parents=True)
    (rft_dir / "results.json").write_text(json.dumps({"base": _metrics(0.972, 0.3), "rft": _metrics(0.992, 0.4)}))
    (rft_dir / "rft" / "metrics.jsonl").write_text('{"step": 0, "rft/kept": 2027, "rft/sampled": 16000}\n')
    (rft_dir / "wall_seconds.txt").write_text("80.0\n")
    rft = rft_markdown(0, run)
    assert "Kept 2027 of 16000 sampled completions; wall time 80.0 s." in rft
    assert "| greedy_accuracy | 0.972 | 0.992 | +2.0 pts |" in rft and "| maj@8 | 0.300 | 0.400 | +10.0 pts |" in rft


def test_curves(tmp_path):
    assert moving_average([1.0, 2.0, 3.0, 10.0], window=3) == [1.5, 2.0, 5.0, 6.5]
    lines = [
        {"step": 0, "eval/greedy_accuracy": 0.3},  # before training: 0 seconds
        {"step": 10, "reward": 0.2, "train/seconds": 4.0},
        {"step": 10, "eval/greedy_accuracy": 0.6},  # logged on its own line: the step's seconds
        {"step": 20, "train/seconds": 9.0, "eval/greedy_accuracy": 0.8},
    ]
    assert held_out_points(lines) == ([0.0, 4.0, 9.0], [0.3, 0.6, 0.8])
    run = _fake_run(tmp_path / "seed-0", 0.35, 0.9, 0.5, 0.5)
    png = tmp_path / "curves.png"
    plot_grid({"task": [Curves("seed 0", run / "grpo" / "metrics.jsonl", {"more SFT": run / "missing.jsonl"})]}, png)
    assert png.stat().st_size > 10_000


def test_tool_demo_page(tmp_path):
    from deepseek_rl.tools.tool_demo import METRICS as TOOL_METRICS
    from deepseek_rl.tools.tool_demo import page, plot

    def fake(run: Path, after: float, use: float) -> Path:
        before = {m: 0.0 for m in TOOL_METRICS} | {"eval/tool_use": 0.2}
        grpo = {m: after for m in TOOL_METRICS} | {"eval/greedy_tool_use": use, "eval/tool_use": use}
        (run / "grpo").mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"sft": before, "grpo": grpo}))
        (run / "wall_seconds.txt").write_text("300.0\n")
        lines = [{"step": 0, "eval/greedy_accuracy": 0.0, "eval/greedy_tool_use": 0.0}]
        lines += [{"step": s, "tools/used_share": s / 100} for s in range(1, 81)]
        lines += [{"step": 80, "eval/greedy_accuracy": after, "eval/greedy_tool_use": use}]
        (run / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
        samples = [  # 1122 * 2485 = 2788170 (7 digits), 8220 * 2914 = 23953080
            ("greedy", "Q:1122*2485=", "```output\n2788170\n```\n</think><answer>22788170</answer>", False),
            ("greedy", "Q:8220*2914=", "```output\n23953080\n```\n</think><answer>23953080</answer>", True),
            ("greedy", "Q:8220*2914=", "```output\nNameError\n```\n</think><answer>23953000</answer>", False),
            ("sampled", "Q:8220*2914=", "</think><answer>1</answer>", False),
        ]
        rows = [{"kind": k, "prompt": p, "completion": c, "correct": ok} for k, p, c, ok in samples]
        (run / "eval").mkdir()
        (run / "eval" / "samples-grpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return run

    runs = {0: {"tool": fake(tmp_path / "t", 0.6, 0.9), "no tool": fake(tmp_path / "n", 0.01, 0.0)}}
    text = page(runs)
    assert "accuracy after RL: +59.0 points" in text  # 0.6 - 0.01
    assert "| 0 | tool | 300.0 s | greedy_accuracy | 0.000 | 0.600 |" in text
    assert "| | | | tool_use | 0.200 | 0.900 |" in text
    failures = "seed 0: 2 of 3 wrong, 1 of them with the right product in the tool's output (1 with 7 digits, 1 with 8"
    assert failures in text
    plot(runs, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 5_000
