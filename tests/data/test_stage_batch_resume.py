"""A normal resume with another train.global_batch_size keeps `data.stages` on the configured optimizer steps.

The saved data position counts micro-batches; converting it back to steps with the new accumulation
(micro-batches per step) moved the stage switch: halving the batch switched early, doubling it late.
The stream itself continues (each rank's rows do not depend on how many make a step); only the step
count is re-based. A changed train.micro_batch_size changes the rows, and is refused with the way out.
Real stdlib files, the real tokenizer, tiny CPU runs of the debug preset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cptrain.data import DataError, build_train_loader
from cptrain.train import run
from tests.data.data_helpers import halves_config, stdlib_halves
from tests.train.tiny_runs import debug_cfg, make_corpus

SEQ, BATCH = 64, 2
A_OFF_AT_3 = [{"start_step": 3, "weights": {"a": 0, "txt": 5}}]


@pytest.fixture(scope="module")
def halves(tmp_path_factory) -> tuple[Path, Path]:
    return stdlib_halves(tmp_path_factory)


def _cfg(halves, **kw):
    return halves_config(halves, A_OFF_AT_3, **kw)


def _loader(cfg, tokenizer, accum: int, **kw):
    return build_train_loader(
        cfg, tokenizer, seq_len=SEQ, micro_batch_size=BATCH, micro_batches_per_step=accum, **kw
    )


def _last_stage(loader) -> int:
    """The mixture stage the last batch handed out was made in (its shard's saved stage)."""
    state = loader.state_dict()
    return state["shards"][(state["batches"] - 1) % max(1, state["num_workers"])]["mixture"]["stage"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("saved_accum, new_accum", [(2, 1), (1, 2), (2, 3)])
def test_the_stage_starts_at_its_step_after_the_accumulation_changed(
    halves, smollm_tokenizer, workers, saved_accum, new_accum
):
    """Saved after steps 0-1, resumed with another accumulation: step 2 is stage 0, steps 3-4 stage 1."""
    cfg = _cfg(halves, num_workers=workers)
    old = _loader(cfg, smollm_tokenizer, saved_accum)
    for _ in range(2 * saved_accum):  # steps 0-1
        next(old)
    state = old.state_dict()
    old.close()
    new = _loader(cfg, smollm_tokenizer, new_accum)
    new.load_state_dict(state)
    stages = []
    for _ in range(3 * new_accum):  # steps 2-4
        next(new)
        stages.append(_last_stage(new))
    assert stages == [0] * new_accum + [1] * 2 * new_accum
    a_docs = new.report()["sources"]["a"]["documents"]
    for _ in range(new_accum):  # step 5
        next(new)
    assert new.report()["sources"]["a"]["documents"] == a_docs  # weight 0 from step 3 on
    assert new.state_dict()["first_step"] == 0  # the stream started at step 0: its report counts from there
    new.close()


def test_a_later_resume_and_restart_keep_the_rebased_step(halves, smollm_tokenizer):
    """The re-based count is saved: resumed again (same accumulation) it continues exactly; restarted
    (another layout) the stream starts over at the step reached, not one counted with either accumulation."""
    cfg = _cfg(halves, on_resume_mismatch="restart")
    old = _loader(cfg, smollm_tokenizer, 4)
    for _ in range(4):  # step 0
        next(old)
    rebased = _loader(cfg, smollm_tokenizer, 1)
    rebased.load_state_dict(old.state_dict())
    next(rebased)  # step 1
    state = rebased.state_dict()
    assert state["first_step"] == 0  # the stream still started at step 0 (the report says so)
    expected = [next(rebased) for _ in range(3)]  # steps 2-4: across the switch
    again = _loader(cfg, smollm_tokenizer, 1)
    again.load_state_dict(state)
    got = [next(again) for _ in range(3)]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(expected, got) for k in x)
    assert again.report() == rebased.report()
    restarted = _loader(cfg, smollm_tokenizer, 1, dp_size=2)
    restarted.load_state_dict(state)
    assert restarted.state_dict()["first_step"] == 2  # 4 micro-batches of step 0, then 1 of step 1


def test_a_changed_micro_batch_size_is_refused_naming_the_key_and_the_ways_out(halves, smollm_tokenizer):
    cfg = _cfg(halves)
    old = _loader(cfg, smollm_tokenizer, 2)
    next(old)
    new = build_train_loader(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=1, micro_batches_per_step=4)
    with pytest.raises(DataError) as info:
        new.load_state_dict(old.state_dict())
    message = str(info.value)
    assert "train.micro_batch_size: 2 -> 1" in message
    assert "checkpoint.load_data_state=false" in message and "data.on_resume_mismatch=restart" in message


# -- the same through real runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smollm_tokenizer):
    return make_corpus(tmp_path_factory, smollm_tokenizer)


def _mix(tmp_path, corpus) -> tuple[str, ...]:
    """Sources `a` and `b` (halves of the corpus, short documents); `a` is off from step 4 on."""
    root, _ = corpus
    names = sorted(p.name for p in root.iterdir())
    for name, files in (("a", names[:20]), ("b", names[20:])):
        (tmp_path / name).mkdir(exist_ok=True)
        for f in files:
            shutil.copy(root / f, tmp_path / name / f)
    src = "{{name='{0}', path='{1}', format='txt', separator=\"\\n\\n\"}}"
    return (
        f"data.sources=[{src.format('a', tmp_path / 'a')}, {src.format('b', tmp_path / 'b')}]",
        "data.stages=[{start_step=4, weights={a=0.0, b=1.0}}]",
        "checkpoint.every_steps=0",
    )


def _saved(run_dir: Path, step: int) -> dict:
    """The data position saved at `step` (one rank, no workers: one shard)."""
    state = torch.load(run_dir / "checkpoints" / f"step-{step}" / "rank-0.pt", weights_only=True)
    return state["data"]["shards"][0]


def _last_stage_at(run_dir: Path, step: int) -> int:
    """The mixture stage of the last micro-batch trained before the save at `step`."""
    return _saved(run_dir, step)["mixture"]["stage"]


def test_a_run_resumed_with_half_the_global_batch_switches_at_the_configured_step(tmp_path, corpus):
    """4 rows (2 micro-batches) per step to step 2, then 2 rows: steps 2-3 are stage 0, 4-5 stage 1."""
    mix, run_dir = _mix(tmp_path, corpus), tmp_path / "run"
    assert run(debug_cfg(run_dir, corpus, *mix, "train.stop_at_step=2")) == {"stopped_at": 2}
    half = "train.global_batch_size=2"
    assert run(debug_cfg(run_dir, corpus, *mix, half, "train.stop_at_step=4")) == {"stopped_at": 4}
    assert _last_stage_at(run_dir, 4) == 0  # step 3 (micro-batch 5) is not stage 1 yet
    run(debug_cfg(run_dir, corpus, *mix, half))
    report = json.loads((run_dir / "report" / "data.json").read_text())
    assert report["stages"][1]["tokens"] > 0 and report["stages"][1]["realized_shares"]["a"] == 0.0


def test_a_run_resumed_with_twice_the_global_batch_switches_at_the_configured_step(tmp_path, corpus):
    """2 rows per step to step 3, then 4 rows (2 micro-batches): step 4 is stage 1."""
    mix, run_dir = _mix(tmp_path, corpus), tmp_path / "run"
    one = "train.global_batch_size=2"
    assert run(debug_cfg(run_dir, corpus, *mix, one, "train.stop_at_step=3")) == {"stopped_at": 3}
    assert run(debug_cfg(run_dir, corpus, *mix, "train.stop_at_step=5")) == {"stopped_at": 5}
    assert _last_stage_at(run_dir, 5) == 1  # step 4 (micro-batches 5 and 6) is stage 1


def test_a_run_resumed_with_another_micro_batch_size_is_refused_with_the_ways_out(tmp_path, corpus):
    mix, run_dir = _mix(tmp_path, corpus), tmp_path / "run"
    assert run(debug_cfg(run_dir, corpus, *mix, "train.stop_at_step=2")) == {"stopped_at": 2}
    with pytest.raises(
        DataError, match=r"train\.micro_batch_size: 2 -> 1.*checkpoint\.load_data_state=false"
    ):
        run(debug_cfg(run_dir, corpus, *mix, "train.micro_batch_size=1", "train.stop_at_step=3"))
    restart = ("train.micro_batch_size=1", "data.on_resume_mismatch=restart", "train.stop_at_step=4")
    assert run(debug_cfg(run_dir, corpus, *mix, *restart)) == {"stopped_at": 4}
    assert _last_stage_at(run_dir, 4) == 0  # restarted at step 2: step 3 is stage 0
    assert sum(_saved(run_dir, 4)["stage_tokens"][1]) == 0
