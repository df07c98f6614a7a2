"""Tiled MLP vs the untiled decoder MLP, fp32 on CPU: output and every gradient, also under activation
checkpointing, torch.compile and FSDP2 over a real 2-process gloo group."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from cptrain.models.decoder import MLP
from cptrain.models.presets import ModelArgs
from cptrain.ops.tiled_mlp import _plain_swiglu_weights, resolve_num_tiles, tiled_mlp
from tests.dist_utils import run_ranks

TOL = dict(rtol=1e-5, atol=1e-5)


def make_mlp(dim=16, ffn=40, seed=0) -> MLP:
    torch.manual_seed(seed)
    mlp = MLP(ModelArgs(dim=dim, ffn_dim=ffn))
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return mlp


def run(mlp: MLP, x: torch.Tensor, num_tiles: int, wrap=None, fast_path: bool = True):
    """Output, d(x) and d(params) of sum(mlp(x) * fixed weights), with the MLP tiled `num_tiles` ways;
    `wrap(layer, x)` calls the layer (to put it under checkpoint, compile, ...)."""
    mlp.num_tiles = num_tiles
    mlp.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    layer = mlp if fast_path else (lambda t: tiled_mlp(mlp.swiglu, t, num_tiles, list(mlp.parameters()),
                                                       fast_path=False))
    out = (wrap or (lambda f, t: f(t)))(layer, x)
    probe = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * probe).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in mlp.parameters()]


def assert_all_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g is not None and w is not None
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("fast_path", [True, False], ids=["swiglu", "generic"])
@pytest.mark.parametrize("num_tiles", [2, 3, 7, 26])
def test_matches_untiled_including_grads(num_tiles, fast_path):
    mlp, x = make_mlp(), torch.randn(2, 13, 16)  # 26 tokens: most tile counts split unevenly
    assert_all_close(run(mlp, x, num_tiles, fast_path=fast_path), run(mlp, x, 1))


@pytest.mark.parametrize("fast_path", [True, False], ids=["swiglu", "generic"])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_under_activation_checkpointing(use_reentrant, fast_path):
    mlp, x = make_mlp(), torch.randn(1, 19, 16)

    def block(layer, t):
        return t + checkpoint(lambda u: layer(torch.tanh(u)), t, use_reentrant=use_reentrant)

    assert_all_close(run(mlp, x, 4, block, fast_path), run(mlp, x, 1, block))


def test_fast_path_only_for_a_plain_swiglu():
    mlp, x = make_mlp(), torch.randn(1, 4, 16)
    params = list(mlp.parameters())
    assert _plain_swiglu_weights(mlp.swiglu, params, x) is not None
    assert _plain_swiglu_weights(lambda t: mlp.swiglu(t), params, x) is None  # not the known formula
    assert _plain_swiglu_weights(mlp.swiglu, params[:2], x) is None
    handle = mlp.up_proj.register_forward_hook(lambda m, i, o: o * 2)  # e.g. what TP or FP8 would install
    assert _plain_swiglu_weights(mlp.swiglu, params, x) is None
    mlp.num_tiles = 3
    torch.testing.assert_close(mlp(x), (mlp.swiglu(x)), **TOL)  # the generic path honours the hook
    handle.remove()


def test_under_torch_compile():
    mlp, x = make_mlp(), torch.randn(2, 9, 16)
    torch._dynamo.reset()
    compiled = torch.compile(lambda layer, t: layer(t * 2.0) + t, backend="aot_eager", fullgraph=False)
    assert_all_close(run(mlp, x, 3, compiled), run(mlp, x, 1, lambda f, t: f(t * 2.0) + t))


def test_frozen_parameter_and_grad_accumulation():
    mlp, x = make_mlp(), torch.randn(1, 10, 16)
    mlp.up_proj.weight.requires_grad_(False)
    want = [None if t is None else t.clone() for t in run(mlp, x, 1)]
    mlp.zero_grad(set_to_none=True)
    mlp.num_tiles = 3
    for _ in range(2):  # two micro-batches accumulate into .grad, as in gradient accumulation
        x_leaf = x.clone().requires_grad_()
        out = mlp(x_leaf)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert mlp.up_proj.weight.grad is None
    torch.testing.assert_close(mlp.gate_proj.weight.grad, 2 * want[2], **TOL)
    torch.testing.assert_close(mlp.down_proj.weight.grad, 2 * want[4], **TOL)


def test_split_tiles_aligns_large_tiles():
    from cptrain.ops.tiled_mlp import split_tiles

    for n, tiles in [(131072, 48), (131072, 32), (524288, 42), (5000, 3), (22, 3), (7, 10)]:
        sizes = [t.shape[0] for t in split_tiles(torch.empty(n, 1), tiles)]
        assert sum(sizes) == n and len(sizes) <= tiles, (n, tiles, sizes)
        if n // tiles >= 1024:
            assert all(s % 128 == 0 for s in sizes[:-1]) and len(set(sizes[:-1])) == 1, sizes
        else:
            assert set(sizes[:-1]) <= {-(-n // tiles)}, sizes  # small tiles: ceil(n / tiles) rows
    assert [t.shape[0] for t in split_tiles(torch.empty(131072, 1), 48)] == [2816] * 46 + [1536]


def test_resolve_num_tiles():
    assert resolve_num_tiles("off", 131072, 4096, 14336, 1) == 1
    assert resolve_num_tiles("8", 4096, 4096, 14336, 1) == 8
    assert resolve_num_tiles(3, 4096, 4096, 14336, 1) == 3
    assert resolve_num_tiles("auto", 4096, 4096, 14336, 1) == 1  # short: the untiled MLP is small
    assert resolve_num_tiles("auto", 8192, 4096, 14336, 1) == 1  # llama3.1-8b at 8K: 0.7 GiB, untiled
    for seq, dim, ffn in [(131072, 2048, 8192), (131072, 4096, 14336), (524288, 4096, 14336)]:
        tiles = resolve_num_tiles("auto", seq, dim, ffn, 1)
        per_tile = seq / tiles * ffn * 2 * 3
        assert tiles > 1 and per_tile <= max(seq * dim * 2 / 4, 128 * 2**20) * 1.001
        assert seq // tiles >= 1024
    assert resolve_num_tiles("auto", 131072, 2048, 8192, 1) == 48
    assert resolve_num_tiles("auto", 4096, 64, 100000, 1) == 4  # tiles never shorter than 1024 tokens
    for bad in ("0", "-2", "many", ""):
        with pytest.raises(ValueError, match="model.tiled_mlp"):
            resolve_num_tiles(bad, 1024, 64, 128, 1)


# ---- FSDP2 over a real 2-process gloo group ----------------------------------------------------------------

def _fsdp_worker() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # rank, world size and address from run_ranks' environment
    world = dist.get_world_size()
    # run_ranks tears the group down (a barrier first, so no rank closes while its peer still talks)
    x = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(5))
    want = run(make_mlp(), x, 1)
    mlp = make_mlp()
    fully_shard(mlp, mesh=init_device_mesh("cpu", (world,)))
    for path in ("swiglu", "generic"):
        if path == "generic":  # a hook on a Linear is what sends the MLP down the generic path
            mlp.gate_proj.register_forward_hook(lambda module, args, out: None)
        got = run(mlp, x, 3, lambda f, t: checkpoint(f, t, use_reentrant=False))
        got = got[:2] + [g.full_tensor() for g in got[2:]]  # sharded DTensor grads -> whole
        assert_all_close(got, want)


def test_fsdp2_sharded_grads_match_untiled():
    run_ranks(2, _fsdp_worker)
