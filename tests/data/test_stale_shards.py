"""A stale token shard is refused with a message that names what changed since it was written."""

from __future__ import annotations

import json
import os

import pytest

from cptrain.cli import main as cli
from cptrain.config import load_config
from cptrain.data import DataError, build_train_loader


def _loader(recipe_path, tokenizer, *overrides):
    cfg = load_config(recipe_path, ["data.mode='pretokenized'", *overrides])
    return build_train_loader(cfg.data, tokenizer, seq_len=48, micro_batch_size=2)


def test_stale_shard_names_the_changed_file(recipe, smollm_tokenizer, capsys):
    path, _ = recipe
    assert cli(["tokenize", str(path)]) == 0
    notes = path.parent / "raw" / "notes"
    before = (notes / "3.txt").stat().st_size
    (notes / "3.txt").write_text((notes / "3.txt").read_text() + " an edit")
    with pytest.raises(
        DataError,
        match=rf"data.sources\[1\].*stale: the input files \(3\.txt changed size \({before} -> "
        rf"{before + 8} bytes\)\) changed since it was written; run `cptrain tokenize RECIPE`",
    ):
        _loader(path, smollm_tokenizer)
    assert cli(["tokenize", str(path)]) == 0

    (notes / "8.txt").write_text("a new note")
    (notes / "0.txt").unlink()
    st = (notes / "5.txt").stat()
    os.utime(notes / "5.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError) as info:
        _loader(path, smollm_tokenizer)
    message = str(info.value)
    assert "0.txt removed" in message and "8.txt added" in message
    assert "5.txt modified (same size, new modification time)" in message
    assert "tokenizer" not in message and "settings" not in message


def test_stale_shard_names_a_changed_tokenizer_or_setting(recipe, smollm_tokenizer):
    path, _ = recipe
    assert cli(["tokenize", str(path)]) == 0
    with pytest.raises(DataError, match=r"stale: the tokenizer \(.*add_bos.*\) changed") as info:
        _loader(path, smollm_tokenizer, "data.add_bos=true")
    assert "input files" not in str(info.value)
    with pytest.raises(
        DataError, match=r"stale: the source settings \(text_field: 'text' -> 'body'\) changed"
    ):
        _loader(path, smollm_tokenizer, "data.sources[0].text_field='body'")


def test_shard_written_before_fingerprint_parts_still_gets_the_general_message(recipe, smollm_tokenizer):
    path, _ = recipe
    assert cli(["tokenize", str(path)]) == 0
    meta_path = path.parent / "cache" / "web" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["fingerprint_parts"]  # as an older cptrain wrote it
    meta_path.write_text(json.dumps(meta))
    _loader(path, smollm_tokenizer)  # the fingerprint itself is unchanged: still fresh
    web = path.parent / "raw" / "web.jsonl"
    web.write_text(web.read_text() + json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(DataError, match=r"data.sources\[0\].*stale: the tokenizer, the source settings or"):
        _loader(path, smollm_tokenizer)


def test_fingerprint_of_file_sources_is_unchanged_so_existing_shards_stay_fresh(recipe, smollm_tokenizer):
    """The fingerprint of non-datasets sources is still computed as cptrain wrote it before meta.json
    kept its parts: shards tokenized by an older version are not all stale at once."""
    import hashlib

    from cptrain.data.shards import FORMAT_VERSION, inputs_fingerprint
    from cptrain.data.sources import resolve_source

    path, _ = recipe
    for i, source in enumerate(load_config(path).data.sources):
        src = resolve_source(source, f"data.sources[{i}]")
        h = hashlib.blake2b(digest_size=16)
        settings = {k: v for k, v in src.identity().items() if k not in ("name", "files")}
        h.update(json.dumps(settings, sort_keys=True).encode())
        h.update(b"tok")
        for rel, _ in src.files:
            st = src.path_of(rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        assert inputs_fingerprint(src, "tok") == f"v{FORMAT_VERSION}-{h.hexdigest()}"
