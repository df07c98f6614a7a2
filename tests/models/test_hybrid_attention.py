"""Hybrid attention (long documents as their own causal SDPA calls, FlexAttention for the rest of the row):
exact against the reference on CPU, forward and gradients; the spans never become compile guards."""

import pytest
import torch

import cptrain.ops.attention as attn_ops
from cptrain.models.decoder import Block, Decoder
from cptrain.models.presets import get_preset
from cptrain.models.rope import rope_cos_sin
from cptrain.ops.attention import flex_block_mask, hybrid_attention, long_document_spans, reference_attention


def doc_ids(rows: list[list[int]]) -> torch.Tensor:
    """Rows given as document lengths (a negative length: that many padding tokens, id -1)."""
    out = []
    for lengths in rows:
        ids, doc = [], 0
        for n in lengths:
            ids += [-1] * -n if n < 0 else [doc] * n
            doc += n > 0
        out.append(ids)
    return torch.tensor(out, dtype=torch.int32)


def test_long_document_spans():
    ids = doc_ids([[5, 40, 3, 52], [100], [30, 60, -10]])
    assert long_document_spans(ids, 40) == [(0, 5, 45), (0, 48, 100), (1, 0, 100), (2, 30, 90)]
    assert long_document_spans(ids, 101) == []
    assert long_document_spans(doc_ids([[-100]]), 10) == []  # padding is never a document


@pytest.mark.parametrize("align", [512, 16])  # 512: every slice runs past the row; 16: into the next document
def test_hybrid_matches_reference_with_grads(monkeypatch, align):
    monkeypatch.setattr(attn_ops, "HYBRID_ALIGN", align)
    torch.manual_seed(0)
    b, hq, hkv, d = 2, 4, 2, 16
    ids = doc_ids([[7, 41, 3, 45], [20, 56, -20]])
    s = ids.shape[1]
    spans = long_document_spans(ids, 30)
    assert spans == [(0, 7, 48), (0, 51, 96), (1, 20, 76)]
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for h in (hq, hkv, hkv))
    grad = torch.randn(b, hq, s, d)
    want = reference_attention(q, k, v, ids)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    got = hybrid_attention(q, k, v, flex_block_mask(ids, spans), spans)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    real = (ids >= 0)[:, None, :, None]  # padding rows attend to each other in neither path's contract
    torch.testing.assert_close(got * real, want * real, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_decoder_hybrid_loss_and_grads_equal_reference():
    torch.manual_seed(0)
    ids = doc_ids([[9, 70, 49]])
    tokens = torch.randint(0, 512, ids.shape)
    labels = tokens.roll(-1, 1)
    results = {}
    for backend in ("reference", "hybrid"):
        torch.manual_seed(1)
        model = Decoder(get_preset("debug"))
        model.init_weights()
        model.set_attention_backend(backend)
        loss = model(tokens, document_ids=ids, labels=labels, long_spans=long_document_spans(ids, 40))
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    assert all(m.hybrid for m in model.modules() if hasattr(m, "hybrid"))
    torch.testing.assert_close(results["hybrid"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    for name, g in results["hybrid"][1].items():
        torch.testing.assert_close(g, results["reference"][1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_block_does_not_recompile_for_new_spans():
    """The spans are read inside a compile-disabled call: new documents every batch cost no recompiles."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    args = get_preset("debug")
    block = Block(args)
    block.self_attn.backend = "hybrid"
    compiled = torch.compile(block, backend="aot_eager")
    model = Decoder(args)  # only for its RoPE helper inputs
    s = 128
    cos, sin = rope_cos_sin(model.inv_freq, torch.arange(s)[None], model.rope_attn_factor, torch.float32)
    x = torch.randn(1, s, args.dim)

    def step(lengths):
        ids = doc_ids([lengths])
        spans = long_document_spans(ids, 40)
        block.self_attn.long_spans, block.self_attn.hybrid = spans, bool(spans)
        compiled(x, cos, sin, ids, flex_block_mask(ids, spans)).sum().backward()

    step([10, 60, 58])  # compiles the hybrid variant
    with torch._dynamo.config.patch(error_on_recompile=True):
        for lengths in ([50, 78], [3, 41, 84], [128], [20, 60, 48]):
            step(lengths)
