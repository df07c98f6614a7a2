"""Mixture: token-level shares follow the weights; small sources repeat, large ones are not exhausted."""

from __future__ import annotations

from cptrain.data import build_train_loader
from tests.data.data_helpers import (
    data_config,
    doc_text,
    docs_by_source,
    input_stream,
    split_documents,
    two_sources,
    write_jsonl,
)

SEQ, BATCH = 1024, 8


def test_realized_token_shares_within_one_percent_over_a_million_tokens(tmp_path, smollm_tokenizer):
    short_path, long_path, short, long = two_sources(tmp_path)
    big = [doc_text("big", i, words=30) for i in range(6000)]
    cfg = data_config(
        [
            {"name": "short", "path": str(short_path), "weight": 5},
            {"name": "long", "path": str(long_path), "weight": 3},
            {"name": "big", "path": str(write_jsonl(tmp_path / "big.jsonl", big)), "weight": 2},
        ],
        eval_fraction=0.0,
    )
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH)
    batches = [next(loader) for _ in range(1_000_000 // (SEQ * BATCH) + 1)]
    docs = split_documents(input_stream(batches), smollm_tokenizer.eos_token_id)
    per_source = docs_by_source(docs, smollm_tokenizer, {"short": short, "long": long, "big": big})
    tokens = {name: sum(len(d) for d in ds) for name, ds in per_source.items()}
    total = sum(tokens.values())
    assert total > 1_000_000 - 2 * SEQ
    for name, weight in (("short", 0.5), ("long", 0.3), ("big", 0.2)):
        assert abs(tokens[name] / total - weight) < 0.01, (name, tokens[name] / total)
    # document shares are far from token shares: the mix really is by tokens
    assert len(per_source["short"]) / len(docs) > 0.7
    # the small sources repeated (epochs counted), the big one was not exhausted early: no repeats
    report = loader.report()
    assert (
        report["sources"]["short"]["epochs_started"] > 5 and report["sources"]["long"]["epochs_started"] > 5
    )
    assert report["sources"]["big"]["epochs_started"] == 1
    assert len(set(per_source["big"])) == len(per_source["big"])
    for name, weight in (("short", 0.5), ("long", 0.3), ("big", 0.2)):
        assert abs(report["stages"][0]["realized_shares"][name] - weight) < 0.01


def test_stages_switch_the_mix_at_the_given_step_without_losing_documents(tmp_path, smollm_tokenizer):
    short_path, long_path, short, long = two_sources(tmp_path, short_docs=2000, long_docs=400)
    cfg = data_config(
        [
            {"name": "short", "path": str(short_path), "weight": 1},
            {"name": "long", "path": str(long_path), "weight": 1},
        ],
        stages=[{"start_step": 10, "weights": {"short": 0, "long": 1}}],
        eval_fraction=0.0,
    )
    loader = build_train_loader(
        cfg, smollm_tokenizer, seq_len=256, micro_batch_size=2, micro_batches_per_step=2
    )
    before = [next(loader) for _ in range(20)]  # steps 0-9
    after = [next(loader) for _ in range(20)]  # steps 10-19
    eos = smollm_tokenizer.eos_token_id
    stream = split_documents(input_stream(before + after), eos)
    mix_before = docs_by_source(
        split_documents(input_stream(before), eos), smollm_tokenizer, {"short": short, "long": long}
    )
    assert mix_before["short"] and mix_before["long"]
    # from step 10 on only "long" documents start (the one document cut by the switch finishes first)
    first_after = split_documents(input_stream(after), eos)[1:]
    assert docs_by_source(first_after, smollm_tokenizer, {"short": short, "long": long})["short"] == []
    # nothing lost or repeated at the switch: neither source has used up its documents yet
    assert len(set(stream)) == len(stream)
    report = loader.report()
    assert report["stages"][1]["realized_shares"] == {"short": 0.0, "long": 1.0}
    assert 0.4 < report["stages"][0]["realized_shares"]["short"] < 0.6


def test_a_stage_starts_with_its_largest_source():
    """All lags are 0 when a run or a stage starts: the first document comes from the largest weight, not the
    first-listed source (whose long document could otherwise fill a short stage meant for another)."""
    from cptrain.data.mixture import Mixture

    m = Mixture([[0.7, 0.3], [0.2, 0.8]], [0, 4])
    assert m.choose() == 0
    m.record(0, 5000)
    m.set_step(4)
    assert m.choose() == 1
    assert Mixture([[0.01, 0.99]], [0]).choose() == 1
    assert Mixture([[1.0, 1.0, 1.0]], [0]).choose() == 0  # equal weights: the order of the recipe
    m = Mixture([[0.25, 0.75]], [0])
    picks = []
    for _ in range(8):  # equal-length documents: 1 in 4 from the first source, the larger one first
        picks.append(m.choose())
        m.record(picks[-1], 100)
    assert picks == [1, 0, 1, 1, 1, 0, 1, 1]
