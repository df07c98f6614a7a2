"""A tiled MLP inside a fully checkpointed decoder block: parallelize marks the block's MLP so that the
checkpoint's recompute skips the tiled forward (its output is never read there). The gradients must still
equal an unchecked, untiled model's, and the backward must really run 3 fewer matmuls per tile per layer."""

from __future__ import annotations

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cptrain.models.decoder import Decoder
from cptrain.models.presets import ModelArgs
from tests.dist_utils import run_ranks

TILES = 3
ARGS = ModelArgs(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=80)
MATMULS = {"mm", "addmm"}


class CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMULS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def loss_grads(model: Decoder, ids: torch.Tensor, labels: torch.Tensor) -> tuple[dict, int]:
    """Gradients by parameter name (wrappers' prefixes dropped) and the matmuls the backward ran."""
    from cptrain.parallel.parallelize import native_name

    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=labels)
    with CountMatmuls() as counter:
        loss.backward()
    return {native_name(n): p.grad.clone() for n, p in model.named_parameters()}, counter.count


def _worker() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from cptrain.parallel.parallelize import parallelize

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    reference = Decoder(ARGS)
    reference.init_weights(std=0.2)
    ids = torch.randint(0, ARGS.vocab_size, (2, 37))
    labels = torch.randint(0, ARGS.vocab_size, (2, 37))
    want, _ = loss_grads(reference, ids, labels)

    model = copy.deepcopy(reference)
    for block in model.layers.values():
        block.mlp.num_tiles = TILES
    mesh = init_device_mesh("cpu", (1,))
    parallelize(model, mesh, param_dtype=torch.float32, reduce_dtype=torch.float32,
                activation_checkpointing="full")
    mlps = [m for n, m in model.named_modules() if n.endswith(".mlp")]
    assert len(mlps) == ARGS.n_layers and not any(m.recompute_output for m in mlps)
    got, skipped = loss_grads(model, ids, labels)
    assert got.keys() == want.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], rtol=1e-5, atol=1e-5, msg=name)

    for m in mlps:  # the same model recomputing the whole tiled forward, as before the skip
        m.recompute_output = True
    got_full, recomputed = loss_grads(model, ids, labels)
    for name, grad in got_full.items():  # the backward itself is unchanged: bit for bit the same gradients
        assert torch.equal(grad, got[name]), name
    # per layer and tile the forward's gate, up and down products are what the recompute no longer runs
    assert recomputed - skipped == 3 * TILES * ARGS.n_layers, (recomputed, skipped)


def test_checkpointed_block_skips_the_tiled_forward_in_recompute():
    run_ranks(1, _worker)


def test_forward_outside_a_backward_still_computes():
    """recompute_output=False only skips inside a backward pass: a plain forward (also under no_grad, as in
    evaluation) returns the real output."""
    torch.manual_seed(1)
    model = Decoder(ARGS)
    model.init_weights(std=0.2)
    ids = torch.randint(0, ARGS.vocab_size, (1, 29))
    want = model(ids)
    for block in model.layers.values():
        block.mlp.num_tiles, block.mlp.recompute_output = TILES, False
    torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)
