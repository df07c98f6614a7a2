"""Process-group setup and the device mesh.

`init_distributed` works the same as a plain process (world size 1), under torchrun and under srun:
it reads RANK / WORLD_SIZE / LOCAL_RANK (or SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cptrain.config import ParallelConfig
from cptrain.configtools import ConfigError


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def init_distributed(device: str = "auto") -> DistEnv:
    """Initialise the default process group (NCCL on CUDA, gloo on CPU), even for one process,
    so every run takes the same FSDP2 code path."""
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            if world > 1:
                raise ConfigError("WORLD_SIZE > 1 but MASTER_PORT is unset: launch with torchrun or srun "
                                  "(see slurm/ and torchrun_configs/)")
            os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                device_id=dev if use_cuda else None)
    return DistEnv(rank, world, local_rank, dev)


def build_mesh(cfg: ParallelConfig, env: DistEnv):
    """A 1-D data-parallel (FSDP) mesh; other dimensions are validated and refused until implemented."""
    from torch.distributed.device_mesh import init_device_mesh

    for name in ("tp", "pp", "cp", "dp_replicate"):
        if getattr(cfg, name) != 1:
            raise ConfigError(f"parallel.{name} = {getattr(cfg, name)}: only FSDP data parallelism "
                              "(parallel.dp_shard) is implemented in this version; set it to 1")
    shard = env.world_size if cfg.dp_shard == -1 else cfg.dp_shard
    if shard != env.world_size:
        raise ConfigError(f"parallel.dp_shard = {cfg.dp_shard} but the job has {env.world_size} ranks; "
                          "use -1 or the world size")
    return init_device_mesh(env.device.type, (shard,), mesh_dim_names=("dp_shard",))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
