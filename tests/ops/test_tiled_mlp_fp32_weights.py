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
