"""Tiled MLP on CUDA in bf16: same output and grads as untiled (bf16 tolerances), and less peak memory."""

from __future__ import annotations

import pytest
import torch

from cptrain.models.decoder import MLP
from cptrain.models.presets import ModelArgs

pytestmark = pytest.mark.gpu


def bf16_mlp(dim: int, ffn: int) -> MLP:
    torch.manual_seed(0)
    mlp = MLP(ModelArgs(dim=dim, ffn_dim=ffn)).to(device="cuda", dtype=torch.bfloat16)
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return mlp


def fwd_bwd(mlp: MLP, x: torch.Tensor, grad: torch.Tensor, num_tiles: int):
    """(output, d(x), d(params), peak bytes allocated beyond what existed before the call)."""
    mlp.num_tiles = num_tiles
    mlp.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = mlp(x)
    out.backward(grad)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return out.detach(), x.grad, [p.grad for p in mlp.parameters()], peak


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_bf16_tiled_matches_untiled_with_less_memory():
    tokens, dim, ffn = 32768, 2048, 8192
    mlp = bf16_mlp(dim, ffn)
    x = torch.randn(2, tokens // 2, dim, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(x) * 1e-2
    out0, gx0, gp0, peak_untiled = fwd_bwd(mlp, x, grad, 1)
    out_t, gx_t, gp_t, peak_tiled = fwd_bwd(mlp, x, grad, 16)
    # tiles may pick other matmul kernels, and param grads are summed tile by tile in bf16
    assert rel_err(out_t, out0) < 1e-2
    assert rel_err(gx_t, gx0) < 1e-2
    for g_t, g0 in zip(gp_t, gp0, strict=True):
        assert rel_err(g_t, g0) < 1e-2
    handle = mlp.gate_proj.register_forward_hook(lambda module, args, out: None)  # forces the generic path
    out_g, gx_g, gp_g, _ = fwd_bwd(mlp, x, grad, 16)
    handle.remove()
    assert rel_err(out_g, out0) < 1e-2 and rel_err(gx_g, gx0) < 1e-2
    for g_g, g0 in zip(gp_g, gp0, strict=True):
        assert rel_err(g_g, g0) < 1e-2
    # untiled holds ~6 [tokens, ffn] bf16 tensors (3 GiB here); 16 tiles hold a 16th of that plus the
    # [tokens, dim] output and input grad (0.25 GiB) and two copies of the param grads (0.2 GiB)
    assert peak_tiled < 0.4 * peak_untiled, (peak_tiled / 2**20, peak_untiled / 2**20)


def test_bf16_checkpoint_recompute_skip_gives_the_same_grads():
    """Under a checkpoint the tiled forward's recompute may be skipped (recompute_output=False): in bf16 on
    CUDA the gradients are bit for bit those of the full recompute."""
    from torch.utils.checkpoint import checkpoint

    mlp = bf16_mlp(1024, 4096)
    x = torch.randn(1, 8192, 1024, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(x) * 1e-2
    results = []
    for recompute in (True, False):
        mlp.num_tiles, mlp.recompute_output = 8, recompute
        mlp.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_()
        out = checkpoint(lambda t: t + mlp(t * 0.5), leaf, use_reentrant=False)
        out.backward(grad)
        results.append([out.detach(), leaf.grad, *(p.grad for p in mlp.parameters())])
    for full, skipped in zip(*results, strict=True):
        assert torch.equal(full, skipped)


def test_fp32_master_weights_sum_tile_grads_with_addmm_in_fp32():
    """fp32 weights (one rank without FSDP2) and bf16 activations: the fast path adds each tile's weight
    gradient into the fp32 buffer by cuBLAS addmm with out_dtype, and matches the untiled MLP."""
    from cptrain.ops import tiled_mlp

    torch.manual_seed(0)
    mlp = MLP(ModelArgs(dim=1024, ffn_dim=4096)).cuda()
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, 16384, 1024, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(x) * 1e-2
    out0, gx0, gp0, _ = fwd_bwd(mlp, x, grad, 1)
    out_t, gx_t, gp_t, _ = fwd_bwd(mlp, x, grad, 8)
    assert tiled_mlp._MIXED_ADDMM == [True]
    assert rel_err(out_t, out0) < 1e-2 and rel_err(gx_t, gx0) < 1e-2
    for g_t, g0 in zip(gp_t, gp0, strict=True):
        assert g_t.dtype == torch.float32 and rel_err(g_t, g0) < 1e-2
