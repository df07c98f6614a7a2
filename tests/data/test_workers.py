"""Loader workers: ranks x workers read disjoint documents, each exactly once per epoch; resume holds."""

from __future__ import annotations

import torch

from cptrain.data import build_train_loader
from cptrain.data.sources import is_eval
from tests.data.data_helpers import (
    data_config,
    doc_text,
    encode_doc,
    input_stream,
    split_documents,
    write_jsonl,
)

SEQ, BATCH = 32, 2


def test_exactly_once_per_epoch_across_two_ranks_and_two_workers(tmp_path, smollm_tokenizer):
    texts = [doc_text("w", i, words=6) for i in range(48)]
    cfg = data_config(
        [{"path": str(write_jsonl(tmp_path / "w.jsonl", texts))}], eval_fraction=0.1, num_workers=2
    )
    eos = smollm_tokenizer.eos_token_id
    epoch_sets = []
    for rank in range(2):
        loader = build_train_loader(
            cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH, dp_rank=rank, dp_size=2
        )
        batches = [next(loader) for _ in range(24)]
        for worker in range(2):  # batch g comes from worker g % 2: each worker's rows form one stream
            docs = split_documents(input_stream(batches[worker::2]), eos)
            repeat = next(i for i, d in enumerate(docs) if d in docs[:i])
            epoch_sets.append(docs[:repeat])
    assert all(len(s) == len(set(s)) for s in epoch_sets)
    union = set().union(*map(set, epoch_sets))
    assert sum(len(s) for s in epoch_sets) == len(union)  # no document on two shards
    train = {encode_doc(smollm_tokenizer, t) for i, t in enumerate(texts) if not is_eval(f"w.jsonl:{i}", 0.1)}
    assert union == train and len(train) < len(texts)  # all training documents, no held-out one


def test_resume_with_workers_continues_bitwise(tmp_path, smollm_tokenizer):
    texts = [doc_text("w", i, words=20) for i in range(40)]
    cfg = data_config([{"path": str(write_jsonl(tmp_path / "w.jsonl", texts))}], num_workers=2)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH)
    for _ in range(7):  # odd: the next batch is worker 1's turn
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(6)]
    resumed = build_train_loader(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(6)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(expected, got) for k in a)
    assert loader.report()["batches"] == 13
