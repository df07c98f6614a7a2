"""A [[data.sources]] path naming a `cptrain dedup` run folder instead of its data/ subfolder is refused up
front, pointing at data/: read as a folder it would also train on the removed documents, logs and signatures."""

from __future__ import annotations

import pytest

from cptrain.cli import main

pytest.importorskip("datatrove")


def test_dedup_run_folder_as_source_is_refused(default_run, tmp_path, capsys):
    out = default_run["out"]
    assert any((out / "removed").rglob("*.jsonl.gz"))  # what would have been trained on
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[model]\npreset = "debug"\ninit = "random"\ntokenizer = "builtin:smollm2-135m"\n'
        f'[[data.sources]]\npath = "{out}"\n[train]\nseq_len = 64\nmicro_batch_size = 2\n'
    )
    assert main(["inspect-data", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"data.sources[0].path = '{out}' is a `cptrain dedup` run folder" in err, err
    assert f"path = '{out / 'data'}'" in err, err
    # its data/ folder is the source to use, and is accepted
    assert main(["inspect-data", str(recipe), f'data.sources[0].path="{out / "data"}"']) == 0


def test_tokenize_refuses_a_dedup_run_folder_before_writing(default_run, tmp_path, capsys):
    out = default_run["out"]
    cache = tmp_path / "cache"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[model]\npreset = "debug"\ninit = "random"\ntokenizer = "builtin:smollm2-135m"\n'
        f'[data]\ncache_dir = "{cache}"\n'
        f'[[data.sources]]\nname = "kept"\npath = "{out / "data"}"\n'
        f'[[data.sources]]\nname = "all"\npath = "{out}"\n'
    )
    assert main(["tokenize", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"data.sources[1].path = '{out}' is a `cptrain dedup` run folder" in err, err
    assert not cache.exists()  # not even the first, valid source was written
