"""The reference-run summary: tables built from a run directory's results (hand-made files, hand-computed changes)."""

import json

from deepseek_rl.tools.reference_run import METRICS, rft_markdown, summary_markdown


def _metrics(value: float) -> dict[str, float]:
    return {m: value for m in METRICS}


def _fake_run(run, sft: float, grpo: float, rft: float) -> None:
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "metrics.jsonl").write_text('{"step": 10}\n{"step": 190}\n')
    (run / "results.json").write_text(json.dumps({"sft": _metrics(sft), "grpo": _metrics(grpo)}))
    (run / "wall_seconds.txt").write_text("143.2\n")
    rft_dir = run / "rft-after-rl"
    (rft_dir / "rft").mkdir(parents=True)
    (rft_dir / "results.json").write_text(json.dumps({"base": _metrics(grpo), "rft": _metrics(rft)}))
    (rft_dir / "rft" / "metrics.jsonl").write_text('{"step": 0, "rft/kept": 2027, "rft/sampled": 16000}\n')
    (rft_dir / "wall_seconds.txt").write_text("80.0\n")


def test_summary_and_rft_tables(tmp_path):
    run = tmp_path / "seed-0"
    _fake_run(run, sft=0.448, grpo=0.972, rft=0.992)
    page = summary_markdown({0: run}, [])
    assert "| 0 | 143.2 s | 190 | greedy_accuracy | 0.448 | 0.972 | +52.4 pts |" in page
    rft = rft_markdown(0, run)
    assert "Kept 2027 of 16000 sampled completions; wall time 80.0 s." in rft
    assert "| maj@8 | 0.972 | 0.992 | +2.0 pts |" in rft
