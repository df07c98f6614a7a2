"""Mixture: token-level shares follow the weights; small sources repeat, large ones are not exhausted."""

from __future__ import annotations

import torch

from cptrain.data import build_train_loader
from tests.data.data_helpers import (
    data_config,
    doc_text,
    docs_by_source,
    encode_doc,
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


def _tokens_by_source(stream, eos_id: int, first_token: dict[int, int]):
    """Per token of a shard's stream (which starts at a document start), the source of its document."""
    ends = (stream == eos_id).nonzero().flatten()
    starts = torch.cat([torch.zeros(1, dtype=torch.long), ends + 1])
    starts = starts[starts < len(stream)]
    owners = torch.tensor([first_token[int(stream[s])] for s in starts])
    lengths = torch.diff(torch.cat([starts, torch.tensor([len(stream)])]))
    return owners.repeat_interleave(lengths)


def test_every_worker_keeps_the_mix_within_one_document(tmp_path, smollm_tokenizer):
    """Each shard (rank x loader worker) mixes its own stream: at every token of it the 0.2 source is within
    one document of 0.2 of the tokens so far, with documents longer than a row; ranks and the job too."""
    short = [doc_text("short", i, words=10) for i in range(600)]  # ~30 tokens
    long = [doc_text("long", i, words=400) for i in range(100)]  # ~520 tokens, two rows and more
    cfg = data_config(
        [
            {"name": "short", "path": str(write_jsonl(tmp_path / "short.jsonl", short)), "weight": 0.8},
            {"name": "long", "path": str(write_jsonl(tmp_path / "long.jsonl", long)), "weight": 0.2},
        ],
        eval_fraction=0.0,
        num_workers=2,
    )
    eos = smollm_tokenizer.eos_token_id
    encoded = [[encode_doc(smollm_tokenizer, t) for t in texts] for texts in (short, long)]
    first_token = {d[0]: s for s, docs in enumerate(encoded) for d in docs}
    assert len(first_token) == 2  # each source's documents begin with their own token
    longest = max(len(d) for docs in encoded for d in docs)
    seq, rows, batches = 256, 2, 60
    assert min(len(d) for d in encoded[1]) > seq
    job = torch.zeros(2)
    for rank in range(2):
        loader = build_train_loader(
            cfg, smollm_tokenizer, seq_len=seq, micro_batch_size=rows, dp_rank=rank, dp_size=2
        )
        got = [next(loader) for _ in range(batches)]
        report = loader.report()
        loader.close()
        per_rank = torch.zeros(2)
        for worker in range(2):  # batch g comes from worker g % 2
            owner = _tokens_by_source(input_stream(got[worker::2]), eos, first_token)
            seen = torch.arange(1, len(owner) + 1)
            lead = torch.cumsum(owner == 1, 0) - 0.2 * seen  # the 0.2 source's tokens over its target
            assert lead.abs().max() <= longest, (rank, worker, lead.abs().max().item(), longest)
            per_rank += torch.bincount(owner, minlength=2)
        shard_tokens = batches // 2 * rows * seq
        assert abs(per_rank[0] / per_rank.sum() - 0.8) <= longest / shard_tokens
        assert abs(report["stages"][0]["realized_shares"]["short"] - 0.8) <= longest / shard_tokens
        job += per_rank
    assert abs(job[0] / job.sum() - 0.8) <= longest / shard_tokens
