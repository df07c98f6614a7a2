"""The global L2 norm of a model's gradients in one Triton kernel per gradient dtype.

torch's `get_total_norm(foreach=True)` reads every gradient once too, but through `multi_tensor_apply`
launches of bounded size (60 of them for llama3.2-1b) at about 2.1 TB/s on an H100. Here each program
sums the squares of one span of one tensor, found through a device table of addresses (laid out like
TritonAdamW's, ops/adamw.py), into its own fp32 slot; the slots are then summed by torch. No atomics: the
result does not depend on scheduling. Tables are rebuilt only when the gradients' sizes change; their
addresses are sent again only when one moved.

For plain tensors (one rank, or replicated parameters); the trainer keeps torch's norm for DTensors,
whose placements decide what to reduce across ranks.
"""

from __future__ import annotations

import torch

from cptrain.ops.adamw import _CODES, AddressTable, BlockTable, triton

BLOCK = 4096
ITERS = 4
NUM_WARPS = 8


class _Table(AddressTable):
    """The gradients of one dtype: their addresses (the AddressTable) and per-program spans (`blocks`, laid
    out for the module's BLOCK and ITERS when built, whatever they are later)."""

    def __init__(self, numels: list[int], device: torch.device):
        super().__init__(device)
        self.blocks = BlockTable(numels, BLOCK, ITERS, device)


class GradNorm:
    """`norm(grads)`: the L2 norm of all of `grads` (contiguous plain tensors on one device), fp32 0-dim."""

    def __init__(self):
        self._tables: dict[torch.dtype, _Table] = {}

    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        if not grads:
            raise ValueError("GradNorm: no gradients")
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            if g.dtype not in _CODES or not g.is_contiguous():
                raise RuntimeError(f"GradNorm needs contiguous fp32/bf16/fp16 gradients; got {g.dtype} "
                                   f"{tuple(g.shape)} (strides {g.stride()})")
            if g.numel():
                by_dtype.setdefault(g.dtype, []).append(g)
        device = grads[0].device
        partials = []
        for dtype, group in by_dtype.items():
            numels = [g.numel() for g in group]
            table = self._tables.get(dtype)
            if table is None or table.blocks.numel_list != numels:
                table = self._tables[dtype] = _Table(numels, device)
            table.update(group)
            blocks = table.blocks
            out = torch.empty(blocks.n_blocks, dtype=torch.float32, device=device)
            _sumsq_kernel[(blocks.n_blocks,)](table.ptrs, blocks.numels, blocks.owner, blocks.starts, out,
                                              G=_CODES[dtype], ALIGNED=table.aligned, BLOCK=blocks.block,
                                              ITERS=blocks.iters, num_warps=NUM_WARPS)
            partials.append(out.sum())
        if not partials:
            return torch.zeros((), dtype=torch.float32, device=device)
        total = partials[0] if len(partials) == 1 else torch.stack(partials).sum()
        return total.sqrt()


if triton is not None:
    import triton.language as tl

    from cptrain.ops.adamw import _as_ptr

    @triton.jit
    def _sumsq_kernel(ptrs, numels, owner, starts, out, G: tl.constexpr, ALIGNED: tl.constexpr,
                      BLOCK: tl.constexpr, ITERS: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(owner + pid)
        start = tl.multiple_of(tl.load(starts + pid), BLOCK * ITERS)
        n = tl.load(numels + t)
        g_ptr = _as_ptr(tl.load(ptrs + t), G)
        if ALIGNED:
            g_ptr = tl.multiple_of(g_ptr, 16)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        if start + BLOCK * ITERS <= n:  # whole span: unmasked, vectorized loads
            for i in tl.static_range(ITERS):
                offs = tl.max_contiguous(tl.multiple_of(start + i * BLOCK + tl.arange(0, BLOCK), BLOCK), BLOCK)
                x = tl.load(g_ptr + offs, eviction_policy="evict_first").to(tl.float32)
                acc += x * x
        else:
            for i in tl.static_range(ITERS):
                offs = start + i * BLOCK + tl.arange(0, BLOCK)
                x = tl.load(g_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
                acc += x * x
        tl.store(out + pid, tl.sum(acc, 0))
