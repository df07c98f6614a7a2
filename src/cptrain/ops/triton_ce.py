"""Triton kernels for one chunk of the fused linear cross-entropy (see chunked_ce.py).

The logits chunk [rows, V] comes from a cuBLAS matmul; these kernels make two passes over it:
`row_stats` reads it once for the per-row log-sum-exp and target logit, `logits_grad_` reads it
again and overwrites it in place with d(loss)/d(logits), ready for the two gradient matmuls. All
arithmetic is fp32 whatever the storage dtype. One program per row: chunks have thousands of rows,
enough to fill the GPU, and a row never needs a cross-program reduction. The vocabulary size is a
compile-time constant: it is fixed for a run, and the loop bounds become static.

Runs under TRITON_INTERPRET=1 on CPU tensors, which is how the CPU tests check them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 8192  # 8192 x 16 warps: the fastest of the settings timed on H100 (kernels_ce.py breakdown)
_NUM_WARPS = 16


@triton.jit
def _softcapped(x, softcap, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        # tanh through exp: stable at both ends (exp -> inf gives 1, exp -> 0 gives -1)
        x = softcap * (1.0 - 2.0 / (tl.exp(2.0 * x / softcap) + 1.0))
    return x


@triton.jit
def _row_stats_kernel(logits_ptr, stride_row, labels_ptr, lse_ptr, target_ptr, vocab_start, ignore_index,
                      softcap, n_cols: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, n_cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n_cols
        x = tl.load(base + offs, mask=inside, other=0.0).to(tl.float32)
        x = tl.where(inside, _softcapped(x, softcap, HAS_SOFTCAP), float("-inf"))
        new_max = tl.maximum(running_max, tl.max(x, 0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), 0)
        running_max = new_max
    tl.store(lse_ptr + row, running_max + tl.log(running_sum))

    label = tl.load(labels_ptr + row)
    local = label - vocab_start
    hit = (label != ignore_index) & (local >= 0) & (local < n_cols)
    target = tl.load(base + local, mask=hit, other=0.0).to(tl.float32)
    target = tl.where(hit, _softcapped(target, softcap, HAS_SOFTCAP), 0.0)
    tl.store(target_ptr + row, target)


@triton.jit
def _logits_grad_kernel(logits_ptr, stride_row, labels_ptr, lse_ptr, coef_ptr, scale_ptr, vocab_start,
                        softcap, n_cols: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    # d loss / d logit_v = coef * softmax_v - scale * [v == label], times the softcap's tanh' when capped;
    # coef folds the reduction scale and the z-loss term, both zero on ignored rows
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    lse = tl.load(lse_ptr + row)
    coef = tl.load(coef_ptr + row)
    scale = tl.load(scale_ptr + row)
    local = tl.load(labels_ptr + row) - vocab_start
    for start in range(0, n_cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n_cols
        x = tl.load(base + offs, mask=inside, other=0.0).to(tl.float32)
        z = _softcapped(x, softcap, HAS_SOFTCAP)
        grad = coef * tl.exp(z - lse) - tl.where(offs == local, scale, 0.0)
        if HAS_SOFTCAP:
            t = z / softcap
            grad = grad * (1.0 - t * t)
        tl.store(base + offs, grad.to(logits_ptr.dtype.element_ty), mask=inside)


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.stride(1) != 1 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected row-major logits [rows, V] and labels [rows], got {tuple(logits.shape)} "
                         f"(strides {logits.stride()}) and {tuple(labels.shape)}")


def row_stats(logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, ignore_index: int,
              softcap: float | None, block: int = _BLOCK,
              num_warps: int = _NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp32 log-sum-exp of the (soft-capped) logits and the target's logit (0 where the target
    is ignored or outside this vocabulary slice)."""
    _check(logits, labels)
    rows, n_cols = logits.shape
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    target = torch.empty_like(lse)
    if rows:
        _row_stats_kernel[(rows,)](logits, logits.stride(0), labels, lse, target, vocab_start, ignore_index,
                                   float(softcap or 1.0), n_cols=n_cols, HAS_SOFTCAP=softcap is not None,
                                   BLOCK=block, num_warps=num_warps)
    return lse, target


def logits_grad_(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, coef: torch.Tensor,
                 scale: torch.Tensor, vocab_start: int, softcap: float | None, block: int = _BLOCK,
                 num_warps: int = _NUM_WARPS) -> torch.Tensor:
    """Overwrite `logits` with the gradient of the loss with respect to them; returns `logits`."""
    _check(logits, labels)
    rows, n_cols = logits.shape
    if rows:
        _logits_grad_kernel[(rows,)](logits, logits.stride(0), labels, lse, coef, scale, vocab_start,
                                     float(softcap or 1.0), n_cols=n_cols, HAS_SOFTCAP=softcap is not None,
                                     BLOCK=block, num_warps=num_warps)
    return logits


@triton.jit
def _scale_kernel(x_ptr, factor_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(x_ptr + offs, (x * tl.load(factor_ptr).to(tl.float32)).to(x_ptr.dtype.element_ty), mask=inside)


def scale_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x *= factor (a 0-dim tensor on x's device) in place, fp32 product rounded once: the backward's
    incoming gradient applied to the stored gradients. torch's mul_ by a 0-dim device tensor of another
    dtype takes its slow broadcasting path, about 3x this on the [V, H] weight gradient."""
    if not x.is_contiguous() or factor.numel() != 1:
        return x.mul_(factor)
    n = x.numel()
    if n:
        _scale_kernel[(triton.cdiv(n, 4096),)](x, factor, n, BLOCK=4096, num_warps=8)
    return x
