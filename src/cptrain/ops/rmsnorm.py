"""RMSNorm in Triton, forward and backward, optionally with the residual add that comes before it.

    y = w * (x * rsqrt(mean(x^2) + eps))            rms_norm(x, w, eps)
    h = x + delta;  y = norm(h)                      add_rms_norm(x, delta, w, eps) -> (h, y)

Numerics are the eager module's (HF's): the sum of squares in fp32, the normalised row rounded to the
input dtype, then multiplied by the weight cast to the input dtype, rounded once more; `h` is rounded to
the input dtype before it is normalised. The backward is fp32 throughout.

Why not leave it to torch.compile: inductor's backward of this pattern reads the activations twice
(once for d(x), once more in a split reduction for d(w)) and adds the residual's gradient in yet another
pass. Here one persistent kernel reads dy and x once per row, writes d(x) with the residual gradient
already added (`add_rms_norm`'s backward), and keeps each program's d(w) partial sum in registers; the
[programs, dim] fp32 partials are summed at the end.

Both directions are torch custom ops: torch.compile keeps each call as one node of the block's graph (no
graph break). Rows up to MAX_DIM wide (one row per tile); the model falls back to eager math beyond, on
CPU, and for TP's DTensor weights. TRITON_INTERPRET=1 runs the kernels on CPU tensors (the CPU tests).
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the model keeps its eager RMSNorm
    triton = None

MAX_DIM = 16384
_TILE = 8192  # elements per tile: rows of 2048 go 4 at a time


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs(x: torch.Tensor) -> bool:
    """The kernels can take this activation: Triton importable, a CUDA tensor (or any under the
    interpreter), a row of at most MAX_DIM."""
    return (triton is not None and (x.is_cuda or interpreting())
            and x.shape[-1] <= MAX_DIM and x.dtype in (torch.float32, torch.bfloat16, torch.float16))


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The eager math the kernels reproduce (decoder.RMSNorm's)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(x.dtype) * xf.to(x.dtype)


if triton is not None:
    @triton.jit
    def _fwd_kernel(x_ptr, delta_ptr, h_ptr, y_ptr, w_ptr, rstd_ptr, n_rows, n_cols, eps,
                    HAS_DELTA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_C)
        col_ok = cols < n_cols
        mask = (rows < n_rows)[:, None] & col_ok[None, :]
        offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_DELTA:
            h = (x + tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(h_ptr.dtype.element_ty)
            tl.store(h_ptr + offs, h, mask=mask)
            x = h.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)
        # round like the eager module: the normalised row, then its product with the weight
        xh = (x * rstd[:, None]).to(y_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(y_ptr.dtype.element_ty).to(tl.float32)
        tl.store(y_ptr + offs, (xh * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dres_ptr, dx_ptr, dw_part_ptr, n_rows, n_cols,
                    ITERS: tl.constexpr, HAS_DRES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        col_ok = cols < n_cols
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(x_ptr.dtype.element_ty).to(tl.float32)
        dw = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        # ITERS tiles of BLOCK_R rows per program (a constant: row counts are fixed through a run)
        for step in range(ITERS):
            rows = (pid * ITERS + step) * BLOCK_R + tl.arange(0, BLOCK_R)
            row_ok = rows < n_rows
            mask = row_ok[:, None] & col_ok[None, :]
            offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            xh = x * rstd[:, None]
            # the weight's gradient sees the rounded normalised row, as the eager product does
            dw += dy * xh.to(x_ptr.dtype.element_ty).to(tl.float32)
            g = dy * w[None, :]
            mean_gx = tl.sum(g * xh, axis=1) / n_cols
            dx = (g - xh * mean_gx[:, None]) * rstd[:, None]
            if HAS_DRES:
                dx += tl.load(dres_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dw_part_ptr + pid * n_cols + cols, tl.sum(dw, axis=0), mask=col_ok)


def _tile(n_cols: int) -> tuple[int, int, int]:
    """(rows per tile, padded row, warps)."""
    block_c = triton.next_power_of_2(n_cols)
    block_r = max(1, min(16, _TILE // block_c))
    return block_r, block_c, 16 if block_c >= 16384 else 8


@functools.cache
def _programs(device: torch.device) -> int:
    """Backward programs: 4 per SM keep every SM loading while the partial sums stay few."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if not triton_runs(x):
        raise RuntimeError(f"rms_norm: the Triton kernels cannot take a {x.device.type} {x.dtype} tensor with rows "
                           f"of {x.shape[-1]} (CUDA, a float dtype, at most {MAX_DIM}; "
                           "TRITON_INTERPRET=1 for CPU tensors)")
    if x.dim() != 2 or not x.is_contiguous() or weight.shape != (x.shape[1],):
        raise ValueError(f"rms_norm: expected contiguous x [rows, dim] and weight [dim], got {tuple(x.shape)} "
                         f"(strides {x.stride()}) and {tuple(weight.shape)}")


