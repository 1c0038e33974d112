"""Where data and models come from: local files sliced by split, Hub datasets (here a local dataset folder, which
datasets reads the same way), column-range filters, prompt templates, long prompts, and Hub model ids."""

import json

import pytest
from transformers import AutoTokenizer

from deepseek_rl.config import ConfigError, DataConfig, ModelConfig, model_context_length
from deepseek_rl.data.prompts import build_prompt_set
from deepseek_rl.data.sources import load_rows
from deepseek_rl.errors import DataError
from deepseek_rl.hub import is_hub_id, load_model_config, pretrained_source
from deepseek_rl.models.char_tokenizer import build_char_tokenizer


def test_hub_dataset_by_name_with_splits_and_column_mapping(shared):
    """`data.hub_name` goes through datasets.load_dataset(name, subset, split=...): a folder with train.jsonl and
    test.jsonl has the splits train and test, like openai/gsm8k on the Hub."""
    cfg = DataConfig(
        task=None,
        hub_name=str(shared / "data" / "gsm8k"),
        train_split="train",
        eval_split="test",
        columns={"question": "prompt"},
    )
    assert (len(load_rows(cfg, "train")), len(load_rows(cfg, "eval"))) == (7473, 1319)
    assert load_rows(cfg, "eval")[0]["prompt"].startswith("Janet")
    with pytest.raises(
        ConfigError, match="the validation split needs data.validation_path .* or data.validation_split"
    ):
        load_rows(cfg, "validation")


def test_unreachable_hub_dataset_is_a_clear_error():
    cfg = DataConfig(task=None, hub_name="no-such-owner/no-such-dataset", hub_subset="main")
    with pytest.raises(ConfigError, match="data.hub_name=no-such-owner/no-such-dataset .* could not be loaded"):
        load_rows(cfg, "train")
    with pytest.raises(ConfigError, match="exactly one of data.path .* and data.hub_name"):
        DataConfig(task=None)


def test_a_local_file_sliced_into_train_and_held_out_rows(shared):
    path = str(shared / "data" / "math" / "test_subset500.jsonl")
    cfg = DataConfig(task=None, path=path, prompt_column="problem", train_split="train[:400]", eval_split="train[400:]")
    train, held_out = load_rows(cfg, "train"), load_rows(cfg, "eval")
    assert (len(train), len(held_out)) == (400, 100)
    assert not set(train["unique_id"]) & set(held_out["unique_id"])


def test_filters_select_column_ranges_per_split(shared):
    cfg = DataConfig(
        task=None,
        path=str(shared / "data" / "mbpp" / "mbpp.jsonl"),
        eval_split="train",
        prompt_column="text",
        filters={"train": {"task_id": [511, 974]}, "eval": {"task_id": [11, 510]}},
    )
    assert sorted(load_rows(cfg, "train")["task_id"]) == list(range(511, 975))
    assert sorted(load_rows(cfg, "eval")["task_id"]) == list(range(11, 511))
    with pytest.raises(ConfigError, match=r"data.filters.train.task_id=\[9, 1\] must be \[min, max\]"):
        DataConfig(task=None, path=cfg.path, filters={"train": {"task_id": [9, 1]}})
    with pytest.raises(ConfigError, match="data.filters split='test' is not one of train, eval, validation"):
        DataConfig(task=None, path=cfg.path, filters={"test": {"task_id": [1, 9]}})
    with pytest.raises(DataError, match="data.filters names column 'level'"):
        load_rows(DataConfig(task=None, path=cfg.path, prompt_column="text", filters={"train": {"level": [1, 2]}}))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prompt_template_builds_prompts_from_columns(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_rows(path, [{"text": "Add one.", "test_list": ["assert f(1) == 2", "assert f(2) == 3"]}])
    cfg = DataConfig(
        task=None,
        path=str(path),
        columns={"test_list": "tests"},
        prompt_template="{text}\nYour code should pass these tests:\n{tests}",
    )
    prompts = build_prompt_set(cfg, build_char_tokenizer(), max_prompt_length=200)
    assert prompts.texts == ["Add one.\nYour code should pass these tests:\nassert f(1) == 2\nassert f(2) == 3"]
    assert prompts.columns["tests"] == [["assert f(1) == 2", "assert f(2) == 3"]]
    with pytest.raises(DataError, match=r"data.prompt_template uses \['test_list'\]"):
        load_rows(DataConfig(task=None, path=str(path), prompt_template="{text} {test_list}", columns=cfg.columns))
    with pytest.raises(ConfigError, match="data.prompt_template is not a valid format string"):
        DataConfig(task=None, path=str(path), prompt_template="{text")


def test_long_prompts_are_an_error_or_dropped(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    write_rows(path, [{"prompt": "short"}, {"prompt": "x" * 50}, {"prompt": "fine", "answer": "2"}])
    with pytest.raises(DataError, match="line 2: the rendered prompt is 50 tokens, .* set data.drop_long_prompts=true"):
        build_prompt_set(DataConfig(task=None, path=str(path)), build_char_tokenizer(), 16)
    kept = build_prompt_set(DataConfig(task=None, path=str(path), drop_long_prompts=True), build_char_tokenizer(), 16)
    assert kept.texts == ["short", "fine"] and kept.columns["answer"] == [None, "2"]
    assert "dropped 1 of 3 train prompts longer than rollout.max_prompt_length=16" in capsys.readouterr().err


def test_model_sources_local_directory_or_hub_id(shared, tmp_path):
    r1 = shared / "tokenizers" / "deepseek-r1-distill-qwen-1.5b"
    assert is_hub_id("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") and not is_hub_id(str(r1))
    assert pretrained_source(str(r1), "model.path") == str(r1)
    assert load_model_config(str(r1)).num_hidden_layers == 28
    assert model_context_length(ModelConfig(path=str(r1), tokenizer=None)) == 131072
    with pytest.raises(ConfigError, match="model.path=.*: no config.json there"):
        load_model_config(str(tmp_path))
    with pytest.raises(ConfigError, match="model.tokenizer=not a/hub id: not a directory"):
        pretrained_source("not a/hub id", "model.tokenizer")
    # offline (tests set HF_HUB_OFFLINE=1) and not cached: the message names the key and the two ways out
    with pytest.raises(
        ConfigError, match=r"model.path=no-such-owner/no-such-model: not a local directory.*hf download"
    ):
        model_context_length(ModelConfig(path="no-such-owner/no-such-model", tokenizer=None))
    # a tokenizer given by directory loads as before
    assert len(AutoTokenizer.from_pretrained(r1)) == 151665
