"""Sources: which files a `[[data.sources]]` entry names, and its documents for one shard and split.

A document's identity is its name: the file path relative to the source root, plus `:row` for files
that hold many documents. The held-out split is a stable hash of that name; the shard (data-parallel
rank x loader worker) owning a row is `row counter % shards`, counted over the rows of one epoch in a
file order that is shuffled per epoch from the seed. Every rank walks the same order and so each
document is used exactly once per epoch across the job.

Where a stream stands is a `Cursor` of plain ints, so a loader can save it and later continue from it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cptrain.configtools import ConfigError
from cptrain.data.config import SourceConfig
from cptrain.data.readers import Row, dataset_rows, file_format, read_rows, row_text

STDLIB = "builtin:python-stdlib"
GLOB_CHARS = set("*?[")
LAZY = object()  # a whole-file row not read yet
MAX_LISTED_FILES = 100  # a datasets source's identity names files one by one up to this many


class DataError(ConfigError):
    """Data that cannot train: nothing matched, no usable document, a stale cache, a changed config."""


@dataclass
class ResolvedSource:
    """A source config plus the sorted list of files it reads (relative to `root`) and their formats.

    A `datasets` source is read by `datasets.load_dataset` as one stream (`files` is one ("", "datasets")
    entry); the local files it reads (its data_files expanded, or a local dataset folder) are kept in
    `inputs` so its documents can still be checked for changes, and `unchecked` names what cannot be:
    a dataset given by name (the Hub, or a remote URL) has no local file to compare against.
    """

    cfg: SourceConfig
    root: Path
    files: list[tuple[str, str]]  # (relative path, reader format); one ("", "datasets") for datasets
    inputs: list[str] | None = None  # datasets: local files it reads, as found (globs expanded)
    unchecked: list[str] = field(default_factory=list)  # datasets: entries with no local file to check

    @property
    def name(self) -> str:
        return self.cfg.name

    def path_of(self, rel: str) -> Path:
        return self.root / rel

    def input_files(self) -> list[tuple[str, Path]]:
        """(name, path) of every local file the documents come from; a datasets source's are resolved."""
        if self.inputs is None:
            return [(rel, self.path_of(rel)) for rel, _ in self.files]
        return [(p, Path(p).resolve()) for p in self.inputs]

    def identity(self) -> dict:
        """What makes this source's documents what they are: config and file list with sizes.

        Sizes, not modification times: a copy of the same data on another machine resumes the same
        stream. A datasets source lists its local files one by one (there are few), so a resume after
        one changed can name it."""
        c = self.cfg
        if self.inputs is None:
            h = hashlib.blake2b(digest_size=12)
            for rel, _ in self.files:
                h.update(f"{rel}\0{self.path_of(rel).stat().st_size}\n".encode())
            files: str | dict = f"{len(self.files)} files, {h.hexdigest()}"
        else:
            files = {name: f"{_size(path)} bytes" for name, path in self.input_files()}
            files.update({entry: "not checked (no local file)" for entry in self.unchecked})
            files = listing_or_digest(files, MAX_LISTED_FILES)
        return {
            "name": c.name,
            "path": c.path,
            "format": c.format,
            "text_field": c.text_field,
            "separator": c.separator,
            "split": c.split,
            "data_files": list(c.data_files),
            "files": files,
        }


def listing_or_digest(files: dict, limit: int) -> dict | str:
    """`files` as they are, or past `limit` entries "N files, <digest>" (still changes when any entry does)."""
    if len(files) <= limit:
        return files
    h = hashlib.blake2b(json.dumps(files, sort_keys=True).encode(), digest_size=12)
    return f"{len(files)} files, {h.hexdigest()}"


