"""One shard's training stream: sources -> mixture -> packed rows -> batches, with a small exact state.

A shard is one (data-parallel rank, loader worker) pair. Its micro-batches are the job's micro-batches
`offset, offset + stride, ...` (stride = loader workers) counted from the loader's start, which is at
optimizer step `first_step` (0 unless the stream was started over in the middle of a run). That is how
it knows the optimizer step, and so the mixture stage, of every batch it makes without talking to anyone.
A run resumed with another accumulation counts its steps from the resumed position (`count_steps_from`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from cptrain.data.config import DataConfig
from cptrain.data.mixture import Mixture
from cptrain.data.packing import RowCutter, as_tensors, make_batch_arrays


class ShardPipeline:
    def __init__(
        self,
        cfg: DataConfig,
        sources: list,
        seq_len: int,
        micro_batch_size: int,
        *,
        batch_offset: int = 0,
        batch_stride: int = 1,
        micro_batches_per_step: int = 1,
        first_step: int = 0,
    ):
        """`sources`: one document stream per `cfg.sources` entry (TokenizedDocuments or token shards).

        `first_step`: the optimizer step the loader's first micro-batch belongs to; a stream started over
        at step N must pick the stage of step N, not of step 0."""
        self.sources = sources
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.batch_offset, self.batch_stride = batch_offset, batch_stride
        self.micro_batches_per_step, self.first_step = micro_batches_per_step, first_step
        self.step_base = (0, first_step)  # (loader micro-batch, the optimizer step it begins)
        n_stages = 1 + len(cfg.stages)
        self.mixture = Mixture(
            [cfg.stage_weights(i) for i in range(n_stages)], [0] + [s.start_step for s in cfg.stages]
        )
        self.cutter = RowCutter(seq_len + 1, self._next_document)
        self.current: list | None = None  # [source index, cursor of the document the next row starts in]
        self.batches = 0  # batches this shard has made
        self.packing = {"rows": 0, "label_tokens": 0, "input_tokens": 0, "padding_tokens": 0}
        self.stage_tokens: list[list[int]] = [[0] * len(sources) for _ in range(n_stages)]

    def _next_document(self) -> np.ndarray:
        s = self.mixture.choose()
        doc = self.sources[s].next()
        self.mixture.record(s, len(doc.tokens))
        self.stage_tokens[self.mixture.stage][s] += len(doc.tokens)
        self.current = [s, list(doc.before)]
        return doc.tokens

    def count_steps_from(self, micro_batch: int, step: int) -> None:
        """Count optimizer steps from the loader's micro-batch `micro_batch`, the first of step `step`.

        A run resumed with another accumulation (train.global_batch_size) goes on with the same rows, but
        its steps take another number of them: counting from the loader's start with the new accumulation
        would move every later stage switch (earlier for a smaller batch, later for a larger one)."""
        self.step_base = (micro_batch, step)

    def step_of_next_batch(self) -> int:
        """The optimizer step of the next batch: the base step plus the steps taken since the base."""
        micro_batch = self.batch_offset + self.batches * self.batch_stride  # since the loader started
        base_batch, base_step = self.step_base
        return base_step + (micro_batch - base_batch) // self.micro_batches_per_step

    def next_batch(self) -> dict[str, torch.Tensor]:
        return as_tensors(self.next_arrays())

    def next_arrays(self) -> dict[str, np.ndarray]:
        """The next batch as numpy arrays (see next_batch)."""
        self.mixture.set_step(self.step_of_next_batch())
        rows = [self.cutter.next_row() for _ in range(self.micro_batch_size)]
        batch = make_batch_arrays(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
        self.batches += 1
        p = self.packing
        p["rows"] += self.micro_batch_size
        p["input_tokens"] += batch["input_ids"].size
        p["label_tokens"] += int((batch["labels"] != -100).sum())
        return batch

    def state_dict(self) -> dict:
        return copy.deepcopy(
            {
                "batches": self.batches,
                "mixture": self.mixture.state_dict(),
                "current": None
                if self.current is None
                else [self.current[0], self.current[1], self.cutter.offset],
                "sources": [s.state_dict() for s in self.sources],
                "packing": self.packing,
                "stage_tokens": self.stage_tokens,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        self.batches = int(state["batches"])
        self.mixture.load_state_dict(state["mixture"])
        for src, s in zip(self.sources, state["sources"]):
            src.load_state_dict(s)
        self.packing = state["packing"]
        self.stage_tokens = state["stage_tokens"]
        self.current = None
        self.cutter.current, self.cutter.offset = None, 0
        if state["current"] is not None:
            s, before, offset = state["current"]
            self.current = [int(s), [int(x) for x in before]]
            self.cutter.current = self.sources[int(s)].reread(self.current[1]).tokens
            self.cutter.offset = int(offset)
