"""How `cptrain dedup` reads input files: every row of a .jsonl.zst file, a byte order mark dropped,
and default ids that point at the row in its file (jsonl: 1-based line, parquet: 0-based row index)."""

from __future__ import annotations

import json

import pytest

from tests.dedup.corpus import output_rows

pytest.importorskip("datatrove")

FAST = ["--exact.enabled", "false", "--minhash.enabled", "false", "--executor.workers", "1"]
BOM = b"\xef\xbb\xbf"


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _texts(first: int, n: int) -> list[dict]:
    return [{"text": f"document number {i} " * 20} for i in range(first, first + n)]


def _dedup(inputs, out) -> tuple[int, dict]:
    """Runs the real command on `inputs`; (exit code, report.json)."""
    from cptrain.cli import main

    rc = main(["dedup", "--input.paths", str(inputs), "--output.dir", str(out), *FAST])
    return rc, json.loads((out / "report.json").read_text())


def test_every_row_of_a_zst_file_is_read(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(_lines(_texts(0, 5))))
    rc, report = _dedup(path, tmp_path / "out")
    assert rc == 0
    assert report["input"]["damaged_files"] == 0
    assert sorted(r["text"] for r in output_rows(tmp_path / "out" / "data")) == sorted(
        r["text"] for r in _texts(0, 5)
    )


def test_a_cut_off_or_corrupt_zst_file_keeps_the_rows_before_the_damage(tmp_path):
    """Two frames, the second damaged: the first frame's rows are kept and the file is named as damaged
    (zstandard's stream reader would return a short read for the cut-off file and say nothing)."""
    zstandard = pytest.importorskip("zstandard")
    whole = zstandard.ZstdCompressor().compress(_lines(_texts(0, 3)))
    second = zstandard.ZstdCompressor().compress(_lines(_texts(3, 3)))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.jsonl.zst").write_bytes(whole + second[: len(second) // 2])
    # a second frame whose magic number is gone: zstandard raises ZstdError, not an OSError
    (tmp_path / "in" / "corrupt.jsonl.zst").write_bytes(whole + b"\0\0\0\0" + second[4:])
    rc, report = _dedup(tmp_path / "in", tmp_path / "out")
    assert rc == 0
    damaged = {p["file"].rsplit("/", 1)[1]: p for p in report["input"]["damaged"]}
    assert set(damaged) == {"cut.jsonl.zst", "corrupt.jsonl.zst"}
    assert damaged["cut.jsonl.zst"]["rows_read"] == 3
    assert damaged["cut.jsonl.zst"]["error"].startswith("EOFError")
    assert damaged["corrupt.jsonl.zst"]["rows_read"] == 3
    assert damaged["corrupt.jsonl.zst"]["error"].startswith("ZstdError")
    assert len(output_rows(tmp_path / "out" / "data")) == 6


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + _lines(_texts(0, 3)))
    rc, report = _dedup(path, tmp_path / "out")
    assert rc == 0
    assert report["input"]["bad_json_lines"] == 0 and report["input"]["unread"] == []
    assert report["stages"][0]["docs_in"] == 3


def test_default_jsonl_id_is_the_line_number_counting_bad_and_blank_lines(tmp_path):
    path = tmp_path / "ids.jsonl"
    good = [json.dumps(r) for r in _texts(0, 2)]
    given = json.dumps({"id": "given", "text": "a document with its own id " * 10})
    path.write_text("\n".join([good[0], "{broken", "", good[1], given]) + "\n")
    rc, report = _dedup(path, tmp_path / "out")
    assert rc == 0 and report["input"]["bad_json_lines"] == 1
    ids = sorted(r["id"] for r in output_rows(tmp_path / "out" / "data"))
    assert ids == sorted([f"{path}:1", f"{path}:4", "given"])


def test_default_parquet_id_is_the_row_index(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "ids.parquet"
    texts = [r["text"] for r in _texts(0, 3)]
    pq.write_table(pa.table({"text": [texts[0], "", texts[2]]}), path)  # row 1 has no usable text
    rc, _ = _dedup(path, tmp_path / "out")
    assert rc == 0
    ids = sorted(r["id"] for r in output_rows(tmp_path / "out" / "data"))
    assert ids == [f"{path}:0", f"{path}:2"]
