"""The Batch contract the trainer relies on, on real files with the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest
import torch

from cptrain.data import build_eval_batches, build_train_loader
from cptrain.data.sources import is_eval
from tests.data.data_helpers import (
    data_config,
    doc_text,
    encode_doc,
    input_stream,
    split_documents,
    write_jsonl,
)

SEQ, BATCH = 48, 2


@pytest.fixture
def corpus(tmp_path):
    texts = [doc_text("web", i) for i in range(40)]
    return write_jsonl(tmp_path / "web.jsonl", texts), texts


def test_batch_fields_follow_the_contract(corpus, smollm_tokenizer):
    path, _ = corpus
    cfg = data_config([{"path": str(path)}], eval_fraction=0.0)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH)
    for _ in range(6):
        b = next(loader)
        assert {k: (tuple(v.shape), v.dtype) for k, v in b.items()} == {
            "input_ids": ((BATCH, SEQ), torch.int64),
            "labels": ((BATCH, SEQ), torch.int64),
            "position_ids": ((BATCH, SEQ), torch.int64),
            "document_ids": ((BATCH, SEQ), torch.int32),
        }
        ids, labels, pos, docs = b["input_ids"], b["labels"], b["position_ids"], b["document_ids"]
        eos = smollm_tokenizer.eos_token_id
        for r in range(BATCH):
            assert docs[r].min() >= 0  # no padding in an endless training stream
            for t in range(SEQ):
                new_doc = t == 0 or docs[r, t] != docs[r, t - 1]
                assert pos[r, t] == (0 if new_doc else pos[r, t - 1] + 1)
                if new_doc and t > 0:
                    assert ids[r, t - 1] == eos  # a document only ends with EOS
                if t + 1 < SEQ and docs[r, t + 1] == docs[r, t]:
                    assert labels[r, t] == ids[r, t + 1]
                elif t + 1 < SEQ:
                    assert labels[r, t] == -100
            # the last label is the first input of the next row (rows overlap by one token)
        assert (labels != -100).float().mean() > 0.9


def test_documents_come_out_whole_and_in_the_tokenizers_encoding(corpus, smollm_tokenizer):
    path, texts = corpus
    cfg = data_config([{"path": str(path)}], eval_fraction=0.0)
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH)
    docs = split_documents(input_stream([next(loader) for _ in range(12)]), smollm_tokenizer.eos_token_id)
    expected = {encode_doc(smollm_tokenizer, t) for t in texts}
    assert len(docs) > 10 and all(d in expected for d in docs)


def test_dp_ranks_get_disjoint_documents_covering_the_epoch(corpus, smollm_tokenizer):
    path, texts = corpus
    cfg = data_config([{"path": str(path)}], eval_fraction=0.2)
    eval_texts = {t for i, t in enumerate(texts) if is_eval(f"web.jsonl:{i}", 0.2)}
    assert 0 < len(eval_texts) < len(texts)
    seen = []
    for rank in range(3):
        loader = build_train_loader(
            cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH, dp_rank=rank, dp_size=3
        )
        docs = split_documents(input_stream([next(loader) for _ in range(12)]), smollm_tokenizer.eos_token_id)
        first_epoch = docs[: next(i for i, d in enumerate(docs) if d in docs[:i])]
        seen.append(set(first_epoch))
    assert sum(len(s) for s in seen) == len(set().union(*seen))  # disjoint
    expected = {encode_doc(smollm_tokenizer, t) for t in texts if t not in eval_texts}
    assert set().union(*seen) == expected  # every training document once, no held-out one


def test_resume_continues_bitwise(corpus, smollm_tokenizer):
    path, _ = corpus
    cfg = data_config([{"path": str(path)}])
    loader = build_train_loader(
        cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH, dp_rank=1, dp_size=2
    )
    for _ in range(7):
        next(loader)
    state = loader.state_dict()
    after = [next(loader) for _ in range(10)]
    again = build_train_loader(
        cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH, dp_rank=1, dp_size=2
    )
    again.load_state_dict(state)
    for a, b in zip(after, [next(again) for _ in range(10)]):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_batches_are_held_out_fixed_and_padded_only_at_the_end(corpus, smollm_tokenizer):
    path, texts = corpus
    cfg = data_config([{"path": str(path)}], eval_fraction=0.2)
    evals = build_eval_batches(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH, max_batches=50)
    again = build_eval_batches(cfg, smollm_tokenizer, seq_len=SEQ, micro_batch_size=BATCH, max_batches=50)
    assert len(evals) == len(again) > 0
    assert all(torch.equal(a[k], b[k]) for a, b in zip(evals, again) for k in a)
    ids = torch.cat([b["input_ids"] for b in evals])
    real = torch.cat([b["document_ids"] for b in evals]) >= 0
    stream = ids[real]
    last = evals[-1]["labels"][-1, -1]
    if real.all() and last != -100:  # the stream's last token sits only in the last row's labels
        stream = torch.cat([stream, last.view(1)])
    docs = split_documents(stream, smollm_tokenizer.eos_token_id)
    held_out = {
        encode_doc(smollm_tokenizer, t) for i, t in enumerate(texts) if is_eval(f"web.jsonl:{i}", 0.2)
    }
    assert set(docs) == held_out  # every held-out document, nothing else (all fit in 50 batches)
    pad = torch.cat([b["document_ids"].flatten() for b in evals]) < 0
    assert not pad[: int(pad.long().argmax())].any() if pad.any() else True


def test_bos_and_eos_follow_the_config_and_special_strings_in_text_stay_text(tmp_path, smollm_tokenizer):
    texts = ["a plain document", "this one mentions <|im_end|> and <|endoftext|> in its text", "the end"]
    path = write_jsonl(tmp_path / "s.jsonl", texts)
    bos, endoftext = smollm_tokenizer.bos_token_id, smollm_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    cfg = data_config([{"path": str(path)}], eval_fraction=0.0, add_bos=True, eos_token="<|endoftext|>")
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=16, micro_batch_size=2)
    stream = input_stream([next(loader) for _ in range(6)])
    docs = split_documents(stream, endoftext)
    assert len(docs) >= 3 and all(d[0] == bos and d.count(endoftext) == 1 for d in docs)
    assert smollm_tokenizer.eos_token_id not in stream.tolist()  # "<|im_end|>" in the text is not EOS
    # "auto" follows the tokenizer's own convention: SmolLM2 adds no BOS
    auto = build_train_loader(
        data_config([{"path": str(path)}], eval_fraction=0.0),
        smollm_tokenizer,
        seq_len=16,
        micro_batch_size=2,
    )
    first = split_documents(input_stream([next(auto) for _ in range(6)]), smollm_tokenizer.eos_token_id)
    assert first and all(d[0] != bos for d in first)
