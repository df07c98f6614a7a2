"""The Triton RMSNorm on CUDA: bf16 outputs within one rounding of the eager module's, gradients as close to
an fp32 reference as the eager bf16 ones, and the same results under torch.compile."""

from __future__ import annotations

import pytest
import torch

from cptrain.ops.rmsnorm import add_rms_norm, reference, rms_norm

pytestmark = pytest.mark.gpu


def _inputs(rows, dim, wdtype=torch.bfloat16):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, dim, device="cuda", generator=gen).bfloat16() * 3
    d = torch.randn(rows, dim, device="cuda", generator=gen).bfloat16()
    w = (torch.rand(dim, device="cuda", generator=gen) + 0.5).to(wdtype)
    gy = torch.randn(rows, dim, device="cuda", generator=gen).bfloat16()
    gh = torch.randn(rows, dim, device="cuda", generator=gen).bfloat16()
    return x, d, w, gy, gh


def _grads(fn, dtype, x, d, w, gy, gh):
    leaves = [t.detach().to(dtype if t.dtype == torch.bfloat16 else t.dtype).requires_grad_() for t in (x, d, w)]
    h, y = fn(*leaves)
    torch.autograd.backward([h, y], [gh.to(h.dtype), gy.to(y.dtype)])
    return (h, y), [t.grad for t in leaves]


def _eager(x, d, w):
    h = x + d
    return h, reference(h, w, 1e-5)


def _ours(x, d, w):
    return add_rms_norm(x, d, w, 1e-5)


@pytest.mark.parametrize("rows,dim,wdtype", [(8192, 2048, torch.bfloat16), (1000, 4096, torch.bfloat16),
                                             (77, 128, torch.float32), (3, 16384, torch.bfloat16)])
def test_add_rms_norm_matches_eager_bf16(rows, dim, wdtype):
    case = _inputs(rows, dim, wdtype)
    (h, y), got = _grads(_ours, torch.bfloat16, *case)
    (h_e, y_e), eager = _grads(_eager, torch.bfloat16, *case)
    (_, y_32), exact = _grads(_eager, torch.float32, *case)
    assert torch.equal(h, h_e)
    # one bf16 rounding apart at most (the kernel's rsqrt and the eager one may differ in the last fp32 bit)
    torch.testing.assert_close(y.float(), y_e.float(), rtol=2 ** -7, atol=1e-6)
    for name, g, e, r in zip(("x", "delta", "weight"), got, eager, exact):
        assert g.dtype == e.dtype
        err = (g.float() - r.float()).norm() / r.float().norm()
        err_eager = (e.float() - r.float()).norm() / r.float().norm()
        assert err <= 1.5 * err_eager + 1e-3, (name, err.item(), err_eager.item())


def test_plain_norm_and_compiled_calls_match():
    x, d, w, gy, _ = _inputs(4096, 2048)

    def block(x, d, w):
        y1 = rms_norm(x, w, 1e-5)
        h, y2 = add_rms_norm(x, d * y1, w, 1e-5)
        return h * y2

    outs = []
    for fn in (block, torch.compile(block, fullgraph=True)):
        leaves = [t.detach().clone().requires_grad_() for t in (x, d, w)]
        out = fn(*leaves)
        out.backward(gy)
        outs.append([out.detach(), *(t.grad for t in leaves)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    y_e = reference(x, w, 1e-5)
    torch.testing.assert_close(rms_norm(x, w, 1e-5).float(), y_e.float(), rtol=2 ** -7, atol=1e-6)
