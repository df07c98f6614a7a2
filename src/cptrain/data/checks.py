"""Checks that run before training: every source resolves and has usable text; the data fingerprint."""

from __future__ import annotations

import hashlib
import json
import re
from itertools import islice
from pathlib import Path

from cptrain.configtools import closest
from cptrain.data.config import DataConfig
from cptrain.data.readers import read_rows, row_text
from cptrain.data.sources import DataError, ResolvedSource, resolve_source, source_dataset_rows

PREFLIGHT_ROWS = 2000  # rows read per source, at most, to find one usable document


def resolve_sources(cfg: DataConfig) -> list[ResolvedSource]:
    """Resolve and preflight every source; raises DataError naming the source key and what to do."""
    if not cfg.sources:
        raise DataError(
            "data.sources is empty; add at least one [[data.sources]] table with a path "
            "(for a quick start: path = 'builtin:python-stdlib')"
        )
    resolved = []
    for i, source in enumerate(cfg.sources):
        refuse_dedup_run_folder(source.path, f"data.sources[{i}].path")
        src = resolve_source(source, f"data.sources[{i}]")
        if source.format != "datasets" or checked_up_front(src):
            preflight(src, f"data.sources[{i}]")
        resolved.append(src)
    return resolved


def refuse_dedup_run_folder(path: str, key: str) -> None:
    """A `cptrain dedup` output.dir holds, besides the kept shards in data/, the removed documents, datatrove's
    logs and the MinHash signatures: read as a folder it would train on all of them."""
    root = Path(path)
    if (root / "work" / "stages.json").is_file() and (root / "data").is_dir():
        raise DataError(
            f"{key} = {path!r} is a `cptrain dedup` run folder: besides the kept documents it holds the "
            f"removed ones, logs and signatures; train on its shards: path = '{root / 'data'}'",
            key,
        )


def checked_up_front(src: ResolvedSource) -> bool:
    """A datasets source whose first rows can be read without reading it all: local files only (one given by
    name or URL would be downloaded) and a plain split (a split expression such as 'train[:10%]' cannot be
    streamed, and without streaming `datasets` prepares the whole dataset first). The others are checked at
    their first batch."""
    return bool(src.inputs) and not src.unchecked and re.fullmatch(r"\w+(\.\w+)*", src.cfg.split) is not None


def _rows(src: ResolvedSource, rel: str, fmt: str):
    if fmt == "datasets":  # streamed whatever the source says: its first rows, not an Arrow cache of all of it
        return source_dataset_rows(src, streaming=True)
    return read_rows(src.path_of(rel), fmt, src.cfg.text_field, src.cfg.separator)


def preflight(src: ResolvedSource, key: str) -> None:
    """Read rows until one usable document turns up; a text field missing everywhere is fatal now."""
    c = src.cfg
    reasons: dict[str, int] = {}
    keys_seen: set[str] = set()
    rows = 0
    for rel, fmt in src.files:
        for r in islice(_rows(src, rel, fmt), PREFLIGHT_ROWS - rows):
            if r.problem is not None:
                reasons[r.problem.split(":")[0]] = reasons.get(r.problem.split(":")[0], 0) + 1
                continue
            rows += 1
            text, reason = row_text(r.data, fmt, c.text_field)
            if text is not None:
                return
            reasons[reason] = reasons.get(reason, 0) + 1
            if reason == "missing_field":
                keys_seen.update(r.fields or _keys(r.data, fmt))
        if rows >= PREFLIGHT_ROWS:
            break
    files = len(src.input_files())  # a datasets source's local files, not its one stream
    scope = f"the first {rows} rows" if rows >= PREFLIGHT_ROWS else f"all {rows} rows of {files} files"
    why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "nothing to read"
    hint = ""
    if reasons.get("missing_field") and keys_seen:
        hint = (
            f"; the rows have the fields {sorted(keys_seen)}{closest(c.text_field, keys_seen)} "
            f"(set {key}.text_field)"
        )
    where, what = c.path, "document"
    if c.format == "datasets":
        # its path is often only a builder ('json'): name the source and the column too
        where = f"source {c.name!r}, format 'datasets', path {c.path!r}"
        what = f"text in column {c.text_field!r}"
    raise DataError(f"{key} ({where}): no usable {what} in {scope} ({why}){hint}")


def _keys(data, fmt: str) -> list[str]:
    """The field names of a jsonl row (to suggest a text_field); none for other formats."""
    if fmt.startswith("jsonl") and isinstance(data, bytes):
        try:
            obj = json.loads(data)
        except ValueError:
            return []
        return list(obj) if isinstance(obj, dict) else []
    return []


def fingerprint_parts(
    cfg: DataConfig, sources: list[dict], tokenizer_fingerprint: str, seq_len: int, micro_batch_size: int
) -> dict:
    """Everything that decides the token stream, in readable form so a mismatch can say what changed.

    `sources`: each source's identity (ResolvedSource.identity(), plus the cache fingerprint when
    reading token shards)."""
    return {
        "sources": sources,
        "weights": [cfg.stage_weights(i) for i in range(1 + len(cfg.stages))],
        "stage_starts": [s.start_step for s in cfg.stages],
        "eval_fraction": cfg.eval_fraction,
        "seed": cfg.seed,
        "shuffle_files": cfg.shuffle_files,
        "mode": cfg.mode,
        "tokenizer": tokenizer_fingerprint,
        "seq_len": seq_len,
        "micro_batch_size": micro_batch_size,
    }


def fingerprint(parts: dict) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=12).hexdigest()


def describe_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprint part dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_changes(a, b, f"{name}.")
        elif (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(isinstance(x, dict) for x in a + b)
        ):
            for i, (x, y) in enumerate(zip(a, b)):
                out += describe_changes(x, y, f"{name}[{i}].")
        else:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
