"""Causal attention with document masking, behind one function and several backends.

All backends take q [B, Hq, S, D], k/v [B, Hkv, S, D] and optional document ids [B, S] (int;
padding may use -1), and return [B, Hq, S, D]. A token attends to earlier tokens of its own document
only. `reference` is the plain-math path the others are tested against.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "reference")


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, S, S]: True where query i may attend key j."""
    s = document_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=document_ids.device).tril()
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    return (same_doc & causal)[:, None]


def reference_attention(q, k, v, document_ids=None):
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    s = q.shape[2]
    if document_ids is None:
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()[None, None]
    else:
        mask = document_causal_mask(document_ids)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


def sdpa_attention(q, k, v, document_ids=None):
    gqa = q.shape[1] != k.shape[1]
    if document_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=document_causal_mask(document_ids), enable_gqa=gqa)


def prefer_cudnn_sdpa() -> None:
    """Make cuDNN the first SDPA kernel PyTorch tries (the others stay enabled, in their order).

    On H100 cuDNN runs causal attention about 1.5x faster than the flash kernel SDPA picks by default, for
    head dims 64 and 128, forward and backward (benchmarks/kernels_attention.py). A process-wide
    setting, made once before any model is compiled: the compiler picks the kernel while tracing.
    """
    from torch.nn.attention import SDPBackend

    if not hasattr(torch._C, "_set_sdp_priority_order"):
        return
    first = [int(SDPBackend.CUDNN_ATTENTION)]
    torch._C._set_sdp_priority_order(first + [b for b in torch._C._get_sdp_priority_order() if b not in first])


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    # compiled once: create_block_mask(_compile=True) wraps it in a new torch.compile on every call, host
    # time (~ms per step) during which the GPU idles at the start of each step
    return torch.compile(create_block_mask)


def flex_block_mask(document_ids: torch.Tensor):
    """A FlexAttention BlockMask for causal + same-document attention (compiled builder: long rows)."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = document_ids

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx])

    b, s = docs.shape
    build = _compiled_create_block_mask() if docs.is_cuda else create_block_mask
    return build(mask_mod, b, None, s, s, device=docs.device)


def flex_attention(q, k, v, document_ids=None, block_mask=None):
    if block_mask is None:
        if document_ids is None:
            document_ids = torch.zeros(q.shape[0], q.shape[2], dtype=torch.int32, device=q.device)
        block_mask = flex_block_mask(document_ids)
    fn = _compiled_flex() if q.is_cuda else __import__(
        "torch.nn.attention.flex_attention", fromlist=["flex_attention"]).flex_attention
    return fn(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def attention(q, k, v, document_ids=None, backend: str = "auto", block_mask=None):
    """Dispatch to a backend. `auto`: FlexAttention for packed rows on CUDA, SDPA otherwise (rows without
    document ids are plain causal: SDPA's fused kernels, cuDNN first after `prefer_cudnn_sdpa`)."""
    if backend == "auto":
        backend = "flex" if (q.is_cuda and document_ids is not None) else "sdpa"
    if backend == "sdpa":
        return sdpa_attention(q, k, v, document_ids)
    if backend == "flex":
        return flex_attention(q, k, v, document_ids, block_mask)
    if backend == "reference":
        return reference_attention(q, k, v, document_ids)
    raise ValueError(f"attention backend {backend!r} unknown; choose one of {', '.join(BACKENDS)}")
