"""A small real-text corpus for the dedup tests, with planted duplicates and filter bait.

Distinct documents are the openings of Python standard library modules (pairwise Jaccard < 0.5 on
the shingles the dedup compares); planted rows are copies of some of them. Every planted row's id
says what it is, so tests can check the output by id.
"""

from __future__ import annotations

import gzip
import json
import random
import sysconfig
from pathlib import Path

from cptrain.data.dedup_samples import jaccard, shingles

PROSE = (
    "The river runs past the old mill and the bridge. Children walk there in the morning with their dogs. "
    "In the summer the water is low and warm enough for a swim. The baker opens his shop at six and sells "
    "bread to the farmers. Most of them come from the villages on the hill. They talk about the weather "
    "and the price of grain. In winter the road is often closed by snow for a few days. Then the village "
    "is quiet and the smoke rises from every chimney."
)
LOREM = (
    "Our new theme ships with sample pages for every layout. Lorem ipsum dolor sit amet is used as the "
    "placeholder text until you add your own words. Each page can have a header image and a sidebar. You "
    "can change the colors and the fonts from the settings panel. Menus are built by dragging items into "
    "place. Support is included for one year after the purchase."
)
REPETITIVE = "\n".join(["Click here to subscribe to our newsletter today."] * 60)


def distinct_docs(n: int, chars: int = 2500) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    kept: list[tuple[str, frozenset]] = []
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:chars]
        sh = frozenset(shingles(text, 5))
        if len(text) < chars or len(sh) < 150 or any(jaccard(sh, other) >= 0.5 for _, other in kept):
            continue
        kept.append((text, sh))
        if len(kept) == n:
            break
    return [t for t, _ in kept]


def substitute_words(text: str, rate: float, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split(" ")
    return " ".join("zebra" if w and rng.random() < rate else w for w in words)


def write_corpus(root: Path, n_distinct: int = 40) -> dict:
    """Writes root/in/*.jsonl[.gz]; returns {"ids": {role: [ids]}, "pairs": {copy id: source id}}."""
    docs = distinct_docs(n_distinct + 4)
    spare, docs = docs[n_distinct:], docs[:n_distinct]
    rows = [{"id": f"doc{i}", "text": t, "origin": "stdlib"} for i, t in enumerate(docs)]
    roles: dict[str, list[str]] = {
        "distinct": [r["id"] for r in rows],
        "exact": [],
        "ws": [],
        "near": [],
        "far": [],
    }
    pairs = {}
    for i in range(4):
        rows.append({"id": f"exact{i}", "text": docs[i]})
        roles["exact"].append(f"exact{i}")
        pairs[f"exact{i}"] = f"doc{i}"
    for i in range(4, 7):
        rows.append({"id": f"ws{i}", "text": "  " + docs[i].replace("\n", "\n  ") + "\n\n"})
        roles["ws"].append(f"ws{i}")
        pairs[f"ws{i}"] = f"doc{i}"
    for i in range(7, 11):
        text = substitute_words(docs[i], 0.01, seed=i)
        assert jaccard(shingles(text, 5), shingles(docs[i], 5)) >= 0.85
        rows.append({"id": f"near{i}", "text": text})
        roles["near"].append(f"near{i}")
        pairs[f"near{i}"] = f"doc{i}"
    far = substitute_words(docs[11], 0.4, seed=11)
    assert jaccard(shingles(far, 5), shingles(docs[11], 5)) < 0.3
    rows.append({"id": "far11", "text": far})
    roles["far"].append("far11")
    rows += [
        {"id": "short", "text": "too short to keep"},
        {"id": "prose", "text": PROSE},
        {"id": "lorem", "text": LOREM},
        {"id": "repetitive", "text": REPETITIVE},
    ]
    random.Random(0).shuffle(rows)
    inp = root / "in"
    inp.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    with gzip.open(inp / "part-0.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:half])
    with (inp / "part-1.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[half:])
        f.write('{"broken json\n')
        f.write(json.dumps({"id": "notext", "body": "no text field here"}) + "\n")
    # a truncated gzip file: its first row is readable, the rest is lost
    payload = "".join(json.dumps({"id": f"trunc{i}", "text": t}) + "\n" for i, t in enumerate(spare))
    blob = gzip.compress(payload.encode())
    (inp / "part-2.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    return {"ids": roles, "pairs": pairs, "rows": len(rows)}


def output_rows(data_dir: Path) -> list[dict]:
    """All rows of a dedup output folder (jsonl.gz or parquet)."""
    rows = []
    for path in sorted(data_dir.iterdir()):
        if path.name.endswith(".jsonl.gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                rows += [json.loads(line) for line in f]
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(path).to_pylist()
    return rows
