"""TritonAdamW (the default AdamW on CUDA; here under Triton's interpreter, on gloo ranks) through a real
checkpoint: 2 steps, save, a fresh model and optimizer load it, 2 more steps == 4 steps uninterrupted, bit
for bit, on one rank and on two FSDP2 ranks (DTensor shards, DCP's optimizer state dict)."""

from pathlib import Path

import torch

from cptrain.checkpoint import full_model_state_dict, load, save
from cptrain.config import load_config
from cptrain.models.build import build_model
from cptrain.parallel.dims import build_mesh, init_distributed
from cptrain.train import Trainer, restore_schedule
from tests.dist_utils import run_ranks
from tests.train.test_trainer_equivalence import ROWS, SEQ, full_state_dict, global_batches, stack


def _trainer(env, sd: dict) -> Trainer:
    cfg = load_config(None, ["model.preset=debug", "model.init=random", "model.loss=naive", "model.tokenizer=x",
                             "precision.param_dtype=fp32", "train.micro_batch_size=1", "train.steps=10",  # lr > 0 on every step run here
                             "schedule.warmup_steps=1", "optim.lr=1e-2", "optim.fused=triton",
                             "train.max_grad_norm=0.05"])
    model = build_model(cfg.model, cfg.precision, build_mesh(cfg.parallel, env), env.device, seq_len=SEQ,
                        micro_batch_size=1, full_state_dict=sd if env.rank == 0 else None, use_state_dict=True)
    trainer = Trainer(cfg, model, env.device)
    assert type(trainer.optimizer).__name__ == "TritonAdamW"
    return trainer


def _step(trainer: Trainer, env, rows: list[dict]) -> float:
    per_rank = ROWS // env.world_size
    mine = rows[env.rank * per_rank:(env.rank + 1) * per_rank]
    return trainer.train_step([stack(mine[i:i + 1]) for i in range(per_rank)])["loss"]


def resume(sd: dict, ckpt_dir: str) -> tuple[list[float], list[float], bool]:
    env = init_distributed("cpu")
    batches = global_batches()
    batches.append(batches[0])  # 4 steps: the loss of the 4th depends on the 3rd update (loaded moments)
    full = _trainer(env, sd)
    losses_full = [_step(full, env, rows) for rows in batches]
    params_full = full_model_state_dict(full.model)

    first = _trainer(env, sd)
    losses = [_step(first, env, rows) for rows in batches[:2]]
    step_dir = Path(ckpt_dir) / "step-2"
    save(step_dir, first.model, first.optimizer, train_state={"step": 2}, data_state={}, keep_latest_k=0)
    second = _trainer(env, sd)
    load(step_dir, second.model, second.optimizer, load_rank_state=False)
    second.step = 2
    restore_schedule(second, 2)
    losses += [_step(second, env, rows) for rows in batches[2:]]
    params = full_model_state_dict(second.model)
    same = all(torch.equal(params_full[k], params[k]) for k in params_full)
    return losses_full, losses, same


def test_triton_adamw_resume_is_bitwise(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read by the spawned ranks when they import triton
    sd = full_state_dict()
    for world in (1, 2):
        full, resumed, same = run_ranks(world, resume, sd, str(tmp_path / f"w{world}"))[0]
        assert full == resumed, (world, full, resumed)
        assert same, world
