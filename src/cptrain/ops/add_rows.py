"""out[ids[i]] += rows[i] for every i, repeated ids summed in fp32 first: the embedding lookup's backward.

torch's `index_put_(..., accumulate=True)` does the same on CUDA (sort, then a generic accumulate kernel)
in 0.37 ms for llama3.2-1b's 8192 x 2048 rows per step. Here: one stable sort of the ids, then one Triton
program per (position in the sorted ids, block of columns). A program whose position does not start a run
of equal ids exits at once; one that does walks its run ROWS rows at a time (gathered through the sort's
permutation), sums them in fp32 and adds the sum to its output row with one rounding. Splitting the
columns over programs spreads a very frequent id's long run over many programs. The summation order is
fixed (sorted positions, the kernel's reduction tree): the same inputs give the same bits.

`impl="auto"` runs the kernel on CUDA and `index_put_` elsewhere (CPU, or no Triton), like the other ops'
`impl` switches; `impl="triton"` under TRITON_INTERPRET=1 runs it on CPU tensors, which is how the CPU
tests check it.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the fallback below
    triton = None

_ROWS = 32  # rows of a run summed per loop step
_BLOCK = 256  # columns per program
_NUM_WARPS = 4

if triton is not None:

    @triton.jit
    def _add_rows_kernel(out_ptr, rows_ptr, sorted_ptr, order_ptr, n, dim, stride_out, stride_rows,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr):
        start = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < dim
        token = tl.load(sorted_ptr + start)
        prev = tl.load(sorted_ptr + start - 1, mask=start > 0, other=-1)
        if (start == 0) | (prev != token):  # the first position of its run
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            j = start
            more = token == token
            while more:
                offs = j + tl.arange(0, ROWS)
                hit = tl.load(sorted_ptr + offs, mask=offs < n, other=-1) == token
                src = tl.load(order_ptr + offs, mask=hit, other=0).to(tl.int64)
                tile = tl.load(rows_ptr + src[:, None] * stride_rows + cols[None, :],
                               mask=hit[:, None] & inside[None, :], other=0.0)
                acc += tl.sum(tile.to(tl.float32), axis=0)
                j += ROWS
                more = tl.sum(hit.to(tl.int32), axis=0) == ROWS  # the run is sorted: a miss ends it
            dst = out_ptr + token.to(tl.int64) * stride_out + cols
            old = tl.load(dst, mask=inside, other=0.0).to(tl.float32)
            tl.store(dst, (old + acc).to(out_ptr.dtype.element_ty), mask=inside)


def add_rows_(out: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """out [V, D] += rows [N, D] at rows ids [N] (integers in [0, V)), in place; returns `out`. `rows` is cast
    to fp32 for the sums; `out` keeps its dtype. impl: "auto" | "triton" | "torch" (index_put_)."""
    ids = ids.reshape(-1)
    if out.ndim != 2 or rows.shape != (ids.numel(), out.shape[1]) or out.stride(1) != 1:
        raise ValueError(f"add_rows_: expected out [V, D] (rows contiguous), ids [N], rows [N, D]; got "
                         f"{tuple(out.shape)} (strides {out.stride()}), {tuple(ids.shape)}, {tuple(rows.shape)}")
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"add_rows_: impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if impl == "triton" and triton is None:
        raise RuntimeError("add_rows_ impl='triton' needs the triton package")
    if impl == "torch" or (impl == "auto" and (triton is None or not out.is_cuda)):
        return out.index_put_((ids,), rows.to(out.dtype), accumulate=True)
    n, dim = rows.shape
    if n == 0:
        return out
    rows = rows.contiguous()
    sorted_ids, order = torch.sort(ids, stable=True)
    _add_rows_kernel[(n, triton.cdiv(dim, _BLOCK))](out, rows, sorted_ids, order, n, dim, out.stride(0),
                                                    rows.stride(0), ROWS=_ROWS, BLOCK=_BLOCK,
                                                    num_warps=_NUM_WARPS)
    return out
