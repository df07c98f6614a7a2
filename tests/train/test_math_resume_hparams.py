"""A resume that changes optim.weight_decay / betas / eps applies the new values (as it does the new LR): the
checkpoint brings the AdamW moments and step counts, the recipe its hyperparameters. Checked on the update of
the first step after a real DCP save and load, against AdamW's formula written out by hand."""

from pathlib import Path

import torch

from cptrain import checkpoint
from cptrain.config import load_config
from cptrain.models.build import build_model
from cptrain.parallel.dims import build_mesh, init_distributed
from cptrain.train import Trainer, restore_schedule
from tests.dist_utils import run_ranks

SEQ, ROWS = 16, 2
SAVED = ("optim.weight_decay=0.1", "optim.betas=[0.9, 0.95]", "optim.eps=1e-8")
RESUMED = ("optim.weight_decay=0.3", "optim.betas=[0.5, 0.7]", "optim.eps=1e-3")
PARAM = "layers.0.mlp.up_proj.weight"


def batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (ROWS, SEQ + 1), generator=g)
    return dict(input_ids=ids[:, :-1], labels=ids[:, 1:], position_ids=torch.arange(SEQ).expand(ROWS, SEQ),
                document_ids=torch.zeros(ROWS, SEQ, dtype=torch.int32))


def trainer(env, *extra: str) -> Trainer:
    cfg = load_config(None, ["model.preset=debug", "model.init=random", "model.loss=naive", "model.tokenizer=x",
                             "precision.param_dtype=fp32", "train.steps=4", "train.max_grad_norm=0",
                             f"train.micro_batch_size={ROWS}", "optim.lr=1e-2", *extra])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.precision, build_mesh(cfg.parallel, env), env.device, seq_len=SEQ,
                        micro_batch_size=ROWS)
    return Trainer(cfg, model, env.device)


def resumed_update(step_dir: str) -> dict:
    """Train 2 steps, save; resume under other hyperparameters and take one step: what AdamW's formula with
    the recipe's values predicts for PARAM, and what the step did."""
    env = init_distributed("cpu")
    first = trainer(env, *SAVED)
    for s in range(2):
        first.train_step([batch(s)])
    checkpoint.save(Path(step_dir), first.model, first.optimizer, train_state={"step": 2},
                    data_state={}, keep_latest_k=0)
    second = trainer(env, *RESUMED)
    checkpoint.load(Path(step_dir), second.model, second.optimizer, load_rank_state=False)
    second.step = 2
    restore_schedule(second, 2)
    p = dict(second.model.named_parameters())[PARAM]
    state, group = second.optimizer.state[p], next(g for g in second.optimizer.param_groups
                                                 if any(q is p for q in g["params"]))
    b = batch(2)
    loss = second.model(b["input_ids"], b["position_ids"], b["document_ids"], b["labels"])
    grad = torch.autograd.grad(loss / (b["labels"] != -100).sum(), p)[0]
    expected = adamw_by_hand(p.detach().clone(), grad, state, lr=group["lr"], wd=0.3, betas=(0.5, 0.7), eps=1e-3)
    second.train_step([b])
    return {"expected": expected, "got": p.detach().clone(), "group": {k: group[k] for k in
                                                                     ("weight_decay", "betas", "eps")}}


def adamw_by_hand(w, g, state, *, lr, wd, betas, eps):
    """torch.optim.AdamW's update (decoupled decay) for one parameter, from its state before the step."""
    t = float(state["step"]) + 1
    m = betas[0] * state["exp_avg"] + (1 - betas[0]) * g
    v = betas[1] * state["exp_avg_sq"] + (1 - betas[1]) * g * g
    denom = (v / (1 - betas[1] ** t)).sqrt() + eps
    return w * (1 - lr * wd) - lr / (1 - betas[0] ** t) * m / denom


def test_resume_applies_the_recipes_adamw_hyperparameters(tmp_path):
    out = run_ranks(1, resumed_update, str(tmp_path / "step-2"))[0]
    assert out["group"] == {"weight_decay": 0.3, "betas": (0.5, 0.7), "eps": 1e-3}
    torch.testing.assert_close(out["got"], out["expected"], rtol=0, atol=1e-6)
