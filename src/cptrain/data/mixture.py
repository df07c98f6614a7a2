"""Token-level mixture: which source the next document comes from, so token shares follow the weights.

A weight is a share of tokens (normalized over the sources), not of documents. The rule is deterministic
"most behind first": pick the source whose token count lags its weight's share of all tokens taken in
this stage the most. The token count of every source then stays within one document of its target at
all times, with no randomness to save or replay. Stages change the weights at given optimizer steps; the
counts restart at each stage so the new mix takes effect at once instead of first making up for the old
one.

Every shard (data-parallel rank x loader worker) mixes its own stream with its own counts, so the bound
holds per shard; a rank's or the whole job's share is off by at most the same fraction, one document's
tokens over the tokens one shard has read. That is large for a short sample of long documents and
shrinks as 1 / tokens. It also leans one way: a source is picked as soon as it falls behind and then
leads by up to (1 - its share) x its document, so a source of long documents is ahead by about half of
that on average. Measured with 0.8 / 0.2 weights, the 0.2 source's documents ~1,900 tokens, the 0.8
source's ~30, seq_len 2048, 2 ranks x 2 loader workers: the 0.8 source had 0.753-0.777 of a worker's
and 0.765 of a rank's first 16 micro-batches, 0.796-0.797 of a rank's 128, 0.797-0.799 of its 512.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Mixture:
    stage_weights: list[list[float]]  # per stage, one weight per source
    stage_starts: list[int]  # optimizer step at which each stage starts (stage 0 at 0)
    stage: int = 0
    taken: list[int] = field(default_factory=list)  # tokens taken per source in the current stage

    def __post_init__(self) -> None:
        if not self.taken:
            self.taken = [0] * len(self.stage_weights[0])
        self._norm = []
        for ws in self.stage_weights:
            total = sum(ws)
            self._norm.append([w / total for w in ws])

    def stage_at(self, step: int) -> int:
        stage = 0
        for i, start in enumerate(self.stage_starts):
            if step >= start:
                stage = i
        return stage

    def set_step(self, step: int) -> None:
        """Move to the stage of optimizer step `step`; a new stage starts its counts from zero."""
        stage = self.stage_at(step)
        if stage != self.stage:
            self.stage = stage
            self.taken = [0] * len(self.taken)

    def choose(self) -> int:
        """Index of the source to read the next document from. Equal lags (every one at 0 when a run or a
        stage starts) go to the larger weight: with the first-listed source winning, a 0.2 source's long
        first document could fill a short stage meant to be 80% another source."""
        weights = self._norm[self.stage]
        total = sum(self.taken)
        tol = 1e-9 * max(1, total)
        best, best_lag = -1, 0.0
        for i, w in enumerate(weights):
            if w <= 0:
                continue
            lag = w * total - self.taken[i]
            if best < 0 or lag > best_lag + tol or (lag > best_lag - tol and w > weights[best]):
                best, best_lag = i, lag
        return best

    def record(self, source: int, tokens: int) -> None:
        self.taken[source] += tokens

    def shares(self) -> list[float]:
        total = sum(self.taken)
        return [t / total if total else 0.0 for t in self.taken]

    def state_dict(self) -> dict:
        return {"stage": self.stage, "taken": list(self.taken)}

    def load_state_dict(self, state: dict) -> None:
        self.stage = int(state["stage"])
        self.taken = [int(t) for t in state["taken"]]
