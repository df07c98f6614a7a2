"""Packed rows as variable-length sequences (ops/varlen.py): offsets, the op against the masked reference,
its gradients, and torch.compile keeping it in one graph. On CUDA with FlashAttention 4: the kernel."""

import pytest
import torch

from cptrain.ops.attention import reference_attention
from cptrain.ops.varlen import cu_seqlens_from_documents, flash_available, varlen_attention


def test_offsets_split_at_document_changes_and_row_starts():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [2, 2, 2, -1, -1, -1]])
    # the document 2 cut by the row edge is two sequences; the padding run is one
    assert cu_seqlens_from_documents(ids).tolist() == [0, 2, 5, 6, 9, 12]
    assert cu_seqlens_from_documents(torch.zeros(1, 7, dtype=torch.int64)).tolist() == [0, 7]


def test_head_sizes_the_kernel_takes_on_every_supported_gpu():
    from cptrain.ops.varlen import flash_head_dim_ok

    assert [flash_head_dim_ok(d) for d in (64, 80, 128, 60, 256, 4)] == [True, True, True, False, False, False]


def test_rejects_offsets_of_the_wrong_dtype():
    q = torch.randn(4, 2, 8)
    with pytest.raises(ValueError, match="int32"):
        varlen_attention(q, q, q, torch.tensor([0, 4]))


def packed(b, s, hq, hkv, d, dtype=torch.float32, device="cpu"):
    ids = torch.zeros(b, s, dtype=torch.int64)
    for row in range(b):
        for i, cut in enumerate(sorted(torch.randint(1, s, (3,)).tolist())):
            ids[row, cut:] = row * 10 + i + 1
    ids[-1, -5:] = -1  # padding at the end of the last row
    q, k, v = (torch.randn(b, s, h, d, dtype=dtype, device=device, requires_grad=True) for h in (hq, hkv, hkv))
    return ids, q, k, v


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2)])
def test_matches_masked_reference_forward_and_backward(hq, hkv):
    b, s, d = 3, 53, 16  # s is no multiple of any block size
    ids, q, k, v = packed(b, s, hq, hkv, d)
    out = varlen_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                           cu_seqlens_from_documents(ids)).view(b, s, hq, d)
    ref = reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ids).transpose(1, 2)
    keep = ids >= 0  # padding attends within its own run in the op, within nothing useful in the reference
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out) * keep[..., None, None]
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, g, w in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(g[keep], w[keep], atol=1e-5, rtol=1e-5, msg=f"d{name}")


def test_custom_op_passes_opcheck_and_compiles_without_graph_break():
    ids, q, k, v = packed(2, 24, 4, 2, 8)
    cu = cu_seqlens_from_documents(ids)
    flat = [t.flatten(0, 1) for t in (q, k, v)]
    torch.library.opcheck(torch.ops.cptrain.varlen_attention_fwd, (*flat, cu, 0, 0.35))
    eager = varlen_attention(*flat, cu)
    compiled = torch.compile(varlen_attention, fullgraph=True)(*flat, cu)  # fullgraph: a break would raise
    torch.testing.assert_close(compiled, eager)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_flash_kernel_matches_fp32_reference(d):
    if not flash_available():
        pytest.skip("flash-attn-4 is not installed or this GPU is not Hopper/Blackwell")
    b, s, hq, hkv = 2, 1000, 8, 2
    ids, q, k, v = packed(b, s, hq, hkv, d, torch.bfloat16, "cuda")
    cu = cu_seqlens_from_documents(ids).cuda()
    out = varlen_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu).view(b, s, hq, d)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qf.transpose(1, 2), kf.transpose(1, 2), vf.transpose(1, 2),
                              ids.cuda()).transpose(1, 2)
    keep = (ids >= 0).cuda()
    grad = torch.randn_like(ref) * keep[..., None, None]
    got = torch.autograd.grad(out, (q, k, v), grad.bfloat16())
    want = torch.autograd.grad(ref, (qf, kf, vf), grad)
    for name, g, w in (("out", out, ref), *zip(("dq", "dk", "dv"), got, want, strict=True)):
        g, w = g.float()[keep], w[keep]
        rel = ((g - w).norm() / w.norm()).item()
        assert rel < 2e-2, f"{name}: relative error {rel:.3g}"
