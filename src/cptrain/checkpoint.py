"""Checkpoints: `checkpoints/step-N/` through torch.distributed.checkpoint, committed by a marker.

Layout of one step folder:
  model/ and optim/   DCP shards (topology-free: a different world size can load them)
  rank-R.pt           this rank's data-loader position and RNG (plain tensors/dicts; weights_only load)
  train_state.json    step, tokens seen, scheduler state, world size
  COMMITTED           written last by rank 0 after every rank finished; without it the folder is ignored
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from cptrain.configtools import ConfigError

MARKER = "COMMITTED"
_STEP = re.compile(r"^step-(\d+)$")


def committed_steps(ckpt_dir: Path) -> list[Path]:
    """Committed step folders, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP.match(p.name)
        if m and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_resume(run_dir: Path, resume: str) -> Path | None:
    """The step folder this launch starts from, or None for step 0.

    "auto": the run folder's newest committed step. A path: the starting point of a run folder that has no
    checkpoint of its own yet (a branch, e.g. a WSD decay from a stable-phase step); once the run has saved
    its own, relaunching the same command (a SLURM requeue) resumes from those, not from the branch point
    again. "never": step 0, refused when the run folder already holds checkpoints, which the new run's
    pruning would mix with its own (the old run's later steps would outlive the new run's).
    """
    own = committed_steps(run_dir / "checkpoints")
    if resume == "never":
        if own:
            raise ConfigError(
                f"checkpoint.resume = 'never' but train.run_dir {str(run_dir)!r} already holds checkpoints of "
                f"an earlier run ({', '.join(p.name for p in own)}): use a new train.run_dir, delete "
                f"{run_dir / 'checkpoints'} to start over, or resume with checkpoint.resume = 'auto'")
        return None
    if resume == "auto" or own:
        return own[-1] if own else None
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise ConfigError(f"checkpoint.resume = {resume!r} is not a committed step folder "
                          f"(expected {path / MARKER}); point it at checkpoints/step-N")
    return path


def saved_step(step_dir: Path) -> int:
    """The training step a committed step folder was saved at."""
    return int(json.loads((step_dir / "train_state.json").read_text())["step"])


def saved_world_size(step_dir: Path) -> int:
    """How many ranks wrote a committed step folder (each saved its own data position)."""
    return int(json.loads((step_dir / "train_state.json").read_text())["world_size"])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(step_dir: Path, model, optimizer, *, train_state: dict, data_state: dict, keep_latest_k: int) -> None:
    """Collective: every rank calls it. Rank 0 writes the marker last and prunes old steps. A step folder that
    is already committed (a second save of the same step) stays whole until the new save is committed beside
    it as step-N.new, which then takes its place: a crash in between never leaves the step without a copy."""
    rank = dist.get_rank()
    committed = (step_dir / MARKER).is_file()  # every rank looks before rank 0 changes anything below
    write_dir = step_dir.with_name(step_dir.name + ".new") if committed else step_dir
    if rank == 0 and write_dir.exists():  # an uncommitted leftover of a crashed save
        shutil.rmtree(write_dir)
    dist.barrier()
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(write_dir / "model"))
    dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(write_dir / "optim"))
    torch.save({"data": data_state, "rng": rng_state()}, write_dir / f"rank-{rank}.pt")
    dist.barrier()
    if rank == 0:
        state = {**train_state, "world_size": dist.get_world_size(), "saved_at": time.time()}
        (write_dir / "train_state.json").write_text(json.dumps(state, indent=2))
        (write_dir / MARKER).write_text(str(state["step"]))
        if committed:
            old = step_dir.with_name(step_dir.name + ".replaced")
            shutil.rmtree(old, ignore_errors=True)
            step_dir.rename(old)
            write_dir.rename(step_dir)
            shutil.rmtree(old, ignore_errors=True)
        if keep_latest_k > 0:
            for old in committed_steps(step_dir.parent)[:-keep_latest_k]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load(step_dir: Path, model, optimizer=None, *, load_rank_state: bool = True) -> tuple[dict, dict | None]:
    """Restore model (and optimizer) in place; return (train_state, this rank's data state or None)."""
    train_state = json.loads((step_dir / "train_state.json").read_text())
    msd = {"model": get_model_state_dict(model)}
    dcp.load(msd, checkpoint_id=str(step_dir / "model"))
    set_model_state_dict(model, msd["model"])
    if optimizer is not None:
        _load_optimizer_state(step_dir, model, optimizer)
    if not load_rank_state:
        return train_state, None
    rank_state = _rank_state(step_dir)
    set_rng_state(rank_state["rng"])
    return train_state, rank_state["data"]


def saved_rank_state(step_dir: Path) -> dict:
    """This rank's rank-R.pt, read without building the model: its data position ("data"), which a launch checks
    against its own data settings before it builds the model or touches its run folder, and its RNG ("rng",
    for set_rng_state once the model is built)."""
    return _rank_state(step_dir)


def _rank_state(step_dir: Path) -> dict:
    """This rank's rank-R.pt: its data position and RNG."""
    world_size = saved_world_size(step_dir)
    rank_file = step_dir / f"rank-{dist.get_rank()}.pt"
    if world_size != dist.get_world_size() or not rank_file.is_file():
        raise RuntimeError(
            f"{step_dir} was written by {world_size} ranks, this job has "
            f"{dist.get_world_size()}: the data position of each rank cannot be mapped. Resume with the same "
            "number of ranks, or set checkpoint.load_data_state=false to keep weights and optimizer and "
            "restart the data stream")
    return torch.load(rank_file, weights_only=True)


def _load_optimizer_state(step_dir: Path, model, optimizer) -> None:
    """The per-parameter AdamW state (moments, step counts, keyed by parameter name) from the checkpoint; the
    groups stay this run's. Loading the saved groups too failed with DCP's "Missing key ... param_groups.N"
    whenever the recipe grouped the parameters differently (a new LR multiplier or weight decay on resume),
    and torch's load_state_dict would have copied the saved weight decay, betas and eps over the recipe's."""
    live = get_optimizer_state_dict(model, optimizer)
    wanted = {"optim": {"state": live["state"]}}
    try:
        dcp.load(wanted, checkpoint_id=str(step_dir / "optim"))
    except (RuntimeError, CheckpointException) as e:  # DCP wraps a rank's error in a BaseException
        if "Missing key in checkpoint state_dict" not in str(e):
            raise
        raise ConfigError(f"{step_dir}: its optimizer state lacks parameters this run trains (one unfrozen since "
                          "the save has no AdamW state there): resume with "
                          "checkpoint.load_optimizer=false") from None
    set_optimizer_state_dict(model, optimizer, {"state": wanted["optim"]["state"],
                                                "param_groups": live["param_groups"]})


def full_model_state_dict(model) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU state dict on rank 0, empty elsewhere; collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
