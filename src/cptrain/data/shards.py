"""Pre-tokenized token shards: written once by `cptrain tokenize`, memory-mapped by the loader.

One folder per source under `data.cache_dir`: `tokens.bin` (uint16 or uint32 ids, documents back to
back, each ending in EOS), `offsets.npy` (int64, documents + 1), `name_hash.npy` (uint64 hash of each
document's name, so the held-out split is decided at load time exactly as in streaming mode) and
`meta.json` with the fingerprint of tokenizer + inputs (file list, sizes, modification times) and
its readable parts. A cache whose fingerprint no longer matches its inputs is refused, never silently
reused, and the message names what changed. A `datasets` source's inputs are its local data_files
(globs expanded) or dataset folder; a dataset given only by name (the Hub) has no local file to compare,
so changes to it cannot be detected: run `cptrain tokenize --force` after it changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from cptrain.data.checks import describe_changes
from cptrain.data.config import DataConfig
from cptrain.data.documents import Document, count_skip, new_stats
from cptrain.data.sources import DataError, ResolvedSource, iter_documents, listing_or_digest, resolve_source
from cptrain.data.tokenize import DocumentTokenizer

log = logging.getLogger("cptrain.data")
_warned: set[str] = set()  # sources whose unchecked remote inputs were warned about
FORMAT_VERSION = 1
MAX_META_FILES = 10_000  # meta.json lists input files one by one up to this many
MAX_NAMED_CHANGES = 5  # changed files named in a stale-shard message


def cache_dir(cfg: DataConfig, name: str) -> Path:
    """`data.cache_dir/<source name>`. A name starting with '.' (a glob such as `corpus/*.jsonl*` is named
    '.jsonl') gets a '_' in front so that its folder is not hidden; every other source keeps its folder."""
    return Path(cfg.cache_dir) / (f"_{name}" if name.startswith(".") else name)


def input_stats(src: ResolvedSource) -> dict[str, list[int] | None]:
    """Each input file's [size, modification time in ns], by name (a datasets source's by resolved
    path); entries with no local file to check (a dataset on the Hub, a URL) map to None."""
    stats: dict[str, list[int] | None] = {}
    for name, path in src.input_files():
        st = path.stat()
        stats[str(path) if src.inputs is not None else name] = [st.st_size, st.st_mtime_ns]
    stats.update({entry: None for entry in src.unchecked})
    return stats


def shard_fingerprint(src: ResolvedSource, tokenizer_fp: str) -> tuple[str, dict]:
    """(fingerprint, its parts): tokenizer + source settings + every input file's name, size and
    modification time. The parts are kept in meta.json so a stale shard can say what changed; more
    than MAX_META_FILES files are kept as a count and a digest only."""
    files = input_stats(src)
    settings = {k: v for k, v in src.identity().items() if k not in ("name", "files")}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(tokenizer_fp.encode())
    for name, stat in files.items():
        size, mtime = stat if stat is not None else ("remote", "unchecked")
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    parts = {"tokenizer": tokenizer_fp, "settings": settings, "files": listing_or_digest(files, MAX_META_FILES)}
    return f"v{FORMAT_VERSION}-{h.hexdigest()}", parts


def inputs_fingerprint(src: ResolvedSource, tokenizer_fp: str) -> str:
    """Tokenizer + source settings + every input file's name, size and modification time."""
    return shard_fingerprint(src, tokenizer_fp)[0]


def describe_stale(old: dict | None, new: dict) -> str:
    """What changed between the fingerprint parts of a token shard and of its inputs now."""
    if old is None:  # a shard written before meta.json kept the parts
        return "the tokenizer, the source settings or the input files (names, sizes, modification times)"
    out = []
    if old.get("tokenizer") != new["tokenizer"]:
        out.append("the tokenizer (its vocabulary, or data.add_bos / data.eos_token)")
    settings = describe_changes(old.get("settings", {}), new["settings"])
    if settings:
        out.append(f"the source settings ({'; '.join(settings)})")
    a, b = old.get("files"), new["files"]
    if a != b:
        if isinstance(a, dict) and isinstance(b, dict):
            changes = [f"{n} {_file_change(a.get(n), b.get(n))}" for n in a | b if a.get(n) != b.get(n)]
            more = len(changes) - MAX_NAMED_CHANGES
            shown = changes[:MAX_NAMED_CHANGES] + ([f"and {more} more"] if more > 0 else [])
            out.append(f"the input files ({'; '.join(shown)})")
        else:
            out.append(f"the input files ({_count(a)} -> {_count(b)}; names, sizes or modification times)")
    return ", ".join(out) or "the fingerprint"


