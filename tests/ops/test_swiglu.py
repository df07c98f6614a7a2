"""The in-place SwiGLU passes: the PyTorch path against autograd, the Triton kernels (interpreted on CPU)
against the PyTorch path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cptrain.ops.swiglu import swiglu_backward_, swiglu_forward_
from tests.ops.interpreted import assert_interpreted_ok


def autograd_reference(g: torch.Tensor, u: torch.Tensor, grad_h: torch.Tensor):
    g64, u64 = g.double().requires_grad_(), u.double().requires_grad_()
    h = F.silu(g64) * u64
    dg, du = torch.autograd.grad(h, (g64, u64), grad_h.double())
    return h.detach(), dg, du


def case(shape=(37, 29), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # wide range: sigmoid saturates at both ends
    return [(torch.randn(shape, generator=gen) * 4).to(dtype) for _ in range(3)]


def test_torch_path_matches_autograd():
    g, u, dh = case()
    h_ref, dg_ref, du_ref = autograd_reference(g, u, dh)
    h = swiglu_forward_(g.clone(), u, impl="torch")
    torch.testing.assert_close(h.double(), h_ref, rtol=1e-5, atol=1e-5)
    dg, du, h2 = swiglu_backward_(g.clone(), u.clone(), dh.clone(), impl="torch")
    for got, want in ((dg, dg_ref), (du, du_ref), (h2, h_ref)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_outputs_overwrite_inputs():
    g, u, dh = case(dtype=torch.bfloat16)
    gc, uc, dhc = g.clone(), u.clone(), dh.clone()
    out = swiglu_backward_(gc, uc, dhc, impl="torch")
    assert [t.data_ptr() for t in out] == [gc.data_ptr(), uc.data_ptr(), dhc.data_ptr()]
    assert swiglu_forward_(gc, uc, impl="torch").data_ptr() == gc.data_ptr()
    # bf16 storage, fp32 arithmetic: within bf16 rounding of the float64 reference
    h_ref, dg_ref, du_ref = autograd_reference(g, u, dh)
    dg, du, h = swiglu_backward_(g.clone(), u.clone(), dh.clone(), impl="torch")
    for got, want in ((dg, dg_ref), (du, du_ref), (h, h_ref)):
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)


def test_rejects_mismatched_or_strided_inputs():
    g, u, _ = case()
    with pytest.raises(ValueError, match="contiguous tensors of one shape"):
        swiglu_forward_(g, u[:, :5], impl="torch")
    with pytest.raises(ValueError, match="contiguous tensors of one shape"):
        swiglu_forward_(g.t(), u.t(), impl="torch")


_INTERPRETED = """
import torch
from cptrain.ops.swiglu import swiglu_backward_, swiglu_forward_
from test_swiglu import case
for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
    for shape in ((37, 29), (3, 2048), (5000,)):  # one partial block, one exact, several blocks
        g, u, dh = case(shape, dtype, seed=len(shape))
        want_h = swiglu_forward_(g.clone(), u, impl="torch")
        got_h = swiglu_forward_(g.clone(), u, impl="triton")
        torch.testing.assert_close(got_h, want_h, rtol=tol, atol=tol)
        want = swiglu_backward_(g.clone(), u.clone(), dh.clone(), impl="torch")
        got = swiglu_backward_(g.clone(), u.clone(), dh.clone(), impl="triton")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
print("ok")
"""


def test_triton_kernels_match_torch_path_in_interpreter():
    assert_interpreted_ok(_INTERPRETED)


@pytest.mark.gpu
def test_triton_kernels_on_cuda_match_float64():
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        g, u, dh = (t.cuda() for t in case((4099, 1024), dtype))
        h_ref, dg_ref, du_ref = autograd_reference(g, u, dh)
        h = swiglu_forward_(g.clone(), u)
        torch.testing.assert_close(h.double(), h_ref, rtol=tol, atol=tol)
        dg, du, h2 = swiglu_backward_(g.clone(), u.clone(), dh.clone())
        for got, want in ((dg, dg_ref), (du, du_ref), (h2, h_ref)):
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
