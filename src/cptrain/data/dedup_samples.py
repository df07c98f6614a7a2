"""Examples for the report: the most repeated exact texts and a few near-duplicate pairs.

Both are read back from datatrove's intermediate files, whose layout is fixed by datatrove 0.10:
exact  `work/exact_dups/<finder>/<rank>.c4_counts`   (doc index, copies removed) per kept document
near   `work/minhash_clusters/<rank>.clusters`        (doc index, cluster id) per clustered document
       `work/minhash_clusters/<rank>.remove`          doc index per removed document
where <rank> is the text-stage task and the doc index is the line in that task's intermediate shard.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

SNIPPET_CHARS = 240


def _read_lines(shard: Path, wanted: set[int]) -> dict[int, dict]:
    """The JSON rows at the given 0-based line numbers of one intermediate shard (one pass, stops early)."""
    import orjson

    rows: dict[int, dict] = {}
    if not wanted or not shard.exists():
        return rows
    last = max(wanted)
    with shard.open("rb") as f:
        for i, line in enumerate(f):
            if i in wanted:
                rows[i] = orjson.loads(line)
            if i >= last:
                break
    return rows


def _fetch(shards: Path, refs: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    by_rank: dict[int, set[int]] = defaultdict(set)
    for rank, idx in refs:
        by_rank[rank].add(idx)
    out = {}
    for rank, lines in by_rank.items():
        for idx, row in _read_lines(shards / f"{rank:05d}.jsonl", lines).items():
            out[(rank, idx)] = row
    return out


def snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS] + " …"


def most_repeated_exact(work: Path, k: int = 5) -> list[dict]:
    """The k kept documents with the most exact copies removed."""
    counted = []
    for path in sorted((work / "exact_dups").glob("*/*.c4_counts")):
        rank = int(path.name.split(".")[0])
        for doc, copies in np.fromfile(path, dtype=np.dtype([("doc", "<u4"), ("count", "<u4")])):
            counted.append((int(copies), rank, int(doc)))
    top = sorted(counted, key=lambda t: (-t[0], t[1], t[2]))[:k]
    rows = _fetch(work / "filtered", [(r, d) for _, r, d in top])
    return [
        {"copies_removed": c, "kept_id": rows[(r, d)]["id"], "text": snippet(rows[(r, d)]["text"])}
        for c, r, d in top
        if (r, d) in rows
    ]


def shingles(text: str, ngram: int) -> set[str]:
    """Word n-grams of datatrove's MinHash normalization (as the fast tokenizer splits them)."""
    from datatrove.utils.text import TextNormConfig, simplify_text

    words = re.findall(r"\w+(?:['’]\w+)*|[^\w\s]", simplify_text(text, TextNormConfig()))
    return {" ".join(words[i : i + ngram]) for i in range(max(len(words) - ngram + 1, 0))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_pairs(work: Path, shards: Path, ngram: int, k: int = 5) -> list[dict]:
    """k (kept, removed) pairs from the first clusters, with their Jaccard similarity of shingles."""
    clusters_dir = work / "minhash_clusters"
    members: dict[int, list[tuple[int, int]]] = defaultdict(list)
    removed: set[tuple[int, int]] = set()
    for path in sorted(clusters_dir.glob("*.clusters")):
        rank = int(path.stem)
        for doc, cluster in np.fromfile(path, dtype="<u4").reshape(-1, 2):
            members[int(cluster)].append((rank, int(doc)))
    for path in sorted(clusters_dir.glob("*.remove")):
        rank = int(path.stem)
        removed.update((rank, int(doc)) for doc in np.fromfile(path, dtype="<u4"))
    picks = []
    for cluster in sorted(members)[:k]:
        kept = [m for m in members[cluster] if m not in removed]
        gone = [m for m in members[cluster] if m in removed]
        if kept and gone:
            picks.append((kept[0], gone[0], len(members[cluster])))
    rows = _fetch(shards, [ref for kept, gone, _ in picks for ref in (kept, gone)])
    out = []
    for kept, gone, size in picks:
        if kept in rows and gone in rows:
            a, b = rows[kept], rows[gone]
            out.append(
                {
                    "cluster_size": size,
                    "kept_id": a["id"],
                    "removed_id": b["id"],
                    "jaccard": round(jaccard(shingles(a["text"], ngram), shingles(b["text"], ngram)), 3),
                    "kept_text": snippet(a["text"]),
                    "removed_text": snippet(b["text"]),
                }
            )
    return out