def _file_change(a: list[int] | None, b: list[int] | None) -> str:
    if a is None:
        return "added"
    if b is None:
        return "removed"
    if a[0] != b[0]:
        return f"changed size ({a[0]:,} -> {b[0]:,} bytes)"
    return "modified (same size, new modification time)"


def _count(files) -> str:
    return f"{len(files)} files" if isinstance(files, dict) else str(files).split(",")[0]


def name_hash(name: str) -> int:
    """The same 64-bit hash `sources.is_eval` compares against the held-out fraction."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def write_token_shard(cfg: DataConfig, src: ResolvedSource, tokenizer: DocumentTokenizer) -> dict:
    """Tokenize every document of `src` into its cache folder (written aside, then renamed into place)."""
    final = cache_dir(cfg, src.name)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = new_stats()
    offsets, hashes, batch = [0], [], []

    def flush(out) -> None:
        for tokens in tokenizer.encode([text for _, text in batch]):
            out.write(tokens.astype(tokenizer.dtype).tobytes())
            offsets.append(offsets[-1] + len(tokens))
        hashes.extend(name_hash(name) for name, _ in batch)
        batch.clear()

    with (tmp / "tokens.bin").open("wb") as out:
        for item in iter_documents(
            src, split="all", shard=0, shards=1, eval_fraction=0.0, seed=0, shuffle=False, repeat=False
        ):
            if item.text is None:
                count_skip(stats, src.name, item)
                continue
            batch.append((item.name, item.text))
            stats["bytes"] += len(item.text.encode("utf-8"))
            if len(batch) >= 256:
                flush(out)
        flush(out)
    stats["documents"], stats["tokens"] = len(hashes), offsets[-1]
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(tmp / "name_hash.npy", np.asarray(hashes, dtype=np.uint64))
    fp, parts = shard_fingerprint(src, tokenizer.fingerprint)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "fingerprint_parts": parts,
        "source": src.identity(),
        "dtype": np.dtype(tokenizer.dtype).name,
        "stats": stats,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return meta


def read_meta(cfg: DataConfig, name: str) -> dict | None:
    path = cache_dir(cfg, name) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_cache(cfg: DataConfig, src: ResolvedSource, tokenizer: DocumentTokenizer, key: str) -> dict:
    """The cache's meta if it is fresh; a DataError saying what to run if it is missing or stale."""
    meta = read_meta(cfg, src.name)
    run = "run `cptrain tokenize RECIPE` (with the same overrides) to write it"
    if meta is None:
        raise DataError(
            f"{key}: data.mode = 'pretokenized' but {cache_dir(cfg, src.name)} holds no token shard; {run}"
        )
    fp, parts = shard_fingerprint(src, tokenizer.fingerprint)
    if meta["fingerprint"] != fp:
        raise DataError(
            f"{key}: the token shard in {cache_dir(cfg, src.name)} is stale: "
            f"{describe_stale(meta.get('fingerprint_parts'), parts)} changed since it was written; "
            f"{run} again"
        )
    if src.unchecked and src.name not in _warned:
        _warned.add(src.name)
        log.warning(
            "%s: the token shard in %s cannot be checked against %s (no local file); after the "
            "dataset changes, run `cptrain tokenize RECIPE --force`",
            key,
            cache_dir(cfg, src.name),
            ", ".join(src.unchecked),
        )
    return meta


