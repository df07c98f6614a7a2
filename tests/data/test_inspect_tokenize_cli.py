"""`cptrain tokenize` and `cptrain inspect-data` as a user runs them: argument mistakes, a source without usable
text, an unusable data.cache_dir, progress with the share done, Ctrl-C (a real SIGINT to a real process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from cptrain.cli import main as cli
from cptrain.data import tokenize_cli
from tests.data.data_helpers import doc_text, write_jsonl


@pytest.mark.parametrize("command", ["tokenize", "inspect-data"])
def test_usage_error_names_only_the_recipe(command, capsys):
    """The overrides are optional, but the usage error said 'the following arguments are required: recipe,
    overrides'."""
    with pytest.raises(SystemExit) as e:
        cli([command])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: the following arguments are required: recipe")


def test_inspect_data_refuses_batches_below_one(recipe, capsys):
    """--batches 0 (or -3) sampled one micro-batch without a word, as --ranks 0 is refused."""
    path, _ = recipe
    capsys.readouterr()
    assert cli(["inspect-data", str(path), "--batches", "0"]) == 2
    assert capsys.readouterr().err.strip() == "cptrain: error: inspect-data: --batches = 0 must be >= 1"


def test_tokenize_refuses_a_source_without_text_and_keeps_the_shard(recipe, capsys):
    """A wrong text_field tokenized every row as skipped and wrote an empty shard over the good one (training
    then failed on the empty shard); the run's own check now stops it first, naming the key."""
    path, _ = recipe
    assert cli(["tokenize", str(path)]) == 0
    meta = path.parent / "cache" / "web" / "meta.json"
    before = meta.read_text()
    capsys.readouterr()
    assert cli(["tokenize", str(path), "data.sources[0].text_field='content'"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cptrain: error: data.sources[0] (") and "\n" not in err, err
    assert "missing_field: 60" in err and "set data.sources[0].text_field" in err
    assert meta.read_text() == before and json.loads(before)["stats"]["documents"] > 0


def test_tokenize_cache_dir_under_a_file_is_one_line(recipe, capsys):
    """A NotADirectoryError traceback at the first shard, before."""
    path, _ = recipe
    (path.parent / "notes.txt").write_text("not a folder")
    cache = path.parent / "notes.txt" / "cache"
    capsys.readouterr()
    assert cli(["tokenize", str(path), f"data.cache_dir='{cache}'"]) == 2
    assert capsys.readouterr().err.strip() == (f"cptrain: error: data.cache_dir = '{cache}': {path.parent / 'notes.txt'} "
                                               "is a file; give a folder for the token shards")


def test_tokenize_progress_says_how_much_is_done(recipe, capsys, monkeypatch):
    """Progress lines gave counts and rates but not how far into the source they were."""
    path, _ = recipe
    write_jsonl(path.parent / "raw" / "web.jsonl", [doc_text("web", i) for i in range(1200)])  # 5 batches of 256
    monkeypatch.setattr(tokenize_cli, "PROGRESS_SECONDS", 0.0)  # a line after every tokenizer batch
    assert cli(["tokenize", str(path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("web: ") and "so far" in line]
    assert len(lines) >= 2, lines
    shares = [int(line.split("; ~")[1].split("%")[0]) for line in lines]
    assert shares == sorted(shares) and 0 < shares[0] < 99 and all(line.endswith(" left") for line in lines), lines


def test_ctrl_c_leaves_no_partial_shard_and_keeps_the_old_one(recipe, tmp_path):
    """Ctrl-C printed a KeyboardInterrupt traceback and left the half-written `<source>.tmp` folder (as large as
    the tokens so far) in data.cache_dir."""
    path, _ = recipe
    assert cli(["tokenize", str(path)]) == 0
    cache = path.parent / "cache"
    before = (cache / "web" / "meta.json").read_text()
    write_jsonl(path.parent / "raw" / "web.jsonl", [doc_text("web", i, words=200) for i in range(6000)])
    code = ("import sys; from cptrain.data import tokenize_cli; tokenize_cli.PROGRESS_SECONDS = 0.0; "
            "from cptrain.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "tokenize", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # interrupt once it is writing the shard
            if "so far" in line:
                break
        assert (cache / "web.tmp").is_dir()
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in err.splitlines() if "so far" not in line]
    assert lines == [f"cptrain tokenize: interrupted while tokenizing web ({cache / 'web'} is as it was); no source "
                     "finished; the same command goes on from there (up-to-date sources are skipped)"], err
    assert not (cache / "web.tmp").exists()
    assert (cache / "web" / "meta.json").read_text() == before