def _forward(x, delta, weight, eps):
    _check(x, weight)
    rows, dim = x.shape
    y = torch.empty_like(x)
    h = torch.empty_like(x) if delta is not None else None
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    block_r, block_c, warps = _tile(dim)
    if rows:
        _fwd_kernel[(triton.cdiv(rows, block_r),)](x, delta if delta is not None else x, h if h is not None else y,
                                                  y, weight, rstd, rows, dim, eps, HAS_DELTA=delta is not None,
                                                  BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps)
    return h, y, rstd


@torch.library.custom_op("cptrain::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): x [rows, dim] contiguous, rstd fp32 [rows]."""
    _, y, rstd = _forward(x, None, weight, eps)
    return y, rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps):
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("cptrain::add_rms_norm_fwd", mutates_args=())
def add_rms_norm_fwd(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h = x + delta, y = norm(h), rstd)."""
    if delta.shape != x.shape or not delta.is_contiguous() or delta.dtype != x.dtype:
        raise ValueError(f"add_rms_norm: delta {tuple(delta.shape)} {delta.dtype} must match x "
                         f"{tuple(x.shape)} {x.dtype} and be contiguous")
    return _forward(x, delta, weight, eps)


@add_rms_norm_fwd.register_fake
def _(x, delta, weight, eps):
    return torch.empty_like(x), torch.empty_like(x), x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("cptrain::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                 dres: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx [+ dres], dw in the weight's dtype) from the normalised input x and the forward's rstd."""
    _check(x, weight)
    rows, dim = x.shape
    dx = torch.empty_like(x)
    block_r, block_c, warps = _tile(dim)
    iters = triton.cdiv(triton.cdiv(max(rows, 1), _programs(x.device)), block_r)
    programs = triton.cdiv(max(rows, 1), iters * block_r)
    partial = torch.empty((programs, dim), dtype=torch.float32, device=x.device)
    _bwd_kernel[(programs,)](dy, x, weight, rstd, dres if dres is not None else dy, dx, partial, rows, dim,
                             ITERS=iters, HAS_DRES=dres is not None, BLOCK_R=block_r, BLOCK_C=block_c,
                             num_warps=warps)
    return dx, partial.sum(0).to(weight.dtype)


@rms_norm_bwd.register_fake
def _(dy, x, weight, rstd, dres):
    return torch.empty_like(x), torch.empty_like(weight)


def _norm_setup(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight, output[1])


def _norm_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_bwd(dy.contiguous(), x, weight, rstd, None)
    return dx, dw, None


def _add_norm_setup(ctx, inputs, output):
    _, _, weight, _ = inputs
    ctx.save_for_backward(output[0], weight, output[2])


def _add_norm_backward(ctx, dh, dy, _drstd):
    h, weight, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(h)
    d, dw = rms_norm_bwd(dy.contiguous(), h, weight, rstd, None if dh is None else dh.contiguous())
    return d, d, dw, None


rms_norm_fwd.register_autograd(_norm_backward, setup_context=_norm_setup)
add_rms_norm_fwd.register_autograd(_add_norm_backward, setup_context=_add_norm_setup)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """norm(x) over the last dim, any leading shape, through the Triton kernels."""
    y, _ = rms_norm_fwd(x.reshape(-1, x.shape[-1]).contiguous(), weight, eps)
    return y.view(x.shape)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, norm(h)) with h = x + delta, over the last dim, through the Triton kernels."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    h, y, _ = add_rms_norm_fwd(flat, delta.reshape(flat.shape).contiguous(), weight, eps)
    return h.view(x.shape), y.view(x.shape)