class TokenShard:
    """A memory-mapped token shard: document i is tokens[offsets[i]:offsets[i+1]]."""

    def __init__(self, folder: Path, dtype: str):
        self.offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self.name_hash = np.load(folder / "name_hash.npy", mmap_mode="r")
        n = int(self.offsets[-1])
        self.tokens = (
            np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0)
        )

    def document(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64)

    def split(self, eval_fraction: float, split: str) -> np.ndarray:
        """Indices of the documents in `split`, by the same hash rule as streaming mode."""
        if eval_fraction <= 0:
            held = np.zeros(len(self.name_hash), dtype=bool)
        else:
            held = self.name_hash.astype(np.float64) / 2.0**64 < eval_fraction
        return np.flatnonzero(held if split == "eval" else ~held)


class ShardDocuments:
    """One source's training documents for one loader shard, read from a token shard; same API as
    TokenizedDocuments. The documents are reshuffled every epoch from the seed (cheap: just indices)."""

    def __init__(
        self,
        name: str,
        shard_file: TokenShard,
        stats: dict,
        *,
        index: int,
        shard: int,
        shards: int,
        eval_fraction: float,
        seed: int,
        shuffle: bool,
    ):
        self.name, self.data = name, shard_file
        self.train = shard_file.split(eval_fraction, "train")
        self.shard, self.shards, self.seed, self.shuffle, self.index = shard, shards, seed, shuffle, index
        self.cursor = [0, 0]  # [epoch, position in this shard's list of the epoch]
        self.stats = stats
        self._epoch, self._mine = -1, np.zeros(0, np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            order = self.train
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.index, epoch]).permutation(order)
            self._epoch, self._mine = epoch, order[self.shard :: self.shards]
            if len(self._mine) == 0:
                raise DataError(
                    f"source {self.name!r}: its token shard has {len(self.train)} training "
                    f"documents, too few for {self.shards} loader shards (ranks x workers)"
                )
        return self._mine

    def next(self) -> Document:
        epoch, pos = self.cursor
        if pos >= len(self._order(epoch)):
            epoch, pos = epoch + 1, 0
        doc = int(self._order(epoch)[pos])
        tokens = self.data.document(doc)
        self.cursor = [epoch, pos + 1]
        self.stats["documents"] += 1
        self.stats["tokens"] += len(tokens)
        self.stats["epoch"] = epoch
        return Document([epoch, pos], f"{self.name}#{doc}", tokens)

    def reread(self, before: list[int]) -> Document:
        epoch, pos = before
        doc = int(self._order(epoch)[pos])
        return Document(list(before), f"{self.name}#{doc}", self.data.document(doc))

    def state_dict(self) -> dict:
        return {"cursor": list(self.cursor), "stats": self.stats}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = [int(x) for x in state["cursor"]]
        self.stats = state["stats"]


def open_token_sources(cfg: DataConfig, tokenizer: DocumentTokenizer, seed: int):
    """(identities for the data fingerprint, open(shard, shards) -> one ShardDocuments per source)."""
    files, identities, metas = [], [], []
    for i, source in enumerate(cfg.sources):
        src = resolve_source(source, f"data.sources[{i}]")
        meta = check_cache(cfg, src, tokenizer, f"data.sources[{i}]")
        files.append(TokenShard(cache_dir(cfg, src.name), meta["dtype"]))
        identities.append({**src.identity(), "cache": meta["fingerprint"]})
        metas.append(meta)

    def open_sources(shard: int, shards: int) -> list[ShardDocuments]:
        out = []
        for i, (source, data, meta) in enumerate(zip(cfg.sources, files, metas)):
            stats = new_stats()
            if shard == 0:  # problems found while tokenizing are reported once, by shard 0
                stats["skipped"], stats["problem_files"] = (
                    meta["stats"]["skipped"],
                    meta["stats"]["problem_files"],
                )
            out.append(
                ShardDocuments(
                    source.name,
                    data,
                    stats,
                    index=i,
                    shard=shard,
                    shards=shards,
                    eval_fraction=cfg.eval_fraction,
                    seed=seed,
                    shuffle=cfg.shuffle_files,
                )
            )
        return out

    return identities, open_sources
