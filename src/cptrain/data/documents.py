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
OTHER_FILES = "(other files)"  # the report's entry for problems in files past MAX_FILES_LISTED
MAX_FILES_LOGGED = 5  # files logged one by one per kind of problem; a source of many small files
# (every empty __init__.py of the stdlib) would otherwise log a line per file
BATCH_CHARS = 1 << 17  # stop filling a tokenizer batch here too: long documents need no batching to be fast,
# and read-ahead is work redone after a resume


@dataclass
class Document:
    before: Cursor  # where this document starts in its source (to read it again after a resume)
    name: str
    tokens: np.ndarray  # int64 ids, EOS last


def new_stats() -> dict:
    return {"documents": 0, "tokens": 0, "bytes": 0, "skipped": {}, "problem_files": {}, "epoch": 0}


def count_skip(stats: dict, source: str, item: Item, *, log_first: bool = False) -> None:
    """Count one skipped row or file.

    With `log_first` (streaming training, whose summary is the data report at the end) the first
    problem of each kind in a file is logged, for the first MAX_FILES_LOGGED files with that kind.
    `cptrain tokenize` logs nothing here and prints `skip_summary` per source instead."""
    reason = item.reason.split(":")[0]
    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
    files = stats["problem_files"]
    entry = files.get(item.name)
    if entry is None and len(files) >= MAX_FILES_LISTED:
        files.setdefault(OTHER_FILES, {}).setdefault(reason, {"count": 0, "first_line": 0})["count"] += 1
        return
    entry = files.setdefault(item.name, {})
    if reason not in entry:
        entry[reason] = {"count": 0, "first_line": item.line}
        if log_first:
            _log_first(source, item, reason, sum(reason in kinds for kinds in files.values()))
    entry[reason]["count"] += 1


def _log_first(source: str, item: Item, reason: str, nth_file: int) -> None:
    if nth_file > MAX_FILES_LOGGED:
        return
    further = (
        f"further files skipped for {reason} are counted in the data report, not logged"
        if nth_file == MAX_FILES_LOGGED
        else f"further {reason} rows in this file are counted in the data report"
    )
    log.warning(
        "data source %r: %s line %d: skipped (%s); %s", source, item.name, item.line, item.reason, further
    )


def skip_summary(stats: dict, examples: int = 3) -> list[str]:
    """One line per kind of skipped row or file: how many, and the first few files it happened in."""
    lines, files = [], stats["problem_files"]
    for reason, count in sorted(stats["skipped"].items()):
        where = [
            name if reason == "empty_file" else f"{name} line {kinds[reason]['first_line']}"
            for name, kinds in files.items()
            if reason in kinds and name != OTHER_FILES
        ]
        listed = ", ".join(where[:examples])
        if reason in files.get(OTHER_FILES, {}):  # past MAX_FILES_LISTED: only counted
            listed += " and more files"
        elif len(where) > examples:
            more = len(where) - examples
            listed += f" and {more} more file{'s' if more > 1 else ''}"
        lines.append(f"{count:,} skipped ({reason}): {listed}")
    return lines


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
                count_skip(self.stats, self.src.name, item, log_first=True)
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
