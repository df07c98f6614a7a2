"""On CUDA: every attention backend agrees with the fp32 reference on packed rows; a decoder step runs."""

import pytest
import torch

from cptrain.models.decoder import Decoder
from cptrain.models.presets import get_preset
from cptrain.ops.attention import attention, reference_attention

pytestmark = pytest.mark.gpu


def packed_doc_ids(b: int, s: int) -> torch.Tensor:
    ids = torch.zeros(b, s, dtype=torch.int32)
    for row in range(b):
        cuts = sorted(torch.randint(1, s, (3,)).tolist())
        for i, c in enumerate(cuts):
            ids[row, c:] = i + 1
    return ids.cuda()


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_backends_match_reference(backend):
    b, hq, hkv, s, d = 2, 8, 2, 1024, 64
    q = torch.randn(b, hq, s, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, hkv, s, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, hkv, s, d, device="cuda", dtype=torch.bfloat16)
    docs = packed_doc_ids(b, s)
    ref = reference_attention(q.float(), k.float(), v.float(), docs)
    out = attention(q, k, v, docs, backend=backend).float()
    rel = (out - ref).norm() / ref.norm()
    assert rel < 1e-2, rel.item()


def test_decoder_bf16_matches_fp32_on_cuda():
    torch.manual_seed(0)
    model = Decoder(get_preset("debug")).cuda()
    model.init_weights()
    ids = torch.randint(0, 512, (2, 256), device="cuda")
    docs = packed_doc_ids(2, 256)
    labels = ids.roll(-1, 1)
    ref = model(ids, document_ids=docs, labels=labels)
    model.loss_impl = "fused_chunked"
    out = model.to(torch.bfloat16)(ids, document_ids=docs, labels=labels)
    assert torch.isfinite(out) and abs(out.item() - ref.item()) / ref.item() < 2e-2
    out.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_causal_sdpa_with_cudnn_first_matches_reference():
    """The single-document path: plain causal SDPA with cuDNN preferred (as build_model sets it), GQA,
    forward and backward against the fp32 reference."""
    from torch.nn.attention import SDPBackend

    from cptrain.ops.attention import prefer_cudnn_sdpa

    prefer_cudnn_sdpa()
    assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.CUDNN_ATTENTION)
    b, hq, hkv, s, d = 1, 8, 2, 2048, 128
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for h in (hq, hkv, hkv))
    out = attention(q, k, v, None, backend="auto")
    grad = torch.randn_like(out)
    out.backward(grad)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qf, kf, vf, None)
    ref.backward(grad.float())
    for mine, theirs in ((out, ref), (q.grad, qf.grad), (k.grad, kf.grad), (v.grad, vf.grad)):
        rel = (mine.float() - theirs).norm() / theirs.norm()
        assert rel < 2e-2, rel.item()


@pytest.mark.parametrize("lengths", [[700, 2500, 300, 3000, 1692], [1000, 7192]])  # 2nd: slice past the row
def test_hybrid_matches_reference_fwd_bwd(lengths):
    """Packed rows with long documents: cuDNN SDPA per long document + FlexAttention for the rest, in bf16,
    against the fp32 reference, forward and all three gradients."""
    from cptrain.ops.attention import (
        flex_block_mask,
        hybrid_attention,
        long_document_spans,
        prefer_cudnn_sdpa,
    )

    prefer_cudnn_sdpa()
    torch.manual_seed(0)
    ids = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[None]
    spans = long_document_spans(ids)
    assert len(spans) == sum(n >= 2048 for n in lengths)
    ids = ids.cuda()
    hq, hkv, s, d = 8, 2, ids.shape[1], 64
    q, k, v = (torch.randn(1, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for h in (hq, hkv, hkv))
    grad = torch.randn(1, hq, s, d, device="cuda", dtype=torch.bfloat16)
    out = hybrid_attention(q, k, v, flex_block_mask(ids, spans), spans)
    got = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q32, k32, v32, ids)
    want = [ref, *torch.autograd.grad(ref, (q32, k32, v32), grad.float())]
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        rel = (g.float() - w).norm() / w.norm()
        assert rel < 1e-2, (name, rel.item())


def test_auto_runs_flash4_varlen_in_compiled_decoder():
    """With flash-attn-4 installed, attention=auto runs every row through the varlen op (no block mask):
    compiled bf16 blocks give the fp32 reference decoder's loss, packed and single-document rows alike."""
    from cptrain.ops.varlen import flash_available

    if not flash_available():
        pytest.skip("flash-attn-4 is not installed or this GPU is not Hopper/Blackwell")
    torch.manual_seed(0)
    ref_model = Decoder(get_preset("debug")).cuda()
    ref_model.init_weights()
    ref_model.set_attention_backend("reference")
    model = Decoder(get_preset("debug")).cuda()
    assert not model.uses_varlen(torch.device("cuda"))  # fp32 activations: the kernel has no fp32, auto skips it
    model = model.to(torch.bfloat16)
    model.load_state_dict(ref_model.state_dict())
    assert model.uses_varlen(torch.device("cuda"))
    for key in list(model.layers):
        model.layers[key] = torch.compile(model.layers[key], fullgraph=True)
    ids = torch.randint(0, 512, (2, 512), device="cuda")
    for docs in (packed_doc_ids(2, 512), torch.zeros(2, 512, dtype=torch.int32, device="cuda")):
        ref = ref_model(ids, document_ids=docs, labels=ids.roll(-1, 1))
        out = model(ids, document_ids=docs, labels=ids.roll(-1, 1))
        assert abs(out.item() - ref.item()) / ref.item() < 2e-2, (out.item(), ref.item())
        out.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
