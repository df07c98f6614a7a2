"""A real dedup run (datatrove, local executor) on stdlib text with planted duplicates."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.dedup.corpus import LOREM, PROSE, output_rows

pytest.importorskip("datatrove")


def _ids(rows):
    return [r["id"] for r in rows]


def _removed_ids(folder):
    ids = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            ids += [json.loads(line)["id"] for line in f]
    return ids


def test_every_planted_copy_leaves_exactly_one_survivor(default_run, corpus):
    kept = _ids(output_rows(default_run["out"] / "data"))
    assert len(kept) == len(set(kept))
    for copy, source in corpus["pairs"].items():
        assert (copy in kept) + (source in kept) == 1, (copy, source)


def test_distinct_documents_are_all_kept(default_run, corpus):
    kept = set(_ids(output_rows(default_run["out"] / "data")))
    sources = set(corpus["pairs"].values())
    for doc in corpus["ids"]["distinct"]:
        if doc not in sources:
            assert doc in kept, doc
    # a heavily edited copy (Jaccard < 0.3) is a different document
    assert {"far11", "doc11", "prose", "lorem", "repetitive", "trunc0"} <= kept
    assert "short" not in kept and "notext" not in kept


def test_output_rows_are_the_input_rows(default_run, corpus):
    rows = {r["id"]: r for r in output_rows(default_run["out"] / "data")}
    assert rows["prose"]["text"] == PROSE and rows["lorem"]["text"] == LOREM
    stdlib = [r for r in rows.values() if r["id"].startswith("doc")]
    assert stdlib and all(r["origin"] == "stdlib" for r in stdlib)
    assert all(set(r) <= {"id", "text", "origin"} for r in rows.values())


def test_report_counts_match_the_files(default_run, corpus):
    report, out = default_run["report"], default_run["out"]
    stages = {s["stage"]: s for s in report["stages"]}
    kept = output_rows(out / "data")
    assert stages["near dedup"]["docs_out"] == len(kept)
    assert stages["filters"]["docs_in"] - stages["filters"]["docs_out"] == 1  # "short"
    assert stages["exact dedup"]["docs_in"] - stages["exact dedup"]["docs_out"] == 7  # 4 exact + 3 whitespace
    assert stages["near dedup"]["docs_in"] - stages["near dedup"]["docs_out"] == 4
    assert stages["near dedup"]["bytes_out"] == sum(len(r["text"].encode()) for r in kept)
    # the truncated file gave at least its first row; the broken line and the row without text were skipped
    assert stages["filters"]["docs_in"] >= corpus["rows"] + 1
    inp = report["input"]
    assert inp["files"] == 3 and inp["damaged_files"] == 1 and inp["bad_json_lines"] == 1
    assert inp["documents_without_text"] == 1
    assert inp["damaged"][0]["file"].endswith("part-2.jsonl.gz") and inp["damaged"][0]["rows_read"] >= 1
    md = (out / "report.md").read_text()
    assert "part-2.jsonl.gz" in md and "Near-duplicate pairs" in md
    assert report["examples_near"] and all(e["jaccard"] >= 0.85 for e in report["examples_near"])
    assert {e["copies_removed"] for e in report["examples_exact"]} == {1}


def test_removed_documents_are_kept_for_audit(default_run, corpus):
    removed = default_run["out"] / "removed"
    kept = set(_ids(output_rows(default_run["out"] / "data")))
    exact = _removed_ids(removed / "exact")
    near = _removed_ids(removed / "near")
    assert len(exact) == 7 and len(near) == 4
    planted = set(corpus["pairs"]) | set(corpus["pairs"].values())
    assert set(exact) | set(near) <= planted
    assert not (set(exact) | set(near)) & kept
    assert _removed_ids(removed / "filters" / "length") == ["short"]


def test_quality_filters_and_parquet_output(filters_run, corpus):
    out = filters_run["out"]
    rows = output_rows(out / "data")
    assert {p.suffix for p in out.joinpath("data").iterdir()} == {".parquet"}
    kept = {r["id"]: r for r in rows}
    assert "prose" in kept and json.loads(kept["prose"]["metadata"]) == {}
    assert "repetitive" in _removed_ids(out / "removed" / "filters" / "gopher_repetition")
    with gzip.open(next((out / "removed" / "filters" / "c4").glob("*.jsonl.gz")), "rt") as f:
        c4 = {json.loads(line)["id"]: json.loads(line) for line in f}
    assert c4["lorem"]["filter_reason"] == "lorem_ipsum"
    reasons = filters_run["report"]["filter_reasons"]
    assert reasons and all(n > 0 for n in reasons.values())
    assert any("lorem_ipsum" in r for r in reasons)
    assert "near dedup" not in {s["stage"] for s in filters_run["report"]["stages"]}


def test_parquet_shards_read_back_as_input(filters_run, tmp_path):
    """Another dedup over parquet output: nothing left to remove, every row comes through."""
    from cptrain.data.dedup_run import run_dedup
    from tests.dedup.conftest import dedup_config

    before = output_rows(filters_run["out"] / "data")
    cfg = dedup_config(str(filters_run["out"] / "data"), tmp_path / "again", "executor.workers=1")
    report = run_dedup(cfg)
    after = output_rows(tmp_path / "again" / "data")
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in before)
    assert report["input"]["files"] == len(list((filters_run["out"] / "data").iterdir()))
    assert {s["docs_in"] - s["docs_out"] for s in report["stages"]} == {0}
