"""Bad input is skipped and counted per file (first offending line kept), never fatal and never lost;
what cannot train at all is a clear error before training starts."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

from cptrain.configtools import ConfigError
from cptrain.data import DataError, build_train_loader
from tests.data.data_helpers import data_config, doc_text, encode_doc, input_stream, split_documents

GOOD = [doc_text("good", i) for i in range(12)]


def _jsonl(rows: list[str]) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in rows)


@pytest.fixture
def messy(tmp_path):
    """A folder holding every kind of bad input the loader must survive, among good documents."""
    d = tmp_path / "messy"
    d.mkdir()
    (d / "good.jsonl").write_bytes(_jsonl(GOOD[:4]))
    (d / "bad.jsonl").write_bytes(
        b"\n".join(
            [
                json.dumps({"text": GOOD[4]}).encode(),
                b'{"text": "unterminated',  # line 2: invalid_json
                b'{"text": "caf\xe9 latin-1"}',  # line 3: invalid_utf8
                b'{"text": ""}',  # line 4: empty_text
                b'{"title": "no text field"}',  # line 5: missing_field
                b'{"text": 42}',  # line 6: non_string_text
                json.dumps({"text": "nul \x00 byte"}).encode(),  # line 7: nul_bytes
                b'["not", "an", "object"]',  # line 8: invalid_json
                b"",  # line 9: blank_line
                b'{"text": "   \\n  "}',  # line 10: empty_text (whitespace only)
                json.dumps({"text": GOOD[5]}).encode(),
            ]
        )
        + b"\n"
    )
    (d / "cut.jsonl.gz").write_bytes(gzip.compress(_jsonl(GOOD[6:9] * 40))[:-12])
    zst = zstandard.ZstdCompressor()
    (d / "cut.jsonl.zst").write_bytes(
        zst.compress(_jsonl(GOOD[9:10])) + zst.compress(_jsonl(GOOD[10:11]))[:-5]
    )
    (d / "empty.jsonl").write_bytes(b"")
    (d / "latin1.txt").write_bytes(b"line one\nline two\nbroken \xff here\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "fine.txt").write_text(GOOD[11])
    return d


def test_every_kind_of_bad_input_is_skipped_and_counted_once(messy, smollm_tokenizer):
    cfg = data_config([{"name": "messy", "path": str(messy)}], eval_fraction=0.0)
    reports, docs = [], set()
    for rank in range(2):  # accounting is exactly once across ranks, like the documents
        loader = build_train_loader(
            cfg, smollm_tokenizer, seq_len=64, micro_batch_size=2, dp_rank=rank, dp_size=2
        )
        docs |= set(
            split_documents(input_stream([next(loader) for _ in range(40)]), smollm_tokenizer.eos_token_id)
        )
        reports.append(loader.report()["sources"]["messy"])
    skipped: dict[str, int] = {}
    files: dict[str, dict] = {}
    for r in reports:
        for k, v in r["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        for f, kinds in r["problem_files"].items():
            for k, v in kinds.items():
                files.setdefault(f, {})[k] = v
    assert skipped == {
        "invalid_json": 2,
        "invalid_utf8": 2,
        "empty_text": 2,
        "missing_field": 1,
        "non_string_text": 1,
        "nul_bytes": 1,
        "blank_line": 1,
        "truncated_file": 2,
        "empty_file": 2,
    }
    assert {k: v["first_line"] for k, v in files["bad.jsonl"].items()} == {
        "invalid_json": 2,
        "invalid_utf8": 3,
        "empty_text": 4,
        "missing_field": 5,
        "non_string_text": 6,
        "nul_bytes": 7,
        "blank_line": 9,
    }
    assert files["bad.jsonl"]["invalid_json"]["count"] == 2
    assert files["latin1.txt"] == {"invalid_utf8": {"count": 1, "first_line": 3}}
    assert set(files) == {
        "bad.jsonl",
        "cut.jsonl.gz",
        "cut.jsonl.zst",
        "empty.jsonl",
        "latin1.txt",
        "empty.txt",
    }
    # every good document made it, including those before the cut in the truncated files
    # (GOOD[10] sat in the zst frame that was cut off)
    assert {encode_doc(smollm_tokenizer, t) for t in GOOD if t != GOOD[10]} <= docs


def test_bad_input_is_logged_with_file_and_line(messy, smollm_tokenizer, caplog):
    cfg = data_config([{"path": str(messy)}], eval_fraction=0.0)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=64, micro_batch_size=2)
    with caplog.at_level("WARNING", logger="cptrain.data"):
        for _ in range(100):  # more than one epoch
            next(loader)
    assert "bad.jsonl line 2: skipped (invalid_json)" in caplog.text
    assert "cut.jsonl.zst line 2: skipped (truncated_file: EOFError" in caplog.text
    assert "latin1.txt line 3: skipped (invalid_utf8)" in caplog.text
    assert caplog.text.count("bad.jsonl line 2") == 1  # once per file and kind, not once per epoch


def test_glob_matching_nothing_is_fatal(tmp_path, smollm_tokenizer):
    cfg = data_config([{"path": str(tmp_path / "*.jsonl")}])
    with pytest.raises(DataError, match=r"data.sources\[0\].path = .*\*\.jsonl' matches no file"):
        build_train_loader(cfg, smollm_tokenizer, seq_len=32, micro_batch_size=1)


def test_missing_text_field_in_every_row_is_fatal_and_suggests_the_field(tmp_path, smollm_tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"content": t}) + "\n" for t in GOOD))
    cfg = data_config([{"path": str(path)}])
    with pytest.raises(
        DataError, match=r"missing_field: 12.*\['content'\].*did you mean 'content'.*text_field"
    ):
        build_train_loader(cfg, smollm_tokenizer, seq_len=32, micro_batch_size=1)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0]])
def test_negative_or_all_zero_weights_are_fatal(tmp_path, weights):
    sources = [{"name": f"s{i}", "path": str(tmp_path), "weight": w} for i, w in enumerate(weights)]
    with pytest.raises(ConfigError, match="weight"):
        data_config(sources)


def test_stage_weights_are_checked(tmp_path):
    sources = [{"name": "a", "path": str(tmp_path)}, {"name": "b", "path": str(tmp_path)}]
    with pytest.raises(ConfigError, match=r"stages\[0\].weights.c: no source is named 'c'"):
        data_config(sources, stages=[{"start_step": 5, "weights": {"c": 1}}])
    with pytest.raises(ConfigError, match="at least one must be > 0"):
        data_config(sources, stages=[{"start_step": 5, "weights": {"a": 0, "b": 0}}])
