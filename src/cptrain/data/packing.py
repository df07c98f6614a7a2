"""Document-masked packing: fixed-length rows cut from a stream of documents, and the Batch they make.

A row holds seq_len + 1 tokens; consecutive rows overlap by one token (the last token of a row is
the first of the next), so every token of the stream is a label exactly once. Each token carries the
index of its document piece within the row (-1 for padding); from those the batch gets labels
masked across document boundaries, position ids that restart per piece, and document ids for the
attention mask.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

IGNORE_INDEX = -100


class RowCutter:
    """Fills rows of `width` tokens from documents pulled one at a time; remembers a partial document."""

    def __init__(self, width: int, next_document: Callable[[], np.ndarray]):
        self.width = width
        self.next_document = next_document
        self.current: np.ndarray | None = None  # the document the next row starts in
        self.offset = 0  # token index in `current` where the next row starts

    def next_row(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [width], piece index per token [width]); the row's last token starts the next row."""
        tokens = np.empty(self.width, dtype=np.int64)
        pieces = np.empty(self.width, dtype=np.int32)
        filled, piece = 0, 0
        while filled < self.width:
            if self.current is None or self.offset >= len(self.current):
                self.current, self.offset = self.next_document(), 0
            take = min(self.width - filled, len(self.current) - self.offset)
            tokens[filled : filled + take] = self.current[self.offset : self.offset + take]
            pieces[filled : filled + take] = piece
            filled += take
            self.offset += take
            piece += 1
        self.offset -= 1
        return tokens, pieces


def pack_documents(documents: list[np.ndarray], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """All of `documents` as rows of seq_len + 1 tokens; only the last row is padded (pieces = -1)."""
    total = sum(len(d) for d in documents)
    if total == 0:
        return np.zeros((0, seq_len + 1), np.int64), np.zeros((0, seq_len + 1), np.int32)
    stream = np.concatenate(documents)
    doc_of = np.repeat(np.arange(len(documents), dtype=np.int64), [len(d) for d in documents])
    n_rows = max(1, -(-(total - 1) // seq_len))
    tokens = np.full((n_rows, seq_len + 1), pad_id, np.int64)
    owner = np.full((n_rows, seq_len + 1), -1, np.int64)
    for r in range(n_rows):
        chunk = slice(r * seq_len, min(total, r * seq_len + seq_len + 1))
        n = chunk.stop - chunk.start
        tokens[r, :n] = stream[chunk]
        owner[r, :n] = doc_of[chunk]
    return tokens, _renumber(owner)


def _renumber(owner: np.ndarray) -> np.ndarray:
    """Document numbers -> piece index 0, 1, ... within each row, keeping -1 for padding."""
    new = np.ones_like(owner, dtype=bool)
    new[:, 1:] = owner[:, 1:] != owner[:, :-1]
    pieces = (np.cumsum(new, axis=1) - 1).astype(np.int32)
    pieces[owner < 0] = -1
    return pieces


def make_batch(tokens: np.ndarray, pieces: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows [B, S+1] of tokens and piece indices -> the Batch contract (inputs and shifted labels [B, S])."""
    return as_tensors(make_batch_arrays(tokens, pieces))


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def make_batch_arrays(tokens: np.ndarray, pieces: np.ndarray) -> dict[str, np.ndarray]:
    """make_batch in numpy: what loader workers send (a pipe moves arrays cheaper than shared tensors)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    doc_in, doc_next = pieces[:, :-1], pieces[:, 1:]
    labels = np.where((doc_in == doc_next) & (doc_in >= 0), targets, IGNORE_INDEX)
    seq = inputs.shape[1]
    idx = np.broadcast_to(np.arange(seq), inputs.shape)
    starts = np.ones(inputs.shape, dtype=bool)
    starts[:, 1:] = doc_in[:, 1:] != doc_in[:, :-1]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    positions = np.where(doc_in >= 0, idx - first, 0)
    return {
        "input_ids": np.ascontiguousarray(inputs, dtype=np.int64),
        "labels": np.ascontiguousarray(labels, dtype=np.int64),
        "position_ids": np.ascontiguousarray(positions, dtype=np.int64),
        "document_ids": np.ascontiguousarray(doc_in, dtype=np.int32),
    }
