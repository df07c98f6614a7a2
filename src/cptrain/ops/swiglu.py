"""The elementwise part of a SwiGLU MLP, forward and backward, in place and in one pass over memory.

With g = x @ gate.T and u = x @ up.T (both [tokens, ffn]):
- forward:  h = silu(g) * u, written over g.
- backward: from g, u and dh = d(loss)/d(h), writes h over dh (the down projection's weight gradient
  needs it), d(g) over g and d(u) over u.

Eager PyTorch makes 5 passes over the [tokens, ffn] tensors in the forward+backward of this part and
allocates a new tensor for each. The Triton kernels read each input once and write each output once
(3 and 6 tensor-sized transfers), and reuse the inputs' memory, which is what the tiled MLP's backward
wants. Arithmetic is fp32 whatever the storage dtype, rounded once on store. On CPU, or without
Triton, the same functions run in PyTorch (`impl="torch"`); TRITON_INTERPRET=1 runs the kernels on
CPU tensors, which is how the CPU tests check them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton use the PyTorch path
    triton = None

_BLOCK = 2048
_NUM_WARPS = 8


def _pick_impl(impl: str, *tensors: torch.Tensor) -> str:
    if impl == "auto":
        return "triton" if triton is not None and all(t.is_cuda for t in tensors) else "torch"
    if impl == "triton" and triton is None:
        raise RuntimeError("swiglu impl='triton' needs the triton package")
    return impl


def _check(*tensors: torch.Tensor) -> None:
    shape = tensors[0].shape
    for t in tensors:
        if t.shape != shape or not t.is_contiguous():
            raise ValueError(f"swiglu kernels need contiguous tensors of one shape, got "
                             f"{[tuple(x.shape) for x in tensors]}")


def swiglu_forward_(g: torch.Tensor, u: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Overwrites g with silu(g) * u and returns it."""
    _check(g, u)
    if _pick_impl(impl, g, u) == "torch":
        h = F.silu(g.float()) * u.float()
        return g.copy_(h)
    n = g.numel()
    _swiglu_forward_kernel[(triton.cdiv(n, _BLOCK),)](g, u, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return g


def swiglu_backward_(g: torch.Tensor, u: torch.Tensor, grad_h: torch.Tensor,
                     impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Overwrites (g, u, grad_h) with (d(g), d(u), h) and returns them in that order."""
    _check(g, u, grad_h)
    if _pick_impl(impl, g, u, grad_h) == "torch":
        g32, u32, dh32 = g.float(), u.float(), grad_h.float()  # may alias the inputs: write only at the end
        sig = torch.sigmoid(g32)
        act = g32 * sig
        hidden, grad_u = act * u32, dh32 * act
        grad_g = dh32 * u32 * sig * (1 + g32 * (1 - sig))
        return g.copy_(grad_g), u.copy_(grad_u), grad_h.copy_(hidden)
    n = g.numel()
    _swiglu_backward_kernel[(triton.cdiv(n, _BLOCK),)](g, u, grad_h, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return g, u, grad_h


if triton is not None:

    @triton.jit
    def _swiglu_forward_kernel(g_ptr, u_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        g = tl.load(g_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        h = g * tl.sigmoid(g) * u
        tl.store(g_ptr + offs, h.to(g_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _swiglu_backward_kernel(g_ptr, u_ptr, dh_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        g = tl.load(g_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        dh = tl.load(dh_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        act = g * sig
        tl.store(dh_ptr + offs, (act * u).to(dh_ptr.dtype.element_ty), mask=inside)
        tl.store(u_ptr + offs, (dh * act).to(u_ptr.dtype.element_ty), mask=inside)
        grad_g = dh * u * sig * (1.0 + g * (1.0 - sig))
        tl.store(g_ptr + offs, grad_g.to(g_ptr.dtype.element_ty), mask=inside)
