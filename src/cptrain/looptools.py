"""Pieces the run loop uses around each step: stop requests and batch lookahead."""

from __future__ import annotations

import signal


class StopFlag:
    """SIGTERM / SIGUSR1 (SLURM's pre-emption warning) ask for a checkpoint and a clean exit. The run loop
    passes `requested` to each step launch, which sums the votes of all ranks (Trainer.launch_step)."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. in tests)
                pass

    def _handler(self, signum, frame):
        self.requested = True



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
