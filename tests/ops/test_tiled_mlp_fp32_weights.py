"""fp32 master weights (one rank without FSDP2: cptrain's Linear casts them to the activations' dtype where
used) with bf16 activations: the tiled MLP's fast path takes them too."""

from __future__ import annotations

import torch

from cptrain.models.decoder import MLP
from cptrain.models.presets import ModelArgs
from cptrain.ops.tiled_mlp import _plain_swiglu_weights


def test_fp32_master_weights_with_bf16_activations_take_the_fast_path():
    """The fast path casts the fp32 weights once, sums the weight gradients in fp32 and returns them in fp32.
    Against the same MLP run in fp32 throughout, it is as close as the untiled bf16 MLP (bf16 rounding of
    the activations: ~0.5% here)."""
    torch.manual_seed(3)
    mlp = MLP(ModelArgs(dim=32, ffn_dim=96))
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 45, 32)
    assert _plain_swiglu_weights(mlp.swiglu, list(mlp.parameters()), x.bfloat16()) is not None

    def grads(num_tiles, inputs):
        mlp.num_tiles = num_tiles
        mlp.zero_grad(set_to_none=True)
        leaf = inputs.clone().requires_grad_()
        out = mlp(leaf)
        out.float().mul(torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [out, leaf.grad, *(p.grad for p in mlp.parameters())]

    exact, untiled, tiled = grads(1, x), grads(1, x.bfloat16()), grads(4, x.bfloat16())
    assert [t.dtype for t in tiled] == [torch.bfloat16] * 2 + [torch.float32] * 3
    for t, u, e in zip(tiled, untiled, exact, strict=True):
        assert t.dtype == u.dtype
        err_tiled, err_untiled = (((a.float() - e).norm() / e.norm()).item() for a in (t, u))
        assert err_tiled < 1e-2 and err_tiled < 1.5 * err_untiled, (err_tiled, err_untiled)


def test_bf16_weights_with_fp32_activations_sum_grads_in_the_weights_dtype():
    """The reverse mix (cptrain's Linear casts bf16 weights up to fp32 activations): the fast path still
    returns bf16 weight gradients, each tile's fp32 product rounded once into the bf16 sum."""
    torch.manual_seed(4)
    mlp = MLP(ModelArgs(dim=32, ffn_dim=96)).bfloat16()
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 40, 32)
    assert _plain_swiglu_weights(mlp.swiglu, list(mlp.parameters()), x) is not None
    results = []
    for tiles in (1, 4):
        mlp.num_tiles = tiles
        mlp.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_()
        out = mlp(leaf)
        out.mul(torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out, leaf.grad, *(p.grad for p in mlp.parameters())])
    for tiled, untiled in zip(results[1], results[0], strict=True):
        assert tiled.dtype == untiled.dtype
        assert ((tiled.float() - untiled.float()).norm() / untiled.float().norm()).item() < 1e-2
