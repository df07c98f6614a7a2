"""TritonAdamW on CUDA against torch's fused AdamW: bf16 bits (one fp32 result rounded once, the same
formula), fp32 values, the clip and a skipped step, over tensors of the llama shapes' kinds (ragged sizes,
vectors, a large matrix spanning many blocks)."""

from __future__ import annotations

import pytest
import torch

from cptrain.ops import adamw
from cptrain.ops.adamw import TritonAdamW

pytestmark = pytest.mark.gpu

SHAPES = [(4099, 515), (2048,), (1,), (3, 65), (8192, 64)]


def train(cls, dtype, steps=5, scale=None, skip_at=None, **kw):
    gen = torch.Generator(device="cuda").manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen, device="cuda").to(dtype)) for s in SHAPES]
    groups = [{"params": ps[:2], "lr": 1e-3, "weight_decay": 0.1}, {"params": ps[2:], "lr": 3e-4, "weight_decay": 0.0}]
    opt = cls(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw)
    for i in range(steps):
        for p in ps:
            p.grad = (torch.randn(p.shape, generator=gen, device="cuda") * 0.01).to(dtype)
        opt.grad_scale = None if scale is None else torch.tensor(scale, device="cuda")
        opt.found_inf = None if skip_at is None else torch.tensor(float(i == skip_at), device="cuda")
        opt.step()
    return ps, opt


@pytest.fixture(params=["default", "2048/8/2", "1024/4/4 prefetch", "2048/8/4 prefetch"])
def kernel_settings(request, monkeypatch):
    """The kernel's block/warps/iterations and load orders: every setting must give the same numbers."""
    if request.param != "default":
        sizes, *flags = request.param.split()
        block, warps, iters = (int(x) for x in sizes.split("/"))
        for name, value in (("BLOCK", block), ("NUM_WARPS", warps), ("ITERS", iters),
                            ("PREFETCH", "prefetch" in flags)):
            monkeypatch.setattr(adamw, name, value)
    return request.param


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scale,skip_at", [(None, None), (3.0, 2)])
def test_matches_torch_fused_adamw(dtype, scale, skip_at, kernel_settings):
    got, opt = train(TritonAdamW, dtype, scale=scale, skip_at=skip_at)
    want, ref = train(torch.optim.AdamW, dtype, scale=scale, skip_at=skip_at, fused=True)
    for a, b in zip(got, want):
        if dtype == torch.bfloat16:
            # the same fp32 formula rounded once: all but a few last-bit ties from operation order agree
            assert (a != b).float().mean().item() < 1e-3
            torch.testing.assert_close(a, b, rtol=2 ** -7, atol=5e-5)  # near-zero weights: 5% of lr
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert opt.state[a]["step"].item() == ref.state[b]["step"].item() == (5 if skip_at is None else 4)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"].float(), ref.state[b]["exp_avg_sq"].float(),
                                   rtol=2 ** -6, atol=1e-12)  # one bf16 spacing either way


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grad_norm_matches_torch(dtype):
    from cptrain.ops.grad_norm import GradNorm

    gen = torch.Generator(device="cuda").manual_seed(1)
    grads = [torch.randn(s, generator=gen, device="cuda").to(dtype) for s in SHAPES + [(0,), (70001,)]]
    norm = GradNorm()

    def want():  # in fp32 (torch's norm of bf16 gradients is rounded to bf16)
        return torch.nn.utils.get_total_norm([g.float() for g in grads], foreach=True)

    for _ in range(2):  # the second call reuses the tables
        torch.testing.assert_close(norm(grads), want(), rtol=1e-5, atol=0)
    grads[1] = grads[1] * 3  # a moved gradient: its new address is sent
    torch.testing.assert_close(norm(grads), want(), rtol=1e-5, atol=0)
