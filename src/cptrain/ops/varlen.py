"""Packed-row attention as variable-length sequences: each document is its own causal attention.

Rows [B, S] of packed documents flatten to B*S tokens. Each run of one document id inside a row is one
sequence, given by `cu_seqlens` (int32 offsets into the flat tokens, found on the host from the loader's
batch by `cu_seqlens_from_documents`). A kernel that takes these offsets does only the work inside each
document: no mask is built and no masked-out block is visited, unlike FlexAttention's block mask.

Kernel: FlashAttention 4 (PyPI `flash-attn-4`, CuTe DSL; Hopper and Blackwell). It is optional: without
it, and on CPU, the same op runs each document through plain fp32 math (`_reference_forward`), which
is what the tests check the kernel against. Both directions are torch custom ops, so torch.compile keeps
the call as one node of the block's graph (no graph break) and autograd calls the backward op.

Layout: q [T, Hq, D], k/v [T, Hkv, D] (T = B*S tokens, the projections' own layout: no transposes).
"""

from __future__ import annotations

import functools
import math
import os

import torch

FLASH_DTYPES = (torch.bfloat16, torch.float16)  # what the kernel computes in; other dtypes take the reference


@functools.cache
def _flash() -> object | None:
    """flash_attn.cute.interface, or None where it is missing or cannot load."""
    try:
        from flash_attn.cute import interface
    except Exception:  # not installed, or its CUDA/CUTLASS libraries do not load here
        return None
    return interface


def flash_available(device: torch.device | str | None = None) -> bool:
    """FlashAttention 4 can run here: importable, a Hopper (9.x) or Blackwell (10.x) GPU, and not turned off
    with the environment variable CPTRAIN_FLASH4=0 (then `auto` attention runs as without the package)."""
    if os.environ.get("CPTRAIN_FLASH4", "1") == "0" or not torch.cuda.is_available() or _flash() is None:
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major in (9, 10)


def flash_head_dim_ok(head_dim: int) -> bool:
    """A head size FlashAttention 4 runs on both Hopper and Blackwell: a multiple of 8 from 8 to 128
    (Hopper also takes up to 256; Blackwell only some shapes above 128). `auto` skips the kernel otherwise."""
    return 8 <= head_dim <= 128 and head_dim % 8 == 0


def flash_supports(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """The kernel runs inputs of this device, dtype and head size (the one test both the op and `auto` use)."""
    return (device.type == "cuda" and dtype in FLASH_DTYPES and flash_head_dim_ok(head_dim)
            and flash_available(device))


def cu_seqlens_from_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """int32 [N+1] offsets of the N sequences of host rows [B, S]: a new one where the document id changes
    and at each row start (documents cut by the row edge are separate sequences, as under the mask).
    Padding (id -1) runs are sequences too; their outputs are never read by the loss."""
    ids = document_ids.cpu()
    b, s = ids.shape
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    offsets = torch.nonzero(starts.flatten()).flatten().to(torch.int32)
    return torch.cat([offsets, torch.tensor([b * s], dtype=torch.int32)])


def _documents(q, k, v, cu_seqlens, scale):
    """Per non-empty sequence: (start, end, q, k, v as fp32 [Hq, n, D] with k/v repeated for GQA, causal scores)."""
    rep = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b == a:
            continue
        qd = q[a:b].float().transpose(0, 1)
        kd = k[a:b].float().transpose(0, 1).repeat_interleave(rep, 0)
        vd = v[a:b].float().transpose(0, 1).repeat_interleave(rep, 0)
        causal = torch.ones(b - a, b - a, dtype=torch.bool, device=q.device).tril()
        yield a, b, qd, kd, vd, ((qd @ kd.transpose(-1, -2)) * scale).masked_fill(~causal, float("-inf"))


def _reference_forward(q, k, v, cu_seqlens, scale):
    """out [T, Hq, D] (q's dtype) and log-sum-exp [Hq, T] (fp32), one document at a time in fp32."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)
    for a, b, _, _, vd, scores in _documents(q, k, v, cu_seqlens, scale):
        doc_lse = scores.logsumexp(-1)
        out[a:b] = ((scores - doc_lse[..., None]).exp() @ vd).transpose(0, 1).to(q.dtype)
        lse[:, a:b] = doc_lse
    return out, lse


def _reference_backward(dout, q, k, v, out, lse, cu_seqlens, scale):
    """dq, dk, dv of `_reference_forward`, in fp32 from the saved log-sum-exp (the flash recurrence, unblocked)."""
    hkv = k.shape[1]
    rep = q.shape[1] // hkv
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for a, b, qd, kd, vd, scores in _documents(q, k, v, cu_seqlens, scale):
        do, od = (t[a:b].float().transpose(0, 1) for t in (dout, out))  # [Hq, n, D]
        p = (scores - lse[:, a:b, None]).exp()
        dp = do @ vd.transpose(-1, -2)
        ds = p * (dp - (do * od).sum(-1, keepdim=True))
        dq[a:b] = ((ds @ kd) * scale).transpose(0, 1).to(q.dtype)
        # GQA: the query heads sharing a key/value head add up
        dk[a:b] = ((ds.transpose(-1, -2) @ qd) * scale).view(hkv, rep, b - a, -1).sum(1).transpose(0, 1).to(k.dtype)
        dv[a:b] = (p.transpose(-1, -2) @ do).view(hkv, rep, b - a, -1).sum(1).transpose(0, 1).to(v.dtype)
    return dq, dk, dv


@torch.library.custom_op("cptrain::varlen_attention_fwd", mutates_args=())
def varlen_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         max_seqlen: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [T, Hq, D], lse [Hq, T] fp32). `max_seqlen` 0: unknown (the kernel assumes T)."""
    if flash_supports(q.device, q.dtype, q.shape[-1]):
        out, lse, *_ = _flash()._flash_attn_fwd(
            q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen or None,
            max_seqlen_k=max_seqlen or None, softmax_scale=scale, causal=True, return_lse=True)
        return out, lse
    return _reference_forward(q, k, v, cu_seqlens, scale)


@varlen_attention_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return torch.empty_like(q), q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)


@torch.library.custom_op("cptrain::varlen_attention_bwd", mutates_args=())
def varlen_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if flash_supports(q.device, q.dtype, q.shape[-1]):
        dq, dk, dv = _flash()._flash_attn_bwd(
            q, k, v, out, dout.contiguous(), lse, scale, True, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
            max_seqlen_q=max_seqlen or None, max_seqlen_k=max_seqlen or None)
        return dq, dk, dv
    return _reference_backward(dout, q, k, v, out, lse, cu_seqlens, scale)


@varlen_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = varlen_attention_bwd(dout, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.scale)
    return dq, dk, dv, None, None, None


varlen_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int = 0) -> torch.Tensor:
    """Causal attention within each sequence of `cu_seqlens`; q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D]."""
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
        raise ValueError(f"cu_seqlens must be a 1-D int32 tensor, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    out, _ = varlen_attention_fwd(q, k, v, cu_seqlens, max_seqlen, 1.0 / math.sqrt(q.shape[-1]))
    return out
