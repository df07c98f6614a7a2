"""`format = "datasets"` sources skip rows without usable text and count them per data file, like jsonl.

A file whose rows lack the text field (another exporter's column name) used to stop the run: `datasets`
casts every file to the first one's columns and fails. Read file by file, each file keeps its own columns,
and its rows are skipped as `missing_field` and counted under that file in report/data.json. Real local
parquet and json files through `datasets.load_dataset`, the real tokenizer; no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptrain.data import DataError, build_train_loader
from cptrain.data.sources import iter_documents, resolve_source
from tests.data.data_helpers import data_config, datasets_source, doc_text

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets", reason="format = 'datasets' sources need the datasets package")

KW = {"seq_len": 40, "micro_batch_size": 2}


pytestmark = pytest.mark.usefixtures("offline_datasets")


def _parquet(path: Path, columns: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _source(builder: str, files: list[str], streaming: bool, **kw) -> dict:
    return datasets_source(builder, files, streaming=streaming, **kw)


def _parquet_files(tmp_path) -> tuple[str, str]:
    """a.parquet: 40 documents, row 4 null, row 11 blank; b.parquet: 25 rows with `content`, no `text`."""
    texts: list = [doc_text("a", i) for i in range(40)]
    texts[3], texts[10] = None, "  "
    a = _parquet(tmp_path / "data" / "a.parquet", {"text": pa.array(texts, pa.string())})
    b = _parquet(tmp_path / "data" / "b.parquet", {"content": [doc_text("b", i) for i in range(25)]})
    return a, b


def _json_files(tmp_path) -> tuple[str, str]:
    """a.jsonl: 40 documents, line 3 a number, line 6 null, line 9 an object; b.jsonl: 25 rows of `body`."""
    rows: list[dict] = [{"text": doc_text("a", i), "id": i} for i in range(40)]
    rows[2], rows[5], rows[8] = {"text": 7, "id": 2}, {"text": None, "id": 5}, {"text": {"x": 1}, "id": 8}
    a = _jsonl(tmp_path / "data" / "a.jsonl", rows)
    b = _jsonl(tmp_path / "data" / "b.jsonl", [{"body": doc_text("b", i)} for i in range(25)])
    return a, b


def _read_all(loader, batches: int = 60) -> dict:
    for _ in range(batches):  # 38 + 37 documents of ~20 tokens: the whole source at least once
        next(loader)
    return loader.report()["sources"]["hf"]


@pytest.mark.parametrize("streaming", [True, False])
def test_parquet_rows_without_text_are_skipped_and_counted_per_file(tmp_path, smollm_tokenizer, streaming):
    a, b = _parquet_files(tmp_path)
    cfg = data_config([_source("parquet", [a, b], streaming)], eval_fraction=0.0)
    report = _read_all(build_train_loader(cfg, smollm_tokenizer, **KW))
    assert report["documents"] >= 38
    assert report["skipped"] == {"missing_field": 26, "empty_text": 1}
    assert report["problem_files"] == {
        a: {"missing_field": {"count": 1, "first_line": 4}, "empty_text": {"count": 1, "first_line": 11}},
        b: {"missing_field": {"count": 25, "first_line": 1}},
    }


@pytest.mark.parametrize("streaming", [True, False])
def test_json_rows_with_other_or_no_text_are_skipped_and_counted_per_file(
    tmp_path, smollm_tokenizer, streaming
):
    a, b = _json_files(tmp_path)
    cfg = data_config([_source("json", [a, b], streaming)], eval_fraction=0.0)
    report = _read_all(build_train_loader(cfg, smollm_tokenizer, **KW))
    assert report["skipped"] == {"non_string_text": 2, "missing_field": 26}
    assert report["problem_files"] == {
        a: {"non_string_text": {"count": 2, "first_line": 3}, "missing_field": {"count": 1, "first_line": 6}},
        b: {"missing_field": {"count": 25, "first_line": 1}},
    }


def test_the_same_rows_as_jsonl_are_skipped_for_the_same_reasons(tmp_path, smollm_tokenizer):
    """One json file read both ways: the same counts under the same report keys."""
    a, _ = _json_files(tmp_path)
    by_datasets = data_config([_source("json", [a], True)], eval_fraction=0.0)
    by_jsonl = data_config([{"name": "hf", "path": a}], eval_fraction=0.0)
    ours = _read_all(build_train_loader(by_datasets, smollm_tokenizer, **KW), 30)
    theirs = _read_all(build_train_loader(by_jsonl, smollm_tokenizer, **KW), 30)
    assert ours["skipped"] == theirs["skipped"]
    assert ours["problem_files"][a] == theirs["problem_files"]["a.jsonl"]


@pytest.mark.parametrize("streaming", [True, False])
def test_a_source_of_only_bad_rows_is_an_error_as_with_jsonl(tmp_path, smollm_tokenizer, streaming):
    _, b = _parquet_files(tmp_path)
    nulls = _parquet(tmp_path / "data" / "c.parquet", {"text": pa.array([None] * 5, pa.string())})
    cfg = data_config([_source("parquet", [b, nulls], streaming)], eval_fraction=0.0)
    # refused up front, when the loader is built (tests/data/test_datasets_source_precheck.py)
    with pytest.raises(
        DataError,
        match=r"source 'hf', format 'datasets', path 'parquet'\): no usable text .*missing_field: 30",
    ):
        build_train_loader(cfg, smollm_tokenizer, **KW)


@pytest.mark.parametrize("streaming", [True, False])
def test_a_resume_inside_the_second_file_continues_exactly(tmp_path, smollm_tokenizer, streaming):
    a, b = _json_files(tmp_path)
    c = _jsonl(tmp_path / "data" / "c.jsonl", [{"text": doc_text("c", i)} for i in range(30)])
    cfg = data_config([_source("json", [a, b, c], streaming)], eval_fraction=0.0, shuffle_files=False)
    loader = build_train_loader(cfg, smollm_tokenizer, **KW)
    cursor = [0, 0, 0]
    while cursor[2] <= 65:  # past a.jsonl (40 rows) and b.jsonl (25), into c.jsonl
        next(loader)
        cursor = loader.state_dict()["shards"][0]["sources"][0]["cursor"]
        assert cursor[0] == 0  # still the first epoch
    state = loader.state_dict()
    expected = [next(loader) for _ in range(10)]
    resumed = build_train_loader(cfg, smollm_tokenizer, **KW)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(10)]
    assert all((x[k] == y[k]).all() for x, y in zip(expected, got) for k in x)
    assert resumed.report() == loader.report()


def test_file_by_file_rows_keep_the_numbers_of_one_stream(tmp_path):
    """Document names (`path:row`, which pick the held-out split and place a resume) are the same as when
    `datasets` reads all files as one stream, as a split expression still does."""
    files = [
        _jsonl(tmp_path / "data" / f"{n}.jsonl", [{"text": doc_text(n, i)} for i in range(k)])
        for n, k in (("a", 7), ("b", 5), ("c", 9))
    ]

    def names(split: str, streaming: bool = False) -> list[tuple[str, str]]:
        cfg = data_config([_source("json", files, streaming, split=split)], eval_fraction=0.0)
        src = resolve_source(cfg.sources[0], "data.sources[0]")
        items = iter_documents(
            src, split="all", shard=0, shards=1, eval_fraction=0.0, seed=0, shuffle=False, repeat=False
        )
        return [(it.name, it.text) for it in items]

    one_stream = names("train[:100%]")
    assert len(one_stream) == 21 and names("train") == one_stream == names("train", streaming=True)


def test_a_run_reports_the_skipped_rows_per_file(tmp_path, smollm_tokenizer, tmp_path_factory):
    """A tiny real run (debug preset, CPU) on the parquet files: report/data.json has the counts."""
    from cptrain.train import run
    from tests.train.tiny_runs import debug_cfg, make_corpus

    a, b = _parquet_files(tmp_path)
    source = f"data.sources=[{{name='hf', format='datasets', path='parquet', data_files=['{a}', '{b}']}}]"
    run_dir = tmp_path / "run"
    corpus = make_corpus(tmp_path_factory, smollm_tokenizer)
    summary = run(debug_cfg(run_dir, corpus, source, "data.eval_fraction=0.0", "checkpoint.every_steps=0"))
    assert summary["steps"] == 6
    report = json.loads((run_dir / "report" / "data.json").read_text())["sources"]["hf"]
    assert report["skipped"] == {"missing_field": 26, "empty_text": 1}
    assert report["problem_files"][b] == {"missing_field": {"count": 25, "first_line": 1}}
