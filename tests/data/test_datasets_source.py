"""`format = "datasets"` sources: their local data files are checked for changes like any other
source's (token shards, streaming resume), and a row `datasets` cannot parse is one clear error."""

from __future__ import annotations

import json
import os

import pytest

from cptrain.cli import main as cli
from cptrain.config import load_config
from cptrain.configtools import ConfigError
from cptrain.data import DataError, build_train_loader
from tests.data.data_helpers import data_config, doc_text, write_jsonl

pytest.importorskip("datasets", reason="format = 'datasets' sources need the datasets package")


pytestmark = pytest.mark.usefixtures("offline_datasets")


def _recipe(tmp_path, tokenizer, data_files: list[str]):
    path = tmp_path / "fmt.toml"
    path.write_text(f"""
[model]
path = "{tokenizer.name_or_path}"
[train]
seq_len = 48
micro_batch_size = 2
[data]
eval_fraction = 0.0
[[data.sources]]
name = "hf"
format = "datasets"
path = "json"
data_files = {json.dumps(data_files)}
""")
    return path


def _pretokenized(recipe, tokenizer):
    cfg = load_config(recipe, ["data.cache_dir=cache_fmt", "data.mode='pretokenized'"])
    return build_train_loader(cfg.data, tokenizer, seq_len=48, micro_batch_size=2)


def test_datasets_token_shard_goes_stale_when_a_data_file_changes(
    tmp_path, smollm_tokenizer, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # data_files relative to the working directory, as in a recipe
    write_jsonl(tmp_path / "data" / "clean.jsonl", [doc_text("hf", i) for i in range(100)])
    recipe = _recipe(tmp_path, smollm_tokenizer, ["data/*.jsonl"])
    assert cli(["tokenize", str(recipe), "data.cache_dir=cache_fmt"]) == 0
    assert "hf: 100 documents" in capsys.readouterr().out
    _pretokenized(recipe, smollm_tokenizer)  # fresh

    write_jsonl(tmp_path / "data" / "clean.jsonl", [doc_text("hf", i) for i in range(20)])
    with pytest.raises(DataError, match=r"stale: the input files \(.*clean\.jsonl changed size"):
        _pretokenized(recipe, smollm_tokenizer)
    assert cli(["tokenize", str(recipe), "data.cache_dir=cache_fmt"]) == 0
    out = capsys.readouterr().out
    assert "up to date" not in out and "hf: 20 documents" in out
    _pretokenized(recipe, smollm_tokenizer)

    # a file the glob matches now is an input too
    write_jsonl(tmp_path / "data" / "more.jsonl", [doc_text("more", i) for i in range(5)])
    with pytest.raises(DataError, match=r"the input files \(.*more\.jsonl added\)"):
        _pretokenized(recipe, smollm_tokenizer)
    assert cli(["tokenize", str(recipe), "data.cache_dir=cache_fmt"]) == 0
    assert "hf: 25 documents" in capsys.readouterr().out


def test_datasets_source_without_local_files_says_it_cannot_be_checked(tmp_path, smollm_tokenizer, caplog):
    from cptrain.data.shards import check_cache, shard_fingerprint
    from cptrain.data.sources import resolve_source
    from cptrain.data.tokenize import DocumentTokenizer

    cfg = data_config(
        [{"name": "hub", "format": "datasets", "path": "someone/some-dataset"}], cache_dir=str(tmp_path)
    )
    src = resolve_source(cfg.sources[0], "data.sources[0]")
    assert src.inputs == [] and src.unchecked == ["dataset someone/some-dataset"]
    assert src.identity()["files"] == {"dataset someone/some-dataset": "not checked (no local file)"}
    # a token shard of it is used, but with a warning that it cannot be checked
    tokenizer = DocumentTokenizer(smollm_tokenizer)
    fp, parts = shard_fingerprint(src, tokenizer.fingerprint)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "meta.json").write_text(json.dumps({"fingerprint": fp, "fingerprint_parts": parts}))
    with caplog.at_level("WARNING", logger="cptrain.data"):
        check_cache(cfg, src, tokenizer, "data.sources[0]")
    assert "cannot be checked against dataset someone/some-dataset" in caplog.text
    assert "cptrain tokenize RECIPE --force" in caplog.text

    # a local dataset folder is read whole: its files are the inputs
    write_jsonl(tmp_path / "ds" / "train.jsonl", ["a document"])
    cfg = data_config([{"name": "local", "format": "datasets", "path": str(tmp_path / "ds")}])
    src = resolve_source(cfg.sources[0], "data.sources[0]")
    assert src.inputs == [str(tmp_path / "ds" / "train.jsonl")] and src.unchecked == []


def _stream_cfg(tmp_path):
    return data_config(
        [
            {
                "name": "hf",
                "format": "datasets",
                "path": "json",
                "data_files": [str(tmp_path / "data" / "*.jsonl")],
            }
        ],
        eval_fraction=0.0,
    )


def test_datasets_streaming_resume_after_a_data_file_changed_is_refused_naming_it(tmp_path, smollm_tokenizer):
    clean = write_jsonl(tmp_path / "data" / "clean.jsonl", [doc_text("hf", i) for i in range(100)])
    kw = {"seq_len": 40, "micro_batch_size": 2}
    loader = build_train_loader(_stream_cfg(tmp_path), smollm_tokenizer, **kw)
    next(loader)
    state = loader.state_dict()
    size = os.path.getsize(clean)

    same = build_train_loader(_stream_cfg(tmp_path), smollm_tokenizer, **kw)
    same.load_state_dict(state)  # unchanged data resumes

    write_jsonl(clean, [doc_text("hf", i) for i in range(20)])
    cut = build_train_loader(_stream_cfg(tmp_path), smollm_tokenizer, **kw)
    with pytest.raises(
        DataError,
        match=rf"sources\[0\]\.files\..*clean\.jsonl: '{size} bytes' -> '{os.path.getsize(clean)} bytes'",
    ):
        cut.load_state_dict(state)

    write_jsonl(clean, [doc_text("hf", i) for i in range(100)])  # back to the same size
    write_jsonl(tmp_path / "data" / "more.jsonl", ["one more document"])
    added = build_train_loader(_stream_cfg(tmp_path), smollm_tokenizer, **kw)
    with pytest.raises(DataError, match=r"sources\[0\]\.files\..*more\.jsonl: None -> '\d+ bytes'"):
        added.load_state_dict(state)


def _write_with_bad_row(path, rows: int, bad: int):
    write_jsonl(path, [doc_text("hf", i) for i in range(rows)])
    lines = path.read_text().splitlines(keepends=True)
    lines[bad] = '{"text": "a row cut off in the middle\n'
    path.write_text("".join(lines))


@pytest.mark.parametrize("streaming", [True, False])
def test_datasets_bad_row_is_one_error_naming_source_and_file(tmp_path, smollm_tokenizer, streaming):
    write_jsonl(tmp_path / "data" / "a_clean.jsonl", [doc_text("hf", i) for i in range(30)])
    _write_with_bad_row(tmp_path / "data" / "b_bad.jsonl", 150, 100)
    cfg = _stream_cfg(tmp_path)
    cfg.sources[0].streaming = streaming
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=40, micro_batch_size=2)
    with pytest.raises(ConfigError) as info:
        for _ in range(200):
            next(loader)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("source 'hf' (format 'datasets', path 'json'): datasets cannot read ")
    assert "one of its 2 data files" in message  # datasets' own log line above names b_bad.jsonl
    assert "JSON parse error" in message and "format = 'jsonl'" in message
