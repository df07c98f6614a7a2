"""`cptrain inspect-data`: mixture table, counts, packing, a decoded row with boundaries marked."""

from __future__ import annotations

import json

from cptrain.cli import main as cli


def test_inspect_data_prints_the_mix_and_a_marked_sample_row(recipe, capsys):
    path, _ = recipe
    assert cli(["inspect-data", str(path), "--batches", "6"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    web = next(line for line in lines if line.startswith("web "))
    assert "66.7%" in web and "~" in web  # target share, estimated whole-source tokens
    assert any(line.startswith("notes ") for line in lines)
    assert "packing: 12 rows, 100.00% real tokens" in out
    assert "held-out:" in out
    row = out.split("first row of the first batch (document boundaries marked):")[1]
    assert row.count("----- document ") >= 2 and "document 0" in row  # 48-token rows hold several documents


def test_inspect_data_json_report(recipe, capsys):
    path, _ = recipe
    assert cli(["inspect-data", str(path), "--batches", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batches"] == 3 and set(report["sources"]) == {"web", "notes"}
    assert report["packing"]["input_tokens"] == 3 * 2 * 48
