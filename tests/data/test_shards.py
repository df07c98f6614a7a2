"""Pre-tokenized shards (`cptrain tokenize`): same documents as streaming, exact resume, stale = refused."""

from __future__ import annotations

import pytest
import torch

from cptrain.cli import main as cli
from cptrain.config import load_config
from cptrain.data import DataError, build_eval_batches, build_train_loader
from cptrain.data.shards import read_meta
from cptrain.data.sources import is_eval
from tests.data.data_helpers import encode_doc, input_stream, split_documents


def _loader(recipe_path, tokenizer, *overrides):
    cfg = load_config(recipe_path, list(overrides))
    return build_train_loader(cfg.data, tokenizer, seq_len=48, micro_batch_size=2), cfg


def test_pretokenized_matches_streaming_and_resumes(recipe, smollm_tokenizer, capsys):
    path, texts = recipe
    with pytest.raises(DataError, match="holds no token shard; run `cptrain tokenize RECIPE`"):
        _loader(path, smollm_tokenizer, "data.mode='pretokenized'")
    assert cli(["tokenize", str(path)]) == 0
    assert "web: 60 documents" in capsys.readouterr().out
    meta = read_meta(load_config(path, []).data, "web")  # the source's size in its shard's stats, as streamed
    assert meta["stats"]["bytes"] == sum(len(t.encode("utf-8")) for t in texts[:60])
    eos = smollm_tokenizer.eos_token_id
    docs = {}
    for mode in ("stream", "pretokenized"):
        loader, _ = _loader(path, smollm_tokenizer, f"data.mode='{mode}'")
        docs[mode] = set(split_documents(input_stream([next(loader) for _ in range(60)]), eos))
    assert docs["stream"] == docs["pretokenized"]  # same training documents, same held-out split
    names = [f"web.jsonl:{i}" for i in range(60)] + [f"{i}.txt" for i in range(8)]
    train = {encode_doc(smollm_tokenizer, t) for t, n in zip(texts, names) if not is_eval(n, 0.15)}
    assert docs["stream"] == train and len(train) < len(texts)

    evals = {
        mode: build_eval_batches(
            load_config(path, [f"data.mode='{mode}'"]).data,
            smollm_tokenizer,
            seq_len=48,
            micro_batch_size=2,
            max_batches=4,
        )
        for mode in ("stream", "pretokenized")
    }
    assert len(evals["stream"]) > 0
    assert all(torch.equal(a[k], b[k]) for a, b in zip(evals["stream"], evals["pretokenized"]) for k in a)

    loader, _ = _loader(path, smollm_tokenizer, "data.mode='pretokenized'")
    for _ in range(23):
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(30)]  # across an epoch: documents are reshuffled per epoch
    resumed, _ = _loader(path, smollm_tokenizer, "data.mode='pretokenized'")
    resumed.load_state_dict(state)
    assert all(
        torch.equal(a[k], b[k]) for a, b in zip(expected, [next(resumed) for _ in range(30)]) for k in a
    )
    assert loader.report()["sources"]["web"]["epochs_started"] >= 2


def test_stale_shards_are_refused_and_rewritten(recipe, smollm_tokenizer, capsys):
    path, _ = recipe
    assert cli(["tokenize", str(path)]) == 0
    note = path.parent / "raw" / "notes" / "3.txt"
    note.write_text(note.read_text() + " an edit after tokenizing")
    with pytest.raises(DataError, match=r"data.sources\[1\].*stale.*run `cptrain tokenize RECIPE`"):
        _loader(path, smollm_tokenizer, "data.mode='pretokenized'")
    capsys.readouterr()
    assert cli(["tokenize", str(path)]) == 0
    out = capsys.readouterr().out
    assert "web: up to date" in out and "notes: 8 documents" in out
    loader, _ = _loader(path, smollm_tokenizer, "data.mode='pretokenized'")
    next(loader)
    # a different tokenizer setting makes every shard stale too
    with pytest.raises(DataError, match="stale"):
        _loader(path, smollm_tokenizer, "data.mode='pretokenized'", "data.add_bos=true")
