"""Triton kernels for one chunk of the fused linear cross-entropy (see chunked_ce.py).

The logits chunk [rows, V] comes from a cuBLAS matmul. With gradients the path is one pass,
`shifted_exp_`: it reads each row once and overwrites it with exp(logit - shift), where the shift is
fixed early in the row, not the final log-sum-exp, so the gradient is that buffer times a per-row scale
(applied to the small [rows, H] operands of the two gradient matmuls, `row_scale`), except at the target
column, which it rewrites at the end of the row. In fp16, whose range cannot hold the unscaled values, and
for the loss alone, two passes: `row_stats` for the per-row log-sum-exp and target logit, then (fp16 with
gradients) `logits_grad_`, which overwrites the logits with d(loss)/d(logits).
All arithmetic is fp32 whatever the storage dtype. One program per row: chunks have thousands of rows,
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
def _capped_block(base, start, softcap, n_cols: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    """Columns [start, start + BLOCK) of the row at `base`: their offsets, which lie inside the row, and the
    (soft-capped) logits in fp32, -inf past the row's end."""
    offs = start + tl.arange(0, BLOCK)
    inside = offs < n_cols
    x = tl.load(base + offs, mask=inside, other=0.0).to(tl.float32)
    return offs, inside, tl.where(inside, _softcapped(x, softcap, HAS_SOFTCAP), float("-inf"))


@triton.jit
def _target_logit(base, labels_ptr, row, vocab_start, ignore_index, softcap, n_cols: tl.constexpr,
                  HAS_SOFTCAP: tl.constexpr):
    """The row's label column in this vocabulary slice, whether the label lies there (and is not ignored), and
    its (soft-capped) logit in fp32 (0 when it does not)."""
    label = tl.load(labels_ptr + row)
    local = label - vocab_start
    hit = (label != ignore_index) & (local >= 0) & (local < n_cols)
    target = tl.load(base + local, mask=hit, other=0.0).to(tl.float32)
    return local, hit, tl.where(hit, _softcapped(target, softcap, HAS_SOFTCAP), 0.0)


@triton.jit
def _row_stats_kernel(logits_ptr, stride_row, labels_ptr, lse_ptr, target_ptr, vocab_start, ignore_index,
                      softcap, n_cols: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, n_cols, BLOCK):
        _, _, x = _capped_block(base, start, softcap, n_cols, HAS_SOFTCAP, BLOCK)
        new_max = tl.maximum(running_max, tl.max(x, 0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), 0)
        running_max = new_max
    tl.store(lse_ptr + row, running_max + tl.log(running_sum))
    _, _, target = _target_logit(base, labels_ptr, row, vocab_start, ignore_index, softcap, n_cols, HAS_SOFTCAP)
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


# how far above the row's shift a later block's maximum may go before the row written so far is rescaled to
# a new shift: stored values stay below e^40 (bf16 and fp32 hold up to ~3e38), and a real model's logits
# rarely spread that far, so the rescale (a second read and write of the row so far) almost never runs
_SHIFT_SLACK = 40.0


