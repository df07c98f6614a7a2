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


def _printed_row(out: str) -> str:
    return out.split("first row of the first batch (document boundaries marked):\n")[1]


def test_the_sample_is_what_that_rank_of_a_run_reads(recipe, capsys):
    """The sample row is the first row `cptrain run` trains on: with the run's train.seed (it was read with
    data.seed alone), and with --ranks N --rank R from rank R's share of the documents (it was the one-rank
    stream whatever --ranks said)."""
    from cptrain.data import run_train_loader
    from cptrain.data.inspect import sample_row_text
    from cptrain.data.tokenize import DocumentTokenizer
    from cptrain.data.tokenize_cli import load_recipe_tokenizer

    path, _ = recipe
    cfg, tokenizer = load_recipe_tokenizer(str(path), ["train.seed=7"])
    decode = DocumentTokenizer(tokenizer, cfg.data.add_bos, cfg.data.eos_token).decode
    rows = {}
    for ranks, rank in ((1, 0), (2, 0), (2, 1)):
        assert cli(["inspect-data", str(path), "train.seed=7", "--batches", "2", "--ranks", str(ranks),
                    "--rank", str(rank)]) == 0
        out = capsys.readouterr().out
        assert f"of rank {rank} of {ranks}" in out
        # the trainer builds each rank's loader with this same call (cptrain.train._run)
        first = next(run_train_loader(cfg, tokenizer, dp_rank=rank, dp_size=ranks))
        rows[ranks, rank] = _printed_row(out)
        assert rows[ranks, rank] == sample_row_text(first, decode) + "\n"
    assert rows[2, 0] != rows[2, 1]  # the ranks read different documents


def test_a_rank_outside_the_ranks_is_refused(recipe, capsys):
    path, _ = recipe
    assert cli(["inspect-data", str(path), "--ranks", "2", "--rank", "2"]) == 2
    assert "--rank = 2 is not one of the 2 rank(s)" in capsys.readouterr().err
