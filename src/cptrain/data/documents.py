"""One source's training documents for one shard, tokenized in batches, with accounting and a cursor.

`TokenizedDocuments.next()` hands out one document's tokens at a time. Its state is the cursor just
after the last document handed out, so documents read ahead into the tokenizer batch are simply read
again after a resume. Skipped rows are counted when the reader passes them on the way to the next
document, which keeps the counts exact across resumes too.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from cptrain.data.sources import START, Cursor, Item, ResolvedSource, iter_documents
from cptrain.data.tokenize import DocumentTokenizer

log = logging.getLogger("cptrain.data")
MAX_FILES_LISTED = 100  # files with problems named one by one in the report; the rest only counted
BATCH_CHARS = 1 << 17  # stop filling a tokenizer batch here too: long documents need no batching to be fast,
# and read-ahead is work redone after a resume


@dataclass
class Document:
    before: Cursor  # where this document starts in its source (to read it again after a resume)
    name: str
    tokens: np.ndarray  # int64 ids, EOS last


def new_stats() -> dict:
    return {"documents": 0, "tokens": 0, "bytes": 0, "skipped": {}, "problem_files": {}, "epoch": 0}


def count_skip(stats: dict, source: str, item: Item) -> None:
    """Count one skipped row or file; log the first problem of each kind in each file."""
    reason = item.reason.split(":")[0]
    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
    files = stats["problem_files"]
    entry = files.get(item.name)
    if entry is None and len(files) >= MAX_FILES_LISTED:
        files.setdefault("(other files)", {}).setdefault(reason, {"count": 0, "first_line": 0})["count"] += 1
        return
    entry = files.setdefault(item.name, {})
    if reason not in entry:
        entry[reason] = {"count": 0, "first_line": item.line}
        log.warning(
            "data source %r: %s line %d: skipped (%s); further %s rows in this file are counted "
            "in the data report",
            source,
            item.name,
            item.line,
            item.reason,
            reason,
        )
    entry[reason]["count"] += 1


class TokenizedDocuments:
    def __init__(
        self,
        src: ResolvedSource,
        tokenizer: DocumentTokenizer,
        *,
        shard: int,
        shards: int,
        eval_fraction: float,
        seed: int,
        shuffle: bool,
        batch_size: int,
    ):
        self.src, self.tokenizer, self.batch_size = src, tokenizer, batch_size
        self._kw = {
            "split": "train",
            "shard": shard,
            "shards": shards,
            "eval_fraction": eval_fraction,
            "seed": seed,
            "shuffle": shuffle,
        }
        self.cursor: Cursor = list(START)
        self.stats = new_stats()
        self._restart()

    def _restart(self) -> None:
        self._items = iter_documents(self.src, cursor=self.cursor, **self._kw)
        self._ready: deque = deque()

    def _fill(self) -> None:
        batch: list[Item] = []
        docs = chars = 0
        while docs < self.batch_size and chars < BATCH_CHARS:
            item = next(self._items)
            batch.append(item)
            if item.text is not None:
                docs += 1
                chars += len(item.text)
        texts = [it.text for it in batch if it.text is not None]
        tokens = iter(self.tokenizer.encode(texts)) if texts else iter(())
        for it in batch:
            self._ready.append((it, next(tokens) if it.text is not None else None))
            it.text = len(it.text.encode("utf-8")) if it.text is not None else None  # keep only the size

    def next(self) -> Document:
        while True:
            if not self._ready:
                self._fill()
            item, tokens = self._ready.popleft()
            if tokens is None:
                count_skip(self.stats, self.src.name, item)
                continue
            self.cursor = item.after
            self.stats["documents"] += 1
            self.stats["tokens"] += len(tokens)
            self.stats["bytes"] += item.text
            self.stats["epoch"] = item.after[0]
            return Document(item.before, item.name, tokens)

    def reread(self, before: Cursor) -> Document:
        """The document that starts at `before` (as handed out earlier), tokenized again."""
        item = next(
            it for it in iter_documents(self.src, cursor=list(before), **self._kw) if it.text is not None
        )
        return Document(item.before, item.name, self.tokenizer.encode([item.text])[0])

    def state_dict(self) -> dict:
        return {"cursor": list(self.cursor), "stats": self.stats}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = [int(x) for x in state["cursor"]]
        self.stats = state["stats"]
        self._restart()
