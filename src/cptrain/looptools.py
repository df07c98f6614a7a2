"""Pieces the run loop uses around each step: stop requests and batch lookahead."""

from __future__ import annotations

import collections
import queue
import signal
import threading


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

    `background=True`: a thread keeps up to `depth` steps of batches ready (at most `max_steps` in all).
    Fetching then costs the launching thread nothing: tokenizing (most of a batch's cost with on-the-fly
    tokenization, and bursty: one encode call fills several batches) releases the GIL, so it runs beside
    the host's kernel launches instead of delaying the next step's. Only the thread touches the loader once
    started; the position of each batch is recorded before the batch is read.
    """

    def __init__(self, loader, micro_batches_per_step: int, background: bool = False, depth: int = 3,
                 max_steps: int | None = None):
        self.loader, self.n = loader, micro_batches_per_step
        self._next: list[dict] | None = None
        self._state_before: dict | None = None
        self.background, self.depth, self.max_steps = background, depth, max_steps
        self._thread: threading.Thread | None = None
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._states: collections.deque = collections.deque()  # positions before batches not yet taken
        self._lock = threading.Lock()

    def fetch(self) -> None:
        if self.background:
            if self._thread is None:
                self._states.append(self.loader.state_dict())
                self._thread = threading.Thread(target=self._produce, args=(self.max_steps,),
                                                name="cptrain-batches", daemon=True)
                self._thread.start()
        elif self._next is None:
            self._state_before = self.loader.state_dict()
            self._next = [next(self.loader) for _ in range(self.n)]

    def _produce(self, to_make: int | None) -> None:
        made = 0
        try:
            while to_make is None or made < to_make:
                batches = [next(self.loader) for _ in range(self.n)]
                made += 1
                if to_make is None or made < to_make:
                    with self._lock:  # the next step's position, recorded before its batch is handed over
                        self._states.append(self.loader.state_dict())
                self._ready.put(batches)
        except BaseException as e:  # handed to the trainer's thread, raised by take()
            self._ready.put(e)

    def take(self) -> list[dict]:
        self.fetch()
        if self.background:
            if self.max_steps is not None and self.max_steps <= 0:
                raise RuntimeError("Lookahead: all max_steps steps of batches were taken")
            batches = self._ready.get()
            if isinstance(batches, BaseException):
                raise batches
            with self._lock:
                self._states.popleft()
            if self.max_steps is not None:
                self.max_steps -= 1
            return batches
        batches, self._next, self._state_before = self._next, None, None
        return batches

    def state_dict(self) -> dict:
        if self.background:
            with self._lock:
                if self._states:
                    return self._states[0]
            return self.loader.state_dict()  # not started, or every batch made was taken: the loader is idle
        return self._state_before if self._next is not None else self.loader.state_dict()

    def report(self) -> dict:
        return getattr(self.loader, "report", dict)()
