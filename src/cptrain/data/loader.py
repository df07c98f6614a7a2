"""The training loader: an endless iterator of batches for one data-parallel rank, with exact resume.

Shards are (rank, worker) pairs: shard = dp_rank * num_workers + worker, and documents are dealt to
shards round-robin, so ranks x workers see disjoint documents and together see each one exactly once
per epoch. With workers, batches come from a torch DataLoader in worker order (batch g from worker
g % num_workers); each batch travels with its worker's state right after making it, so the loader's
`state_dict()` describes exactly the batches handed out, not the ones prefetched.

A loader that starts without a restored position (a fresh run, a run resumed without its data state,
or a stream started over because the saved one no longer fits) starts at optimizer step `first_step`,
and the state remembers it: `data.stages` follow the run's steps, not the stream's own batch count.
A run resumed with another accumulation (train.global_batch_size) continues the stream and counts steps
from the resumed position (`step_base`), so the stages still switch at their configured steps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from cptrain.data.config import DataConfig
from cptrain.data.packing import as_tensors
from cptrain.data.pipeline import ShardPipeline
from cptrain.data.report import data_report
from cptrain.data.sources import DataError

STATE_VERSION = 1
TRAIN_KEYS = ("seq_len", "micro_batch_size")  # parts of the data fingerprint that [train] sets


class TrainLoader:
    def __init__(
        self,
        cfg: DataConfig,
        make_pipeline,
        *,
        dp_rank: int,
        dp_size: int,
        parts: dict,
        fingerprint: str,
        micro_batches_per_step: int = 1,
        first_step: int = 0,
    ):
        """`make_pipeline(shard, shards, worker, workers, first_step)` builds one ShardPipeline (also
        inside workers); `micro_batches_per_step` turns this rank's batch count into optimizer steps."""
        self.cfg, self.make_pipeline = cfg, make_pipeline
        self.micro_batches_per_step, self.first_step = micro_batches_per_step, first_step
        # (micro-batch of this loader, the optimizer step it begins): where the step count starts
        self.step_base = (0, first_step)
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.num_workers = cfg.num_workers
        self.parts, self.fingerprint = parts, fingerprint
        self.batches = 0  # batches handed out by this loader (this rank)
        self.shard_states: list[dict | None] = [None] * max(1, self.num_workers)
        self._pipeline: ShardPipeline | None = None
        self._iter: Iterator | None = None

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.num_workers == 0:
            if self._pipeline is None:
                self._pipeline = self._build_shard(0, self.shard_states[0])
            batch = self._pipeline.next_batch()
            self.batches += 1
            return batch
        if self._iter is None:
            self._iter = iter(self._worker_loader())
        arrays, state = next(self._iter)
        self.shard_states[self.batches % self.num_workers] = state
        self.batches += 1
        return as_tensors(arrays)

    def _build_shard(self, worker: int, state: dict | None) -> ShardPipeline:
        return build_shard(
            self.make_pipeline,
            self.dp_rank,
            self.dp_size,
            worker,
            max(1, self.num_workers),
            state,
            self.first_step,
            self.step_base,
        )

    def _worker_loader(self) -> torch.utils.data.DataLoader:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers each tokenize alone
        # a resumed loader continues with the worker whose turn it is: rotate which worker plays which shard
        first = self.batches % self.num_workers
        dataset = _ShardDataset(
            self.make_pipeline,
            self.dp_rank,
            self.dp_size,
            self.num_workers,
            first,
            list(self.shard_states),
            self.first_step,
            self.step_base,
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_keep,
            prefetch_factor=2,
            persistent_workers=False,
        )

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        states = list(self.shard_states)
        if self.num_workers == 0 and self._pipeline is not None:
            states = [self._pipeline.state_dict()]
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "fingerprint_parts": self.parts,
            "dp_rank": self.dp_rank,
            "dp_size": self.dp_size,
            "num_workers": self.num_workers,
            "batches": self.batches,
            "first_step": self.first_step,
            "micro_batches_per_step": self.micro_batches_per_step,
            "step_base": list(self.step_base),
            "shards": states,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` left off; refuses a different data config or layout.

        With data.on_resume_mismatch=restart a state that does not fit starts the stream over, at the
        optimizer step the saved position had reached (so the stages stay on the run's steps)."""
        if self.cfg.on_resume_mismatch == "restart" and self._mismatch(state):
            step = self._step_of(state)
            self._reset(0, [None] * max(1, self.num_workers), step, (0, step))
            return
        problem = self._mismatch(state)
        if problem:
            raise DataError(problem)
        # states saved before first_step existed come from loaders that all started at step 0
        first_step = int(state.get("first_step", 0))
        self._reset(int(state["batches"]), list(state["shards"]), first_step, self._step_base(state))

    def _step_base(self, state: dict) -> tuple[int, int]:
        """Where to count optimizer steps from after a resume: as saved, or, if the accumulation changed
        since (another train.global_batch_size on the same ranks), from the saved position at its step.

        The stream goes on rather than being refused: each rank's rows do not depend on how many of
        them make a step (the fingerprint holds micro_batch_size and seq_len), so it continues exactly;
        only the count of steps must start over at the resumed step, or every `data.stages` switch would
        land where the saved micro-batch count divided by the new accumulation says. A position is saved
        between steps, so the next micro-batch is the first of that step."""
        first = int(state.get("first_step", 0))
        base_batch, base_step = (int(x) for x in state.get("step_base", (0, first)))
        saved = state.get("micro_batches_per_step")
        if saved is None or int(saved) == self.micro_batches_per_step:  # older states do not say: as before
            return base_batch, base_step
        return int(state["batches"]), self._step_of(state)

    def _step_of(self, state: dict) -> int:
        """The optimizer step of the next batch after `state`'s position; `first_step` if it does not say.

        States saved before first_step existed do not say (their batch count alone is not enough: the
        accumulation may have changed since); the caller's `first_step` is then the run's step."""
        if "first_step" not in state or "micro_batches_per_step" not in state:
            return self.first_step
        base_batch, base_step = (int(x) for x in state.get("step_base", (0, state["first_step"])))
        taken = int(state["batches"]) - base_batch  # micro-batches since the base, at the saved accumulation
        return base_step + taken // max(1, int(state["micro_batches_per_step"]))

    def _mismatch(self, state: dict) -> str | None:
        from cptrain.data.checks import describe_changes

        how = (
            "To start the data stream over with the new settings instead (documents already seen may "
            "repeat), set data.on_resume_mismatch=restart (or checkpoint.load_data_state=false)."
        )
        if state.get("version") != STATE_VERSION:
            return f"data loader state version {state.get('version')} is not {STATE_VERSION}. {how}"
        if state["fingerprint"] != self.fingerprint:
            changes = [_recipe_key(c) for c in describe_changes(state["fingerprint_parts"], self.parts)]
            return (
                f"the data changed since this checkpoint was saved: {'; '.join(changes) or 'fingerprint'}. "
                f"Resume with the original data settings to continue the same token stream. {how}"
            )
        if state["dp_size"] != self.dp_size or state["num_workers"] != self.num_workers:
            return (
                f"this checkpoint's data position is per data-parallel rank for dp_size={state['dp_size']}, "
                f"data.num_workers={state['num_workers']}; this run has dp_size={self.dp_size}, "
                f"data.num_workers={self.num_workers}. Each rank's documents depend on both, so the "
                f"stream cannot be continued exactly: resume with the same layout. {how}"
            )
        if state["dp_rank"] != self.dp_rank:
            return (
                f"data state of rank {state['dp_rank']} loaded on rank {self.dp_rank}: load each rank's "
                f"own data state"
            )
        return None

    def _reset(self, batches: int, shard_states: list, first_step: int, step_base: tuple[int, int]) -> None:
        self.close()
        self.batches, self.shard_states, self.first_step = batches, shard_states, first_step
        self.step_base = step_base
        self._pipeline = None

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is garbage collected)."""
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def report(self) -> dict:
        """Documents and tokens read, skips by reason and file, realized shares, packing efficiency; and
        `first_step`, the optimizer step this stream started at (its counts begin there)."""
        states = self.state_dict()["shards"]
        return {
            **data_report(self.cfg, [s for s in states if s is not None], self.batches),
            "first_step": self.first_step,
        }


def _keep(x):
    return x


def _recipe_key(change: str) -> str:
    """A fingerprint change as the recipe key that makes it: `micro_batch_size: 2 -> 1` is train's."""
    return f"train.{change}" if change.split(":")[0] in TRAIN_KEYS else change


def build_shard(
    make_pipeline,
    dp_rank: int,
    dp_size: int,
    worker: int,
    workers: int,
    state: dict | None,
    first_step: int,
    step_base: tuple[int, int],
) -> ShardPipeline:
    pipeline = make_pipeline(dp_rank * workers + worker, dp_size * workers, worker, workers, first_step)
    pipeline.count_steps_from(*step_base)
    if state is not None:
        pipeline.load_state_dict(state)
    return pipeline


class _ShardDataset(torch.utils.data.IterableDataset):
    """Runs inside each DataLoader worker: one shard's pipeline, yielding (batch, state after it).

    It holds no reference to the TrainLoader: a loader <-> dataset cycle would leave old loaders to the
    cyclic garbage collector, which may then run inside a forked worker and trip over their processes."""

    def __init__(
        self,
        make_pipeline,
        dp_rank: int,
        dp_size: int,
        workers: int,
        first: int,
        states: list,
        first_step: int,
        step_base: tuple[int, int],
    ):
        self.make_pipeline, self.dp_rank, self.dp_size, self.workers = (
            make_pipeline,
            dp_rank,
            dp_size,
            workers,
        )
        self.first, self.states, self.first_step, self.step_base = first, states, first_step, step_base

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = (info.id + self.first) % self.workers
        torch.set_num_threads(1)
        pipeline = build_shard(
            self.make_pipeline,
            self.dp_rank,
            self.dp_size,
            worker,
            self.workers,
            self.states[worker],
            self.first_step,
            self.step_base,
        )
        while True:
            arrays = pipeline.next_arrays()
            yield arrays, pipeline.state_dict()