@triton.jit
def _shifted_exp_kernel(logits_ptr, stride_row, labels_ptr, scale_ptr, lse_ptr, target_ptr, row_scale_ptr,
                        shift_ptr, vocab_start, ignore_index, softcap, z_loss, n_cols: tl.constexpr,
                        HAS_SOFTCAP: tl.constexpr, WHOLE_ROW: tl.constexpr, BLOCK: tl.constexpr,
                        SLACK: tl.constexpr):
    # d loss / d logit_v = scale * (c * softmax_v - [v == label]) (times tanh' when capped), c = 1 + 2 z lse
    #                    = (scale c / total) * (e_v - (total / c) [v == label]),
    # e_v = exp(z_v - shift), total = sum e_v
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    # read before the row is overwritten
    local, hit, target = _target_logit(base, labels_ptr, row, vocab_start, ignore_index, softcap, n_cols,
                                       HAS_SOFTCAP)
    shift = float("-inf")
    total = 0.0
    for start in range(0, n_cols, BLOCK):
        offs, inside, z = _capped_block(base, start, softcap, n_cols, HAS_SOFTCAP, BLOCK)
        block_max = tl.max(z, 0)
        if block_max > shift + SLACK:  # the first block, or (rarely) a much larger logit: a new shift
            factor = tl.exp(shift - block_max)
            total = total * factor
            for done in range(0, start, BLOCK):
                back = done + tl.arange(0, BLOCK)
                old = tl.load(base + back).to(tl.float32)
                tl.store(base + back, (old * factor).to(logits_ptr.dtype.element_ty))
            shift = block_max
        e = tl.exp(z - shift)
        total += tl.sum(e, 0)
        if HAS_SOFTCAP:
            t = tl.where(inside, z / softcap, 0.0)
            e = e * (1.0 - t * t)
        tl.store(base + offs, e.to(logits_ptr.dtype.element_ty), mask=inside)
    lse = shift + tl.log(total)
    tl.store(lse_ptr + row, lse)
    tl.store(target_ptr + row, target)
    tl.store(shift_ptr + row, shift)
    if WHOLE_ROW:
        c = 1.0 + 2.0 * z_loss * lse
        # near lse = -1 / (2 z) the softmax term vanishes; |c| >= 1e-6 keeps total / c finite, off by < 1e-6 * p
        c = tl.where(tl.abs(c) < 1e-6, 1e-6, c)
        tl.store(row_scale_ptr + row, tl.load(scale_ptr + row) * c / total)
        g = tl.exp(target - shift) - total / c  # fp32, so a confident prediction's (p - 1) keeps its digits
        if HAS_SOFTCAP:
            t = target / softcap
            g = g * (1.0 - t * t)
    else:
        g = 0.0  # a vocabulary slice: the caller adds the target's term once the whole row's lse is known
    tl.store(base + local, g.to(logits_ptr.dtype.element_ty), mask=hit)


def shifted_exp_(logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, vocab_start: int,
                 ignore_index: int, softcap: float | None, z_loss: float = 0.0, whole_row: bool = True,
                 block: int = _BLOCK, num_warps: int = _NUM_WARPS,
                 slack: float = _SHIFT_SLACK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Overwrite `logits` with the unscaled gradient e_v = exp(z_v - shift) (times tanh' under a softcap);
    returns per-row fp32 (log-sum-exp, target logit, row scale, shift).

    whole_row (the logits span the vocabulary): the target column holds e_y - total / c (c = 1 + 2 z_loss lse,
    total = sum e_v), and d(loss)/d(logits) = row scale * logits. Otherwise (one rank's vocabulary slice) the
    target column holds 0 and the row scale is not written: with the whole row's log-sum-exp L,
    d(loss)/d(logits) = scale c exp(shift - L) * logits plus, at the target, scale (c p_y - 1) (times tanh').
    `scale`: each row's weight in the loss (0 on ignored rows). bf16 or fp32 logits only: the unscaled values
    reach e^slack and the row's sum, beyond fp16's 65504."""
    if logits.dtype == torch.float16:
        raise ValueError("shifted_exp_: fp16 logits cannot hold the unscaled gradient; use row_stats + logits_grad_")
    _check(logits, labels)
    rows, n_cols = logits.shape
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    target, row_scale, shift = torch.empty_like(lse), torch.empty_like(lse), torch.empty_like(lse)
    if rows:
        _shifted_exp_kernel[(rows,)](logits, logits.stride(0), labels, scale, lse, target, row_scale, shift,
                                     vocab_start, ignore_index, float(softcap or 1.0), float(z_loss),
                                     n_cols=n_cols, HAS_SOFTCAP=softcap is not None, WHOLE_ROW=whole_row,
                                     BLOCK=block, SLACK=slack, num_warps=num_warps)
    return lse, target, row_scale, shift


@triton.jit
def _row_scale_kernel(x_ptr, scale_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_cols
    x = tl.load(x_ptr + row * n_cols + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + offs, (x * tl.load(scale_ptr + row)).to(out_ptr.dtype.element_ty),
             mask=inside)


def row_scale(x: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = x[i] * scale[i] for contiguous [rows, cols] x and out (any float dtypes), fp32 product rounded
    once into out's dtype; returns out."""
    if not (x.is_contiguous() and out.is_contiguous()) or x.shape != out.shape or x.ndim != 2:
        raise ValueError(f"row_scale: expected contiguous [rows, cols] x and out of one shape, got "
                         f"{tuple(x.shape)} and {tuple(out.shape)}")
    rows, cols = x.shape
    if rows and cols:
        block = min(2048, triton.next_power_of_2(cols))
        _row_scale_kernel[(rows, triton.cdiv(cols, block))](x, scale, out, cols, BLOCK=block, num_warps=4)
    return out


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
