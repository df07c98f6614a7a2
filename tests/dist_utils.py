"""Run a function on N real gloo ranks (spawned processes) and collect each rank's return value."""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import traceback

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    failed = True
    try:
        result = fn(*args)
        failed = False
    except BaseException:
        result = RuntimeError(traceback.format_exc())
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            if not failed and world > 1:
                # every rank done talking before any closes its sockets: a rank tearing down while a peer's
                # gloo threads still read made that peer abort ("terminate called without an active
                # exception") once in CI
                dist.barrier()
            dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    # the result (or the error, with its traceback) is written: leave without the interpreter's teardown,
    # where C++ destructors of process-group objects still referenced from Python (FSDP2 state, meshes) met
    # gloo threads and aborted a rank now and then on the loaded 2-core CI machine ("terminate called
    # without an active exception") after every check had passed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(world: int, fn, *args) -> list:
    """fn must be importable (module level). Raises the first rank's error, with its traceback."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(world, _free_port(), out_dir, fn, args), nprocs=world,
                           join=True, start_method="spawn")
        results = []
        for r in range(world):
            with open(os.path.join(out_dir, f"{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results
