"""FSDP2 over 2 gloo ranks == 1 rank; grad accumulation 4x1 == 1x4; fused and Triton AdamW (clipping folded
into their kernels) == foreach AdamW with clipping applied to the gradients (CPU, fp32)."""

import torch

from cptrain.config import load_config
from cptrain.models.build import build_model
from cptrain.models.decoder import Decoder
from cptrain.models.presets import get_preset
from cptrain.parallel.dims import build_mesh, init_distributed
from cptrain.train import Trainer
from tests.dist_utils import run_ranks

SEQ, ROWS, STEPS = 32, 4, 3


def full_state_dict() -> dict:
    torch.manual_seed(123)
    model = Decoder(get_preset("debug"))
    model.init_weights()
    return {k: v.clone() for k, v in model.state_dict().items()}


def global_batches() -> list[list[dict]]:
    """STEPS global batches of ROWS packed rows, two or three documents each."""
    g = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(STEPS):
        rows = []
        for _ in range(ROWS):
            ids = torch.randint(0, 512, (SEQ + 1,), generator=g)
            cuts = sorted(torch.randint(4, SEQ - 4, (2,), generator=g).tolist())
            doc = torch.zeros(SEQ + 1, dtype=torch.int32)
            doc[cuts[0]:] = 1
            doc[cuts[1]:] = 2
            pos = torch.cat([torch.arange(n) for n in torch.unique_consecutive(doc, return_counts=True)[1]])
            labels = ids[1:].clone()
            labels[doc[1:] != doc[:-1]] = -100
            rows.append(dict(input_ids=ids[:-1], labels=labels, position_ids=pos[:-1], document_ids=doc[:-1]))
        steps.append(rows)
    return steps


def stack(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def train_losses(micro_batch_size: int, sd: dict, extra: tuple[str, ...] = ()) -> tuple[list[float], dict]:
    env = init_distributed("cpu")
    cfg = load_config(None, ["model.preset=debug", "model.init=random", "model.loss=naive", "model.tokenizer=x",
                             "precision.param_dtype=fp32", f"train.micro_batch_size={micro_batch_size}",
                             f"train.steps={STEPS}", "schedule.warmup_steps=1", "optim.lr=1e-2", *extra])
    mesh = build_mesh(cfg.parallel, env)
    model = build_model(cfg.model, cfg.precision, mesh, env.device, seq_len=SEQ,
                        micro_batch_size=micro_batch_size, full_state_dict=sd if env.rank == 0 else None,
                        use_state_dict=True, reshard_after_forward=cfg.parallel.reshard_after_forward)
    trainer = Trainer(cfg, model, env.device)
    per_rank = ROWS // env.world_size
    losses = []
    for rows in global_batches():
        mine = rows[env.rank * per_rank:(env.rank + 1) * per_rank]
        micro = [stack(mine[i:i + micro_batch_size]) for i in range(0, per_rank, micro_batch_size)]
        losses.append(trainer.train_step(micro)["loss"])
    from cptrain.checkpoint import full_model_state_dict

    return losses, full_model_state_dict(model)


def test_two_ranks_match_one_rank():
    sd = full_state_dict()
    one, params_one = run_ranks(1, train_losses, 2, sd)[0]
    two, params_two = run_ranks(2, train_losses, 1, sd)[0]
    # blocks keeping their gathered weights from forward to backward: same numbers
    kept, params_kept = run_ranks(2, train_losses, 1, sd, ("parallel.reshard_after_forward=false",))[0]
    assert len(one) == STEPS
    for a, b, c in zip(one, two, kept):
        assert abs(a - b) < 1e-5 and abs(a - c) < 1e-5, (one, two, kept)
    for k in params_one:
        # Adam divides by sqrt(v): near-zero gradients amplify reduction-order rounding
        torch.testing.assert_close(params_one[k], params_two[k], rtol=0, atol=2e-4)
        torch.testing.assert_close(params_one[k], params_kept[k], rtol=0, atol=2e-4)
    first = full_state_dict()
    assert any((params_one[k] - first[k]).abs().max() > 1e-4 for k in first)  # the optimizer moved


def test_grad_accumulation_4x1_equals_1x4():
    sd = full_state_dict()
    (accum, p_accum), (single, p_single) = run_ranks(1, train_losses, 1, sd)[0], run_ranks(1, train_losses, 4, sd)[0]
    for a, b in zip(accum, single):
        assert abs(a - b) < 1e-6, (accum, single)
    for k in p_accum:
        torch.testing.assert_close(p_accum[k], p_single[k], rtol=0, atol=1e-4)  # Adam: see above


def test_fused_optimizer_with_folded_clip_matches_foreach(monkeypatch):
    """max_grad_norm 0.05 clips every step; torch's fused kernel and TritonAdamW (interpreted on CPU; on 2
    ranks through FSDP2's local shards) divide by grad_scale, foreach clips the grads."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read by the spawned ranks when they import triton
    sd = full_state_dict()
    for world in (1, 2):
        runs = {}
        for fused in ("off", "on", "triton"):
            extra = ("train.max_grad_norm=0.05", f"optim.fused={fused}")
            runs[fused] = run_ranks(world, train_losses, 4 // world, sd, extra)[0]
        l_off, p_off = runs["off"]
        for fused in ("on", "triton"):
            losses, params = runs[fused]
            for a, b in zip(l_off, losses):
                assert abs(a - b) < 1e-5, (world, fused, l_off, losses)
            for k in p_off:
                torch.testing.assert_close(p_off[k], params[k], rtol=0, atol=1e-4)
    unclipped = run_ranks(1, train_losses, 4, sd, ("train.max_grad_norm=0",))[0][0]
    assert abs(unclipped[-1] - runs["off"][0][-1]) > 1e-4  # clipping changed the trajectory
