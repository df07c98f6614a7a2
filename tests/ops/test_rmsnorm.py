"""The Triton RMSNorm (ops/rmsnorm.py), interpreted on CPU tensors, against the eager module's math: values
and every gradient, with and without the residual add, ragged row counts, rows not a power of two, an
fp32 weight under bf16 activations; and a decoder run through the kernels against one run eagerly."""

from __future__ import annotations

import pytest
import torch

from cptrain.configtools import ConfigError
from cptrain.models.build import check_rms_norm
from cptrain.models.decoder import RMSNorm
from tests.ops.interpreted import assert_interpreted_ok

_KERNELS = """
import torch
from cptrain.ops import rmsnorm
from cptrain.ops.rmsnorm import add_rms_norm, reference, rms_norm

rmsnorm._programs.cache_clear()
gen = torch.Generator().manual_seed(0)


def leaf(t):
    return t.detach().clone().requires_grad_()


def check(rows, dim, dtype, wdtype, with_delta):
    x = leaf(torch.randn(rows, dim, generator=gen).to(dtype) * 3)
    delta = leaf(torch.randn(rows, dim, generator=gen).to(dtype))
    w = leaf((torch.rand(dim, generator=gen) + 0.5).to(wdtype))
    x2, delta2, w2 = leaf(x), leaf(delta), leaf(w)
    if with_delta:
        h, y = add_rms_norm(x, delta, w, 1e-5)
        h2 = x2 + delta2
        outs, outs2 = [h, y], [h2, reference(h2, w2, 1e-5)]
    else:
        outs, outs2 = [rms_norm(x, w, 1e-5)], [reference(x2, w2, 1e-5)]
    grads = [torch.randn(o.shape, generator=gen).to(dtype) for o in outs]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(outs2, grads)
    # the interpreter rounds fp32 -> bf16 by truncation (the GPU to nearest), up to three times on the way to
    # y (h, the normalised row, the product): a few bf16 steps apart here; the GPU test holds bf16 to one
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2 ** -5, atol=2 ** -5)
    for got, want in zip(outs, outs2):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got.float(), want.float(), **tol)
    pairs = [(x, x2), (w, w2)] + ([(delta, delta2)] if with_delta else [])
    for got, want in pairs:
        assert got.grad.dtype == want.grad.dtype
        scale = want.grad.float().abs().max()
        torch.testing.assert_close(got.grad.float() / scale, want.grad.float() / scale, **tol)


for rows, dim in [(37, 96), (5, 200), (130, 64), (1, 2048)]:
    for with_delta in (False, True):
        check(rows, dim, torch.float32, torch.float32, with_delta)
        check(rows, dim, torch.bfloat16, torch.bfloat16, with_delta)
check(19, 96, torch.bfloat16, torch.float32, True)  # fp32 master weight cast where used: dw comes back fp32
# leading dims are flattened and restored
x = torch.randn(2, 3, 40, generator=gen)
w = torch.rand(40, generator=gen) + 0.5
torch.testing.assert_close(rms_norm(x, w, 1e-6), reference(x, w, 1e-6), rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_kernels_match_eager_math_interpreted():
    assert_interpreted_ok(_KERNELS)


_DECODER = """
import torch
from cptrain.models.decoder import Decoder, RMSNorm
from cptrain.models.presets import get_preset


def run(impl):
    torch.manual_seed(0)
    model = Decoder(get_preset("debug"))
    model.init_weights()
    model.loss_impl = "fused_chunked"
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.impl = impl
            m.weight.data.uniform_(0.5, 1.5)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.args.vocab_size, (2, 24), generator=gen)
    labels = torch.randint(0, model.args.vocab_size, (2, 24), generator=gen)
    loss = model(ids, labels=labels)
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters()}


calls = []
from cptrain.ops import rmsnorm
for name in ("rms_norm", "add_rms_norm"):
    fn = getattr(rmsnorm, name)
    setattr(rmsnorm, name, lambda *a, _fn=fn, _n=name: calls.append(_n) or _fn(*a))
loss_k, grads_k = run("triton")
n_layers = get_preset("debug").n_layers
assert calls.count("add_rms_norm") == n_layers and calls.count("rms_norm") == n_layers + 1, calls
calls.clear()
loss_t, grads_t = run("torch")
assert not calls
torch.testing.assert_close(loss_k, loss_t, rtol=1e-5, atol=1e-5)
for k in grads_t:
    torch.testing.assert_close(grads_k[k], grads_t[k], rtol=1e-4, atol=1e-6, msg=k)
print("ok")
"""


def test_decoder_through_kernels_matches_eager_interpreted():
    assert_interpreted_ok(_DECODER)


def test_auto_is_eager_on_cpu_and_triton_is_refused_there():
    norm = RMSNorm(8, 1e-6)
    x = torch.randn(3, 8)
    assert not norm._kernels(x)  # auto on CPU tensors: eager math
    from cptrain.config import ModelConfig

    cfg = ModelConfig(preset="debug", init="random", tokenizer="x", rms_norm="triton")
    with pytest.raises(ConfigError, match="model.rms_norm"):
        check_rms_norm(cfg, torch.device("cpu"))
