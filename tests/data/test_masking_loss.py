"""End-to-end proof of the document masking: a packed row's loss is the sum of its documents' losses."""

from __future__ import annotations

import dataclasses

import torch

from cptrain.data import build_train_loader
from cptrain.models.decoder import Decoder
from cptrain.models.presets import get_preset
from tests.data.data_helpers import data_config, doc_text, write_jsonl


def _pieces(batch: dict, row: int) -> list[torch.Tensor]:
    """Each document piece of a row as its own token sequence (inputs, plus its last label if any)."""
    ids, labels, docs = batch["input_ids"][row], batch["labels"][row], batch["document_ids"][row]
    out, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or docs[t] != docs[start]:
            seg = ids[start:t]
            if labels[t - 1] != -100:  # the document goes on: its next token is this piece's last label
                seg = torch.cat([seg, labels[t - 1 : t]])
            out.append(seg)
            start = t
    return out


def test_packed_loss_equals_sum_of_separate_document_losses(tmp_path, smollm_tokenizer):
    texts = [doc_text("mix", i, words=4 + (i * 11) % 30) for i in range(30)]
    cfg = data_config([{"path": str(write_jsonl(tmp_path / "d.jsonl", texts))}], eval_fraction=0.0)
    batch = next(build_train_loader(cfg, smollm_tokenizer, seq_len=96, micro_batch_size=2))
    assert all(len(batch["document_ids"][r].unique()) >= 3 for r in range(2))  # rows really are packed

    args = dataclasses.replace(get_preset("debug"), vocab_size=len(smollm_tokenizer))
    model = Decoder(args)
    model.init_weights()
    model.eval()
    with torch.no_grad():
        packed = model(batch["input_ids"], batch["position_ids"], batch["document_ids"], batch["labels"])
        separate = sum(
            model(seg[None, :-1], labels=seg[None, 1:])
            for r in range(2)
            for seg in _pieces(batch, r)
            if len(seg) > 1
        )
        unmasked = model(batch["input_ids"], None, None, batch["labels"])
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-3)
    # the comparison has teeth: attending across documents changes the loss
    assert not torch.allclose(packed, unmasked, rtol=1e-4, atol=1e-3)
