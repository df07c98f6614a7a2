"""Input the dedup cannot use is refused or named, never reported as "every document was removed"."""

from __future__ import annotations

import json

import pytest

from cptrain.configtools import ConfigError

FAST = ["--exact.enabled", "false", "--minhash.enabled", "false", "--executor.workers", "1"]


def _write_rows(path, rows: list[dict], bad_lines: int = 0) -> None:
    lines = [json.dumps(r) for r in rows] + ["{not json"] * bad_lines
    path.write_text("".join(line + "\n" for line in lines))


def _content_rows(n: int) -> list[dict]:
    return [{"id": f"c{i}", "content": f"document number {i} " * 20} for i in range(n)]


def test_a_txt_file_is_refused_up_front_with_the_supported_formats(tmp_path):
    from cptrain.data.dedup_run import resolve_inputs

    (tmp_path / "a.txt").write_text("plain text\n")
    with pytest.raises(
        ConfigError, match=r"'.*a\.txt' is not a format cptrain dedup reads; it reads \.jsonl"
    ):
        resolve_inputs([str(tmp_path / "a.txt")])
    with pytest.raises(ConfigError, match=r"a\.txt.*\.parquet"):
        resolve_inputs([str(tmp_path / "*.txt")])
    # naming the format says the file is jsonl whatever its name
    assert resolve_inputs([str(tmp_path / "a.txt")], "jsonl") == [str((tmp_path / "a.txt").resolve())]


def test_a_txt_file_fails_the_command_before_anything_runs(tmp_path, capsys):
    from cptrain.cli import main

    (tmp_path / "a.txt").write_text("plain text\n")
    rc = main(["dedup", "--input.paths", str(tmp_path / "a.txt"), "--output.dir", str(tmp_path / "out")])
    assert rc == 2
    assert "a.txt' is not a format cptrain dedup reads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_nothing_readable_fails_naming_the_file_the_counts_and_the_field(tmp_path, capsys):
    pytest.importorskip("datatrove")
    from cptrain.cli import main

    _write_rows(tmp_path / "b.jsonl", _content_rows(10), bad_lines=5)
    out = tmp_path / "out"
    rc = main(["dedup", "--input.paths", str(tmp_path / "b.jsonl"), "--output.dir", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("cptrain: error: input.paths: no document could be read from 1 input file")
    assert f"{tmp_path / 'b.jsonl'}: 10 rows without the field 'text'" in err
    assert "(their fields: content, id; did you mean 'content'?)" in err
    assert "5 unparsable JSON lines" in err
    assert "every document was removed" not in captured.err
    assert "documents in" not in captured.out
    report = (out / "report.md").read_text()
    assert "b.jsonl`: 10 rows without the field 'text'" in report


def test_a_file_with_the_wrong_field_among_good_ones_is_named_in_the_report(tmp_path):
    pytest.importorskip("datatrove")
    from cptrain.data.dedup import main

    (tmp_path / "in").mkdir()
    _write_rows(tmp_path / "in" / "good.jsonl", [{"text": f"good text {i} " * 20} for i in range(3)])
    _write_rows(tmp_path / "in" / "other.jsonl", [{"body": "x", "text": ""}, *_content_rows(2)])
    out = tmp_path / "out"
    assert main(["--input.paths", str(tmp_path / "in"), "--output.dir", str(out), *FAST]) == 0
    info = json.loads((out / "report.json").read_text())
    assert info["stages"][0]["docs_in"] == 3
    (note,) = info["input"]["unread"]
    assert note["file"].endswith("other.jsonl")
    assert (note["without_text"], note["missing_field"], note["fields"]) == (3, 2, ["content", "id"])
    assert "2 rows without the field 'text'" in (out / "report.md").read_text()
    assert "1 rows with empty or non-string text" in (out / "report.md").read_text()
