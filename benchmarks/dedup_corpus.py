"""Build the dedup benchmark corpus: real distinct text with planted duplicates at known edit rates.

Base documents are pieces (split at blank lines, 1.5-6 KB) of the Python standard library sources
and of the text files under /usr/share/doc on this machine. A piece is kept as a base document only
if its Jaccard similarity (5-word shingles of datatrove's MinHash normalization) to every base
document kept before is below --max-base-jaccard, so the "distinct" documents really are distinct.
Then, for randomly chosen base documents, the script plants:

  exact      byte-identical copies
  ws         copies with whitespace changed (re-wrapped lines, trailing spaces): exact after normalization
  near       copies with a fraction of words substituted, deleted or inserted (edit rates --edit-rates);
             each copy's true Jaccard to its source is recorded

and leaves the rest as controls (no copies). Writes <out>/corpus/*.jsonl.gz and <out>/truth.json.

    python benchmarks/dedup_corpus.py --out /tmp/dedup-bench --base-docs 8000
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import sysconfig
from collections import Counter, defaultdict
from pathlib import Path

from datatrove.utils.text import TextNormConfig, simplify_text

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
DOC_SUFFIXES = (".txt", ".md", ".rst", ".gz", "README", "NEWS", "TODO", "FAQ", "THANKS", "AUTHORS")


def shingles(text: str, n: int = 5) -> frozenset[int]:
    """Hashed word 5-grams of datatrove's MinHash normalization (what the dedup compares)."""
    words = WORD.findall(simplify_text(text, TextNormConfig()))
    return frozenset(hash(" ".join(words[i : i + n])) for i in range(max(len(words) - n + 1, 0)))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def source_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts
    ]
    for p in Path("/usr/share/doc").rglob("*"):
        if (
            p.is_file()
            and p.name != "copyright"
            and p.name.endswith(DOC_SUFFIXES)
            and p.stat().st_size > 1500
        ):
            files.append(p)
    return sorted(files)


def read_text(path: Path) -> str:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return ""


MAX_PIECE = 12000


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; an over-long one is cut at lines, over-long lines are dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        if len(para) <= MAX_PIECE:
            out.append(para)
        else:
            out.extend(line for line in para.split("\n") if len(line) <= MAX_PIECE)
    return out


def pieces(text: str, rng: random.Random) -> list[str]:
    """Consecutive paragraphs grouped into pieces of 1.5-6 KB (at most 12 KB)."""
    out, current, target = [], [], rng.randint(1500, 6000)
    for para in paragraphs(text):
        current.append(para)
        if sum(map(len, current)) >= target:
            out.append("\n\n".join(current)[:MAX_PIECE])
            current, target = [], rng.randint(1500, 6000)
    return out


def distinct_base(candidates: list[str], limit: int, max_jaccard: float) -> list[tuple[str, frozenset]]:
    """Greedy: keep a candidate if its Jaccard to every kept one is below max_jaccard."""
    index: dict[int, list[int]] = defaultdict(list)
    kept: list[tuple[str, frozenset]] = []
    for text in candidates:
        sh = shingles(text)
        if len(sh) < 50:
            continue
        overlap = Counter(j for s in sh for j in index.get(s, ()))
        if any(n / (len(sh) + len(kept[j][1]) - n) >= max_jaccard for j, n in overlap.items()):
            continue
        for s in sh:
            index[s].append(len(kept))
        kept.append((text, sh))
        if len(kept) >= limit:
            break
    return kept


def edit_words(text: str, rate: float, vocab: list[str], rng: random.Random) -> str:
    """Substitute, delete or insert words at `rate` per word (whitespace between words kept)."""
    tokens = re.split(r"(\s+)", text)
    out = []
    for tok in tokens:
        if tok and not tok.isspace() and rng.random() < rate:
            op = rng.choice(("sub", "del", "ins"))
            if op == "sub":
                tok = rng.choice(vocab)
            elif op == "del":
                tok = ""
            else:
                tok = f"{tok} {rng.choice(vocab)}"
        out.append(tok)
    return "".join(out)


def rewrap(text: str, rng: random.Random) -> str:
    """Same words, other whitespace: joined lines, doubled spaces, trailing blanks."""
    lines = text.split("\n")
    out = [line + (" " * rng.randint(1, 3) if rng.random() < 0.3 else "") for line in lines]
    return "\n".join(out).replace(". ", ".  ") + "\n\n"


def build(
    out: Path, base_docs: int, edit_rates: list[float], max_base_jaccard: float, shards: int, seed: int
) -> dict:
    rng = random.Random(seed)
    files = source_files()
    rng.shuffle(files)
    candidates = [p for f in files for p in pieces(read_text(f), rng)]
    rng.shuffle(candidates)
    base = distinct_base(candidates, base_docs, max_base_jaccard)
    vocab = sorted({w for text, _ in base[:500] for w in text.split() if w.isalpha()})
    rows, truth = [], {}
    for i, (text, sh) in enumerate(base):
        src = f"base{i:06d}"
        rows.append({"id": src, "text": text})
        roll = rng.random()
        if roll < 0.10:
            for k in range(rng.randint(1, 3)):
                kind = "exact" if k % 2 == 0 else "ws"
                copy = text if kind == "exact" else rewrap(text, rng)
                rows.append({"id": f"{src}-{kind}{k}", "text": copy})
                truth[f"{src}-{kind}{k}"] = {"role": kind, "source": src}
            truth[src] = {"role": "source"}
        elif roll < 0.30:
            for k in range(rng.randint(1, 2)):
                rate = rng.choice(edit_rates)
                copy = edit_words(text, rate, vocab, rng)
                cid = f"{src}-near{k}"
                rows.append({"id": cid, "text": copy})
                truth[cid] = {
                    "role": "near",
                    "source": src,
                    "edit_rate": rate,
                    "jaccard": round(jaccard(sh, shingles(copy)), 4),
                }
            truth[src] = {"role": "source"}
        else:
            truth[src] = {"role": "control"}
    rng.shuffle(rows)
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        with gzip.open(corpus / f"part-{k:03d}.jsonl.gz", "wt", encoding="utf-8") as f:
            for row in rows[k::shards]:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    roles = Counter(t["role"] for t in truth.values())
    summary = {
        "documents": len(rows),
        "base_documents": len(base),
        "roles": dict(roles),
        "source_files": len(files),
        "candidate_pieces": len(candidates),
        "seed": seed,
        "max_base_jaccard": max_base_jaccard,
        "edit_rates": edit_rates,
        "bytes": sum(len(r["text"].encode()) for r in rows),
    }
    (out / "truth.json").write_text(json.dumps({"summary": summary, "documents": truth}))
    return summary


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for corpus/ and truth.json")
    p.add_argument("--base-docs", type=int, default=8000, help="distinct base documents")
    p.add_argument(
        "--edit-rates", default="0.005,0.01,0.02,0.03,0.05,0.1,0.2", help="word edit rates of near copies"
    )
    p.add_argument(
        "--max-base-jaccard", type=float, default=0.5, help="base documents are pairwise below this"
    )
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    summary = build(
        Path(a.out),
        a.base_docs,
        [float(x) for x in a.edit_rates.split(",")],
        a.max_base_jaccard,
        a.shards,
        a.seed,
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
