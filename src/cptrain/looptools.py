"""Pieces the run loop uses around each step: stop requests, batch lookahead, step timing."""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist


class StopFlag:
    """SIGTERM / SIGUSR1 (SLURM's pre-emption warning) ask for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. in tests)
                pass

    def _handler(self, signum, frame):
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        if dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Lookahead:
    """The next step's micro-batches, fetched while the device runs the current step.

    `state_dict()` is the loader's position after the batches handed to the trainer, not after the ones
    held back, so a checkpoint taken between steps resumes at exactly the next batch to train on.
    """

    def __init__(self, loader, micro_batches_per_step: int):
        self.loader, self.n = loader, micro_batches_per_step
        self._next: list[dict] | None = None
        self._state_before: dict | None = None

    def fetch(self) -> None:
        if self._next is None:
            self._state_before = self.loader.state_dict()
            self._next = [next(self.loader) for _ in range(self.n)]

    def take(self) -> list[dict]:
        self.fetch()
        batches, self._next, self._state_before = self._next, None, None
        return batches

    def state_dict(self) -> dict:
        return self._state_before if self._next is not None else self.loader.state_dict()

    def report(self) -> dict:
        return getattr(self.loader, "report", dict)()


class StepTimer:
    """Device time of one step, start of its first kernel to end of its last (CUDA events; host clock on
    CPU). `elapsed()` waits for the device: it is the loop's one synchronisation per step."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.t_start = self.t_stop = 0.0

    def start(self) -> None:
        self.t_start = time.perf_counter()
        if self.cuda:
            self.begin.record()

    def stop(self) -> None:
        if self.cuda:
            self.end.record()
        self.t_stop = time.perf_counter()

    def elapsed(self) -> float:
        if not self.cuda:
            return self.t_stop - self.t_start
        torch.cuda.synchronize()
        return self.begin.elapsed_time(self.end) / 1000.0
