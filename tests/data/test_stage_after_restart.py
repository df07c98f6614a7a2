"""`data.stages` follow the run's optimizer steps when the data stream starts over in the middle of a run.

A run resumed with checkpoint.load_data_state=false, or whose saved position no longer fits
(data.on_resume_mismatch=restart), starts its stream again at step N: its first batch must be mixed as
step N says, and a later normal resume must still know the step. Real stdlib files, the real tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cptrain.data import build_train_loader
from tests.data.data_helpers import halves_config, stdlib_halves

SEQ, BATCH = 64, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    return stdlib_halves(tmp_path_factory)


_cfg = halves_config


A_OFF_AT_3 = [{"start_step": 3, "weights": {"a": 0, "txt": 5}}]
A_ONLY_AT_5 = [*A_OFF_AT_3, {"start_step": 5, "weights": {"a": 1, "txt": 0}}]


def _stage_tokens(loader) -> list[int]:
    return [s["tokens"] for s in loader.report()["stages"]]


def _a_documents(loader) -> int:
    return loader.report()["sources"]["a"]["documents"]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_built_at_step_3_mixes_its_first_batch_as_stage_1(corpus, smollm_tokenizer, workers):
    cfg = _cfg(corpus, A_OFF_AT_3, num_workers=workers)
    loader = build_train_loader(
        cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH, micro_batches_per_step=2, first_step=3
    )
    for _ in range(4):
        next(loader)
    assert _stage_tokens(loader)[0] == 0 and _stage_tokens(loader)[1] > 0  # the report counts step 3 on
    assert _a_documents(loader) == 0  # weight 0 from step 3: not one document of `a`
    assert loader.state_dict()["first_step"] == 3 and loader.report()["first_step"] == 3
    loader.close()


def test_a_loader_built_at_step_0_still_starts_in_stage_0(corpus, smollm_tokenizer):
    loader = build_train_loader(
        _cfg(corpus, A_OFF_AT_3),
        smollm_tokenizer,
        seq_len=SEQ,
        micro_batch_size=BATCH,
        micro_batches_per_step=2,
    )
    for _ in range(6):  # steps 0-2
        next(loader)
    assert _stage_tokens(loader)[1] == 0 and _a_documents(loader) > 0
    a_before = _a_documents(loader)
    for _ in range(4):  # steps 3-4
        next(loader)
    assert _stage_tokens(loader)[1] > 0 and _a_documents(loader) == a_before


def test_restart_on_mismatch_starts_over_at_the_saved_step(corpus, smollm_tokenizer):
    """One rank with accumulation 4 saves at step 2; two ranks (accumulation 2) cannot continue it."""
    kw = dict(seq_len=SEQ, micro_batch_size=BATCH)
    cfg = _cfg(corpus, A_OFF_AT_3, on_resume_mismatch="restart")
    old = build_train_loader(cfg, smollm_tokenizer, micro_batches_per_step=4, **kw)
    for _ in range(8):  # steps 0-1
        next(old)
    state = old.state_dict()
    # the trainer's step (2) is passed too, but the saved position is what says where the stream was
    new = build_train_loader(cfg, smollm_tokenizer, dp_size=2, micro_batches_per_step=2, first_step=0, **kw)
    new.load_state_dict(state)
    assert new.state_dict()["first_step"] == 2 and new.batches == 0
    for _ in range(2):  # step 2: still stage 0 (the old accumulation, not the new one, counts the steps)
        next(new)
    assert _stage_tokens(new)[1] == 0 and _a_documents(new) > 0
    a_before = _a_documents(new)
    for _ in range(4):  # steps 3-4: stage 1, no `a`
        next(new)
    assert _stage_tokens(new)[1] > 0 and _a_documents(new) == a_before


def test_restart_of_a_state_saved_before_first_step_existed_uses_the_callers_step(corpus, smollm_tokenizer):
    kw = dict(seq_len=SEQ, micro_batch_size=BATCH, micro_batches_per_step=2)
    cfg = _cfg(corpus, A_OFF_AT_3, on_resume_mismatch="restart")
    old = build_train_loader(cfg, smollm_tokenizer, **kw)
    for _ in range(6):
        next(old)
    state = old.state_dict()
    del state["first_step"], state["micro_batches_per_step"]
    new = build_train_loader(cfg, smollm_tokenizer, dp_size=2, first_step=3, **kw)
    new.load_state_dict(state)
    next(new)
    assert _stage_tokens(new)[0] == 0 and _a_documents(new) == 0


def test_a_normal_resume_after_a_restart_keeps_the_step(corpus, smollm_tokenizer):
    """Restarted at step 3, stopped at step 5, resumed with its state: step 5 is stage 2 (`a` only)."""
    kw = dict(seq_len=SEQ, micro_batch_size=BATCH, micro_batches_per_step=2)
    cfg = _cfg(corpus, A_ONLY_AT_5)
    restarted = build_train_loader(cfg, smollm_tokenizer, first_step=3, **kw)
    for _ in range(4):  # steps 3-4
        next(restarted)
    state = restarted.state_dict()
    assert state["first_step"] == 3
    expected = [next(restarted) for _ in range(4)]  # steps 5-6
    resumed = build_train_loader(cfg, smollm_tokenizer, **kw)  # first_step=0: the state decides
    resumed.load_state_dict(state)
    assert _same(expected, [next(resumed) for _ in range(4)])
    assert resumed.state_dict()["first_step"] == 3
    report = resumed.report()
    assert report == restarted.report()
    assert [s["tokens"] > 0 for s in report["stages"]] == [False, True, True]
    assert report["stages"][2]["realized_shares"] == {"a": 1.0, "txt": 0.0}


def test_a_state_saved_before_first_step_existed_resumes_from_step_0(corpus, smollm_tokenizer):
    kw = dict(seq_len=SEQ, micro_batch_size=BATCH, micro_batches_per_step=2)
    cfg = _cfg(corpus, A_OFF_AT_3)
    loader = build_train_loader(cfg, smollm_tokenizer, **kw)
    for _ in range(4):  # steps 0-1
        next(loader)
    state = loader.state_dict()
    del state["first_step"], state["micro_batches_per_step"]
    expected = [next(loader) for _ in range(4)]  # steps 2-3: across the switch
    resumed = build_train_loader(cfg, smollm_tokenizer, first_step=7, **kw)  # a restored position wins
    resumed.load_state_dict(state)
    assert _same(expected, [next(resumed) for _ in range(4)])
    assert resumed.state_dict()["first_step"] == 0
