"""Skipped files are summarized, not logged one by one; `cptrain tokenize` shows progress while it runs."""

from __future__ import annotations

from cptrain.cli import main as cli
from cptrain.data import build_train_loader, tokenize_cli
from cptrain.data.documents import MAX_FILES_LOGGED
from tests.data.data_helpers import data_config, doc_text


def _empty_files(folder, n: int) -> None:
    for i in range(n):
        (folder / f"empty{i:02d}.txt").write_text("")


def test_tokenize_prints_one_line_per_kind_of_skip_with_examples(recipe, capsys, caplog):
    path, _ = recipe
    _empty_files(path.parent / "raw" / "notes", 12)
    with caplog.at_level("WARNING", logger="cptrain.data"):
        assert cli(["tokenize", str(path)]) == 0
    assert "skipped (empty_file)" not in caplog.text  # no line per file
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "empty_file" in line]
    meta = path.parent / "cache" / "notes" / "meta.json"
    assert lines == [
        "notes: warning: 12 skipped (empty_file): empty00.txt, empty01.txt, empty02.txt and 9 more files "
        f"(see {meta})"
    ]


def test_streaming_logs_the_first_few_files_of_a_kind_then_stops(tmp_path, smollm_tokenizer, caplog):
    (tmp_path / "good.txt").write_text(doc_text("good", 0, words=200))
    _empty_files(tmp_path, MAX_FILES_LOGGED + 7)
    cfg = data_config([{"name": "folder", "path": str(tmp_path)}], eval_fraction=0.0)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=32, micro_batch_size=1)
    with caplog.at_level("WARNING", logger="cptrain.data"):
        for _ in range(30):
            next(loader)
    logged = [r.getMessage() for r in caplog.records if "skipped (empty_file)" in r.getMessage()]
    assert len(logged) == MAX_FILES_LOGGED
    assert logged[-1].endswith(
        "further files skipped for empty_file are counted in the data report, not logged"
    )
    assert loader.report()["sources"]["folder"]["skipped"]["empty_file"] == MAX_FILES_LOGGED + 7


def test_tokenize_reports_progress_on_the_main_process_only(recipe, capsys, monkeypatch):
    path, _ = recipe
    monkeypatch.setattr(tokenize_cli, "PROGRESS_SECONDS", 0.0)  # a line after every tokenizer batch
    assert cli(["tokenize", str(path)]) == 0
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if "so far" in line]
    assert progress[0].startswith("web: 60 documents, ") and "tokens/s)" in progress[0]
    assert any(line.startswith("notes: 8 documents, ") for line in progress)

    monkeypatch.setenv("RANK", "1")  # another rank of a launcher: quiet
    assert cli(["tokenize", str(path), "--force"]) == 0
    assert "so far" not in capsys.readouterr().err


def test_progress_is_rate_limited(capsys):
    progress = tokenize_cli.Progress("src", every=3600.0)
    for _ in range(1000):
        progress.update(256, 100_000)
    assert capsys.readouterr().err == ""
    assert (progress.documents, progress.tokens) == (256_000, 100_000_000)
