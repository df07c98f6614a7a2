"""Resume: the token stream continues bitwise; a changed data config or layout is refused clearly."""

from __future__ import annotations

import io

import pytest
import torch

from cptrain.data import DataError, build_train_loader
from tests.data.data_helpers import data_config, two_sources


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def _cfg(tmp_path, **kw):
    short_path, long_path, _, _ = two_sources(tmp_path, short_docs=40, long_docs=12)
    return data_config(
        [
            {"name": "short", "path": str(short_path), "weight": 2},
            {"name": "long", "path": str(long_path), "weight": 1},
        ],
        **kw,
    )


def _check_resume(cfg, tokenizer, skip: int, more: int, **kw) -> dict:
    """Run `skip` batches, save, run `more`; a fresh loader given the state must yield the same `more`."""
    loader = build_train_loader(cfg, tokenizer, **kw)
    for _ in range(skip):
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(more)]
    resumed = build_train_loader(cfg, tokenizer, **kw)
    resumed.load_state_dict(state)
    assert _same(expected, [next(resumed) for _ in range(more)])
    assert resumed.report() == loader.report()  # the accounting resumes too
    return state


def test_resume_mid_document_and_across_epochs(tmp_path, smollm_tokenizer):
    cfg = _cfg(tmp_path)
    # 30-token rows cut most documents; 60 batches x 2 rows run over more than one epoch of each source
    state = _check_resume(cfg, smollm_tokenizer, 61, 45, seq_len=30, micro_batch_size=2, dp_rank=1, dp_size=2)
    _, _, offset = state["shards"][0]["current"]
    assert offset > 0  # saved in the middle of a document
    assert state["shards"][0]["sources"][1]["cursor"][0] >= 1  # ... and after an epoch wrapped


def test_resume_across_a_stage_switch(tmp_path, smollm_tokenizer):
    cfg = _cfg(tmp_path, stages=[{"start_step": 6, "weights": {"short": 0, "long": 1}}])
    _check_resume(cfg, smollm_tokenizer, 9, 8, seq_len=40, micro_batch_size=2, micro_batches_per_step=2)
    _check_resume(cfg, smollm_tokenizer, 13, 8, seq_len=40, micro_batch_size=2, micro_batches_per_step=2)


def test_resume_at_the_very_start(tmp_path, smollm_tokenizer):
    _check_resume(_cfg(tmp_path), smollm_tokenizer, 0, 3, seq_len=40, micro_batch_size=2)


def test_state_is_plain_data_that_survives_torch_save_weights_only(tmp_path, smollm_tokenizer):
    cfg = _cfg(tmp_path)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=40, micro_batch_size=2)
    for _ in range(5):
        next(loader)
    state = loader.state_dict()

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (int, float, str, bool))

    assert plain(state)
    # the trainer keeps it with torch.save and loads it back with weights_only=True
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    again = build_train_loader(cfg, smollm_tokenizer, seq_len=40, micro_batch_size=2)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert _same([next(loader) for _ in range(3)], [next(again) for _ in range(3)])


def test_changed_data_config_is_an_error_naming_the_change(tmp_path, smollm_tokenizer):
    cfg = _cfg(tmp_path)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=40, micro_batch_size=2)
    next(loader)
    state = loader.state_dict()
    changed = _cfg(tmp_path)
    changed.sources[1].weight = 3.0
    other = build_train_loader(changed, smollm_tokenizer, seq_len=40, micro_batch_size=2)
    with pytest.raises(
        DataError, match=r"weights.*\[2\.0, 1\.0\].*\[2\.0, 3\.0\].*on_resume_mismatch=restart"
    ):
        other.load_state_dict(state)
    longer = build_train_loader(cfg, smollm_tokenizer, seq_len=48, micro_batch_size=2)
    with pytest.raises(DataError, match="seq_len: 40 -> 48"):
        longer.load_state_dict(state)
    # the documented override starts the stream over instead
    changed.on_resume_mismatch = "restart"
    restart = build_train_loader(changed, smollm_tokenizer, seq_len=40, micro_batch_size=2)
    restart.load_state_dict(state)
    fresh = build_train_loader(changed, smollm_tokenizer, seq_len=40, micro_batch_size=2)
    assert _same([next(restart) for _ in range(3)], [next(fresh) for _ in range(3)])


def test_changed_data_parallel_size_is_refused(tmp_path, smollm_tokenizer):
    cfg = _cfg(tmp_path)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=40, micro_batch_size=2, dp_rank=0, dp_size=2)
    next(loader)
    state = loader.state_dict()
    bigger = build_train_loader(cfg, smollm_tokenizer, seq_len=40, micro_batch_size=2, dp_rank=0, dp_size=4)
    with pytest.raises(DataError, match="dp_size=2.*dp_size=4.*same layout"):
        bigger.load_state_dict(state)
    wrong_rank = build_train_loader(
        cfg, smollm_tokenizer, seq_len=40, micro_batch_size=2, dp_rank=1, dp_size=2
    )
    with pytest.raises(DataError, match="rank 0 loaded on rank 1"):
        wrong_rank.load_state_dict(state)
