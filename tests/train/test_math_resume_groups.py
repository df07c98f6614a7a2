"""A resume may group the parameters differently (a new LR multiplier, weight decay or freeze pattern): the
checkpoint brings each parameter's AdamW state by name, the recipe its groups. A parameter the checkpoint has
no state for (unfrozen since the save) is a clear error, not DCP's traceback."""

from pathlib import Path

import torch

from cptrain import checkpoint
from cptrain.configtools import ConfigError
from cptrain.parallel.dims import init_distributed
from tests.dist_utils import run_ranks
from tests.train.test_math_resume_hparams import batch, trainer

EMBED = "embed_tokens.weight"


def save_then_resume(step_dir: str, *resumed: str) -> dict:
    env = init_distributed("cpu")
    first = trainer(env, 'optim.freeze=["layers.0.*"]')
    for s in range(2):
        first.train_step([batch(s)])
    saved = {k: v.clone() for k, v in first.optimizer.state[dict(first.model.named_parameters())[EMBED]].items()}
    checkpoint.save(Path(step_dir), first.model, first.optimizer, train_state={"step": 2},
                    data_state={}, keep_latest_k=0)
    second = trainer(env, *resumed)
    try:
        checkpoint.load(Path(step_dir), second.model, second.optimizer, load_rank_state=False)
    except ConfigError as e:
        return {"error": str(e)}
    p = dict(second.model.named_parameters())[EMBED]
    group = next(g for g in second.optimizer.param_groups if any(q is p for q in g["params"]))
    return {"saved": saved, "loaded": {k: v.clone() for k, v in second.optimizer.state[p].items()},
            "lr_mult": group["lr_mult"]}


def test_resume_with_a_new_embedding_lr_multiplier_keeps_the_saved_moments(tmp_path):
    out = run_ranks(1, save_then_resume, str(tmp_path / "step-2"), 'optim.freeze=["layers.0.*"]',
                    "optim.embedding_lr_mult=0.5")[0]
    assert "error" not in out, out.get("error")
    assert out["lr_mult"] == 0.5
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(out["loaded"][key], out["saved"][key], rtol=0, atol=0)


def test_resume_that_unfreezes_a_parameter_names_the_way_out(tmp_path):
    out = run_ranks(1, save_then_resume, str(tmp_path / "step-2"))[0]
    assert "checkpoint.load_optimizer=false" in out.get("error", ""), out
