"""Causal attention with document masking, behind one function and several backends.

All backends take q [B, Hq, S, D], k/v [B, Hkv, S, D] and optional document ids [B, S] (int;
padding may use -1), and return [B, Hq, S, D]. A token attends to earlier tokens of its own document
only. `reference` is the plain-math path the others are tested against.

`hybrid` (what `auto` runs for packed rows on CUDA when `model.long_doc_min_tokens` > 0; the trainer finds
each row's long documents on the host): each document of at least that many tokens (default
HYBRID_MIN_DOC_TOKENS for `hybrid`) runs as its own plain causal SDPA call (cuDNN: ~1.4x FlexAttention's
throughput on one long causal document on H100), and one FlexAttention call covers the rest of the row
with those documents' tokens masked out. Each long document's slice is rounded up to a multiple of
HYBRID_ALIGN tokens so SDPA sees few distinct shapes (each new shape costs a cuDNN plan); the rounding
reaches into the following tokens, whose outputs are dropped: under the causal mask the document's own
queries never see them, so results and gradients are exact. Measured (benchmarks/kernels_attention.py,
H100): 1.15-1.17x faster than FlexAttention alone on 64K-token packed rows, slower on 8K and 32K rows,
where the padding and the remaining FlexAttention call's fixed cost outweigh cuDNN's speed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "hybrid", "varlen", "reference")  # varlen: ops/varlen.py, run by the decoder
HYBRID_MIN_DOC_TOKENS = 2048
HYBRID_ALIGN = 512
_EXCLUDED_DOC = -2  # document id given to the tokens of long documents in the hybrid path's FlexAttention mask


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


def flex_block_mask(document_ids: torch.Tensor, long_spans: list[tuple[int, int, int]] | None = None):
    """A FlexAttention BlockMask for causal + same-document attention (compiled builder: long rows).
    `long_spans` (row, start, end): documents the hybrid path computes elsewhere; masked out entirely."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = document_ids
    if long_spans:
        docs = document_ids.clone()
        for row, start, end in long_spans:
            docs[row, start:end] = _EXCLUDED_DOC

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx]) & (docs[b, q_idx] != _EXCLUDED_DOC)
    else:
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


def long_document_spans(document_ids: torch.Tensor, min_tokens: int = HYBRID_MIN_DOC_TOKENS,
                        ) -> list[tuple[int, int, int]]:
    """(row, start, end) of each run of one document id (>= 0) at least `min_tokens` long, in row order.
    Reads a host tensor: the trainer calls it on the batch before the device copy."""
    spans = []
    for row, ids in enumerate(document_ids.cpu()):
        docs, counts = torch.unique_consecutive(ids, return_counts=True)
        start = 0
        for doc, n in zip(docs.tolist(), counts.tolist(), strict=True):
            if n >= min_tokens and doc >= 0:
                spans.append((row, start, start + n))
            start += n
    return spans


@torch.compiler.disable
def hybrid_attention(q, k, v, block_mask, long_spans: list[tuple[int, int, int]]):
    """FlexAttention over the row with `long_spans` masked out (`block_mask` from flex_block_mask(ids,
    long_spans)), and one causal SDPA call per long span. Eager (a graph break under torch.compile): the
    spans change every batch and must not become guards."""
    gqa, seq = q.shape[1] != k.shape[1], q.shape[2]
    if q.is_cuda:
        out = flex_attention(q, k, v, block_mask=block_mask)
    else:  # FlexAttention has no CPU backward: the same mask, dense, through SDPA
        from torch.nn.attention.flex_attention import create_mask

        mask = create_mask(block_mask.mask_mod, q.shape[0], None, seq, seq, device=q.device)
        # the long documents' rows are fully masked here; letting each token see itself keeps them finite
        # (their outputs are replaced below, so nothing flows back through them)
        mask |= torch.eye(seq, dtype=torch.bool, device=q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if not long_spans:
        return out
    padded = [(r, a, b, -(-(b - a) // HYBRID_ALIGN) * HYBRID_ALIGN) for r, a, b in long_spans]
    overflow = max(a + width for _, a, _, width in padded) - seq
    if overflow > 0:  # a rounded-up slice runs past the row: pad the row's end (those outputs are dropped)
        q, k, v = (F.pad(t, (0, 0, 0, overflow)) for t in (q, k, v))
    rows = []
    for row in range(q.shape[0]):
        pieces, pos = [], 0
        for r, a, b, width in padded:
            if r != row:
                continue
            if a > pos:
                pieces.append(out[row : row + 1, :, pos:a])
            sl = slice(a, a + width)
            o = F.scaled_dot_product_attention(q[row : row + 1, :, sl], k[row : row + 1, :, sl],
                                               v[row : row + 1, :, sl], is_causal=True, enable_gqa=gqa)
            pieces.append(o[:, :, : b - a])
            pos = b
        if pos < seq:
            pieces.append(out[row : row + 1, :, pos:seq])
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
    # one memory layout whatever the spans: the compiled code after this call guards on the strides
    return (torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]).contiguous()


def attention(q, k, v, document_ids=None, backend: str = "auto", block_mask=None):
    """Dispatch to a backend. `auto`: FlexAttention for packed rows on CUDA, SDPA otherwise (rows without
    document ids are plain causal: SDPA's fused kernels, cuDNN first after `prefer_cudnn_sdpa`)."""
    if backend == "auto":
        backend = "flex" if (q.is_cuda and document_ids is not None) else "sdpa"
    if backend == "sdpa":
        return sdpa_attention(q, k, v, document_ids)
    if backend in ("flex", "hybrid"):  # hybrid without long documents is FlexAttention
        return flex_attention(q, k, v, document_ids, block_mask)
    if backend == "reference":
        return reference_attention(q, k, v, document_ids)
    raise ValueError(f"attention backend {backend!r} unknown; choose one of {', '.join(BACKENDS)}")
