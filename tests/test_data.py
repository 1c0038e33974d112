"""Procedural task, prompt loading from files, templates, and the per-step / per-rank prompt order."""

import json

import pytest
from transformers import AutoTokenizer

from deepseek_rl.config import ConfigError, DataConfig
from deepseek_rl.data.prompts import build_prompt_set, rank_indices, render_prompt, step_indices
from deepseek_rl.data.tasks.addition import AdditionTask, addition_solution, verify_addition
from deepseek_rl.errors import DataError
from deepseek_rl.models.char_tokenizer import build_char_tokenizer


def test_addition_trace_hand_written():
    assert addition_solution(526, 850) == "<think>6+0+0=06 2+5+0=07 5+8+0=13</think><answer>1376</answer>"
    assert addition_solution(99, 1) == "<think>9+1+0=10 9+0+1=10</think><answer>100</answer>"


def test_addition_splits_are_seeded_disjoint_and_verified():
    a = AdditionTask(num_digits=3, seed=5).splits(300, 50, 100)
    b = AdditionTask(num_digits=3, seed=5).splits(300, 50, 100)
    assert a == b
    assert len(a["train"]) == 300 and len(a["validation"]) == 50 and len(a["eval"]) == 100
    prompts = {split: {r["prompt"] for r in rows} for split, rows in a.items()}
    assert not prompts["train"] & prompts["eval"] and not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["eval"]
    assert AdditionTask(num_digits=3, seed=5).splits(10, 5, 100)["eval"] == a["eval"]  # eval fixed by the seed
    for row in a["train"][:50]:
        assert verify_addition(row["solution"], row["answer"]) == 1.0
        assert verify_addition(row["solution"].replace(row["answer"], row["answer"] + "0"), row["answer"]) == 0.0
    assert AdditionTask(num_digits=3, seed=6).splits(300, 50, 100) != a


def test_addition_too_many_problems_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct 1-digit problems"):
        AdditionTask(num_digits=1).splits(90, 0, 20)


def test_step_indices_cover_each_row_once_per_epoch_and_ranks_partition():
    n, per_step = 10, 4
    first_epoch = [i for step in range(2) for i in step_indices(n, per_step, step, seed=3)] + step_indices(
        n, per_step, 2, 3
    )[:2]
    assert sorted(first_epoch) == list(range(10))
    assert step_indices(n, per_step, 7, seed=3) == step_indices(n, per_step, 7, seed=3)
    step = step_indices(n, per_step, 1, seed=3)
    assert rank_indices(step, 0, 2) + rank_indices(step, 1, 2) == step


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_prompts_with_column_mapping(tmp_path):
    path = tmp_path / "rows.jsonl"
    _write_jsonl(path, [{"question": "Q:1+1=", "gold": "2"}, {"question": "Q:2+2=", "gold": "4"}])
    cfg = DataConfig(task=None, path=str(path), columns={"question": "prompt", "gold": "answer"})
    prompts = build_prompt_set(cfg, build_char_tokenizer(), max_prompt_length=16)
    assert prompts.texts == ["Q:1+1=", "Q:2+2="]
    assert prompts.columns["answer"] == ["2", "4"]
    batch = prompts.batch([1, 0], pad_id=0)
    assert batch.input_ids.shape == (2, 6) and batch.columns["answer"] == ["4", "2"]


def test_bad_data_errors_name_file_row_and_column(tmp_path):
    path = tmp_path / "rows.jsonl"
    _write_jsonl(path, [{"question": "Q:1+1="}])
    with pytest.raises(DataError, match=r"rows.jsonl has no 'prompt' column .*\['question'\]"):
        build_prompt_set(DataConfig(task=None, path=str(path)), build_char_tokenizer(), 16)
    _write_jsonl(path, [{"prompt": "Q:1+1="}, {"prompt": "x" * 40}])
    with pytest.raises(
        DataError, match=r"rows.jsonl, line 2: the rendered prompt is 40 tokens, over rollout.max_prompt_length=16"
    ):
        build_prompt_set(DataConfig(task=None, path=str(path)), build_char_tokenizer(), 16)
    _write_jsonl(path, [{"prompt": "Q:1+1="}, {"prompt": ""}])
    with pytest.raises(DataError, match="rows.jsonl, line 2: column .prompt. is empty"):
        build_prompt_set(DataConfig(task=None, path=str(path)), build_char_tokenizer(), 16)
    with pytest.raises(ConfigError, match="data.path=.*missing.jsonl: no such file"):
        DataConfig(task=None, path=str(tmp_path / "missing.jsonl"))


def test_parquet_prompts(tmp_path):
    import datasets

    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list([{"prompt": "Q:3+4=", "answer": "7"}]).to_parquet(str(path))
    prompts = build_prompt_set(DataConfig(task=None, path=str(path)), build_char_tokenizer(), 16)
    assert prompts.texts == ["Q:3+4="] and prompts.columns["answer"] == ["7"]


def test_templates_open_think(shared):
    char = build_char_tokenizer()
    assert render_prompt("Q:1+1=", "r1_zero", char, None).endswith("Assistant: <think>")
    r1 = AutoTokenizer.from_pretrained(shared / "tokenizers" / "deepseek-r1-distill-qwen-1.5b")
    text = render_prompt("What is 2+2?", "chat", r1, None)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    assert r1(text, add_special_tokens=False)["input_ids"] == [
        151646,
        151644,
        3838,
        374,
        220,
        17,
        10,
        17,
        30,
        151645,
        151648,
        198,
    ]


def test_data_file_errors_name_the_line(tmp_path):
    from deepseek_rl.data.sources import load_rows

    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "answer": 1}\n\n{"prompt": "b", "answer": "two"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl, line 3: column 'answer' is a string here but a number on line 1"):
        from deepseek_rl.data.files import locate_json_error

        locate_json_error(path)
    path.write_text('{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"rows.jsonl, line 2: expected a JSON object"):
        load_rows(DataConfig(task=None, path=str(path)))
    array = tmp_path / "rows.json"
    array.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b"\n  {"prompt": "c"}\n]\n')
    with pytest.raises(DataError, match=r"rows.json, line 4: not valid JSON"):
        load_rows(DataConfig(task=None, path=str(array)))


def test_line_numbers_follow_slices_and_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "Q:1"}\n\n{"prompt": "Q:2"}\n{"prompt": ""}\n')
    with pytest.raises(DataError, match=r"rows.jsonl, line 4: column 'prompt' is empty"):
        build_prompt_set(DataConfig(task=None, path=str(path), train_split="train[1:]"), build_char_tokenizer(), 16)
    prompts = build_prompt_set(DataConfig(task=None, path=str(path), max_rows=2), build_char_tokenizer(), 16)
    assert list(prompts.columns) == ["prompt"]  # the line numbers never reach the rewards