def _size(path: Path) -> int:
    """A file's size; -1 for one that vanished since the source was resolved (it differs all the same)."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def dataset_inputs(cfg: SourceConfig) -> tuple[list[str], list[str]]:
    """(local files, entries without one) that a `datasets` source reads.

    data_files entries are expanded as `datasets` does: relative to the dataset folder when `path` is
    one, else to the working directory; globs are expanded and folders listed. An entry with a URL or
    that matches nothing here (a file inside a Hub dataset) cannot be checked, and neither can a
    dataset given by name without local data_files: changes to it on the Hub go unnoticed.
    """
    path = os.path.expanduser(cfg.path)
    base = path if os.path.isdir(path) else "."
    found: list[str] = []
    unchecked: list[str] = []
    for entry in cfg.data_files:
        if "://" in entry:
            unchecked.append(entry)
            continue
        full = os.path.join(base, os.path.expanduser(entry))
        if GLOB_CHARS & set(entry):
            matches = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        elif os.path.isdir(full):
            matches = [os.path.join(full, r) for r in _walk(Path(full))]
        else:
            matches = [full] if os.path.isfile(full) else []
        found += [os.path.normpath(m) for m in matches]
        if not matches:
            unchecked.append(entry)
    if not cfg.data_files:
        if os.path.isdir(path):
            found = [os.path.normpath(os.path.join(path, r)) for r in _walk(Path(path))]
        elif os.path.isfile(path):
            found = [os.path.normpath(path)]
        else:
            unchecked.append(f"dataset {cfg.path}")
    return sorted(dict.fromkeys(found)), unchecked


def stdlib_files() -> tuple[Path, list[str]]:
    """The built-in corpus: (stdlib root, sorted relative paths of its .py files, site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return root, [r for r in _walk(root) if r.endswith(".py") and "site-packages" not in Path(r).parts]


def resolve_source(cfg: SourceConfig, key: str) -> ResolvedSource:
    """List the files of one source; a path matching nothing is a DataError naming `key`."""
    if cfg.format == "datasets":
        inputs, unchecked = dataset_inputs(cfg)
        return ResolvedSource(cfg, Path("."), [("", "datasets")], inputs, unchecked)
    if cfg.path == STDLIB:
        root, rels = stdlib_files()
        return ResolvedSource(cfg, root, [(r, "txt") for r in rels])
    path = os.path.expanduser(cfg.path)
    if GLOB_CHARS & set(path):
        root = Path(_glob_root(path))
        rels = sorted(os.path.relpath(p, root) for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(path):
        root, rels = Path(path), _walk(Path(path))
    elif os.path.isfile(path):
        root, rels = Path(path).parent, [Path(path).name]
    else:
        raise DataError(f"{key}.path = {cfg.path!r}: no such file or folder")
    if not rels:
        raise DataError(
            f"{key}.path = {cfg.path!r} matches no file; check the path or glob "
            f"(globs use ** for sub-folders)"
        )
    return ResolvedSource(cfg, root, [(r, file_format(r, cfg.format)) for r in rels])


def _glob_root(pattern: str) -> str:
    parts = []
    for part in Path(pattern).parts:
        if GLOB_CHARS & set(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def _walk(root: Path) -> list[str]:
    """Every non-hidden regular file under `root`, as sorted relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames:
            if not f.startswith("."):
                out.append(f if rel_dir == "." else os.path.join(rel_dir, f))
    return sorted(out)


def is_eval(name: str, eval_fraction: float) -> bool:
    """Stable held-out split: the same document name lands on the same side on every machine."""
    if eval_fraction <= 0:
        return False
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction


# A cursor is [epoch, file position in the epoch's order, row in that file, byte offset (-1: by row),
# rows counted in this epoch before it]; plain ints so it survives any checkpoint format.
Cursor = list[int]
START: Cursor = [0, 0, 0, -1, 0]


@dataclass(slots=True)
class Item:
    """One step of a document stream: a usable document (`text`) or a skipped row / file (`reason`)."""

    before: Cursor  # where reading this item starts
    after: Cursor  # where the stream continues after it
    name: str  # document name, or the file for a skip
    text: str | None = None
    reason: str | None = None
    line: int = 0  # 1-based line of a skipped row


def file_order(src: ResolvedSource, seed: int, epoch: int, shuffle: bool) -> list[int]:
    order = list(range(len(src.files)))
    if shuffle:
        random.Random(f"{seed}/{src.name}/{epoch}").shuffle(order)
    return order


def source_dataset_rows(src: ResolvedSource, streaming: bool, skip: int = 0):
    """The rows of a `datasets` source from row `skip` on, as `datasets.load_dataset` gives them."""
    c = src.cfg
    return dataset_rows(c.path, c.dataset_config, c.split, c.data_files, streaming, c.text_field, skip,
                        source=src.name, local_files=src.inputs)


def iter_documents(
    src: ResolvedSource,
    *,
    split: str,
    shard: int,
    shards: int,
    eval_fraction: float,
    seed: int,
    shuffle: bool,
    cursor: Cursor = START,
    repeat: bool = True,
) -> Iterator[Item]:
    """Documents of `split` ('train' | 'eval' | 'all') owned by `shard`, from `cursor`, forever if `repeat`.

    Skipped rows are yielded as Items with a reason (first epoch only, so each bad row counts once).
    A whole epoch without a single document is a DataError: the source cannot feed this shard.
    """
    epoch, pos, row, offset, counter = cursor
    c = src.cfg
    while True:
        order = file_order(src, seed, epoch, shuffle)
        found = pos > 0 or row > 0  # resumed mid-epoch: an earlier part of it may have held documents
        reasons: dict[str, int] = {}
        while pos < len(order):
            ordinal = order[pos]
            rel, fmt = src.files[ordinal]
            whole = fmt == "txt" and not c.separator  # one document per file: read only if ours
            if fmt == "datasets":
                rows = source_dataset_rows(src, c.streaming, row)
            elif whole:
                rows = iter([Row(0, 1, -1, LAZY)] if row == 0 else [])
            else:
                rows = read_rows(src.path_of(rel), fmt, c.text_field, c.separator, row, offset)
            for r in rows:
                if r.problem is not None:
                    if epoch == 0 and ordinal % shards == shard and split != "eval":
                        yield Item(
                            [epoch, pos, r.row, r.offset, counter],
                            [epoch, pos + 1, 0, -1, counter],
                            rel,
                            reason=r.problem,
                            line=r.line,
                        )
                    continue
                if counter % shards != shard:
                    counter += 1
                    continue
                before = [epoch, pos, r.row, r.offset, counter]
                counter += 1
                after = [epoch, pos, r.row + 1, r.end, counter]
                name = rel if whole else f"{rel or c.path}:{r.row}"
                if split != "all" and is_eval(name, eval_fraction) != (split == "eval"):
                    continue
                if whole:
                    r = next(read_rows(src.path_of(rel), fmt))
                text, reason = row_text(r.data, fmt, c.text_field) if r.problem is None else (None, r.problem)
                if text is not None:
                    found = True
                    yield Item(before, after, name, text=text)
                else:
                    reason = reason.split(":")[0]
                    reasons[reason] = reasons.get(reason, 0) + 1
                    if epoch == 0:
                        where = r.file or rel or c.path  # a datasets source read file by file names its file
                        yield Item(before, after, where, reason=reason, line=_bad_line(r, reason))
            pos, row, offset = pos + 1, 0, -1
        if not repeat:
            return
        if not found:
            why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "no rows"
            raise DataError(
                f"source {src.name!r} ({c.path}) has no usable {split} document for shard "
                f"{shard} of {shards} in a whole epoch ({why}); check text_field "
                f"{c.text_field!r}, or use fewer ranks x workers than it has documents"
            )
        epoch, pos, row, offset, counter = epoch + 1, 0, 0, -1, 0


def _bad_line(r, reason: str) -> int:
    """The line of an invalid UTF-8 byte in a whole-file text row; else the row's own line."""
    if reason == "invalid_utf8" and isinstance(r.data, bytes) and r.line == 1 and b"\n" in r.data:
        try:
            r.data.decode("utf-8")
        except UnicodeDecodeError as e:
            return r.data.count(b"\n", 0, e.start) + 1
    return r.line
