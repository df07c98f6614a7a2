"""Pre-tokenized token shards: written once by `cptrain tokenize`, memory-mapped by the loader.

One folder per source under `data.cache_dir`: `tokens.bin` (uint16 or uint32 ids, documents back to
back, each ending in EOS), `offsets.npy` (int64, documents + 1), `name_hash.npy` (uint64 hash of each
document's name, so the held-out split is decided at load time exactly as in streaming mode) and
`meta.json` with the fingerprint of tokenizer + inputs (file list, sizes, modification times). A
cache whose fingerprint no longer matches its inputs is refused, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from cptrain.data.config import DataConfig
from cptrain.data.documents import Document, count_skip, new_stats
from cptrain.data.sources import DataError, ResolvedSource, iter_documents, resolve_source
from cptrain.data.tokenize import DocumentTokenizer

log = logging.getLogger("cptrain.data")
FORMAT_VERSION = 1


def cache_dir(cfg: DataConfig, name: str) -> Path:
    return Path(cfg.cache_dir) / name


def inputs_fingerprint(src: ResolvedSource, tokenizer_fp: str) -> str:
    """Tokenizer + source settings + every input file's name, size and modification time."""
    h = hashlib.blake2b(digest_size=16)
    h.update(
        json.dumps(
            {k: v for k, v in src.identity().items() if k not in ("name", "files")}, sort_keys=True
        ).encode()
    )
    h.update(tokenizer_fp.encode())
    for rel, _ in src.files:
        st = src.path_of(rel).stat() if rel else None
        h.update(f"{rel}\0{st.st_size if st else 0}\0{st.st_mtime_ns if st else 0}\n".encode())
    return f"v{FORMAT_VERSION}-{h.hexdigest()}"


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
            if len(batch) >= 256:
                flush(out)
        flush(out)
    stats["documents"], stats["tokens"] = len(hashes), offsets[-1]
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(tmp / "name_hash.npy", np.asarray(hashes, dtype=np.uint64))
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": inputs_fingerprint(src, tokenizer.fingerprint),
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
    if meta["fingerprint"] != inputs_fingerprint(src, tokenizer.fingerprint):
        raise DataError(
            f"{key}: the token shard in {cache_dir(cfg, src.name)} is stale: the tokenizer, the "
            f"source settings or the input files (names, sizes, modification times) changed "
            f"since it was written; {run} again"
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
