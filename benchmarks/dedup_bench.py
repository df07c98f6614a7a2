"""How well and how fast does `cptrain dedup` remove planted duplicates? (corpus: dedup_corpus.py)

For each LSH layout given (--layouts 20x8,14x8,...) runs the full dedup (exact + MinHash, no quality
filters) on the corpus with the local executor and scores the kept documents against truth.json:

  exact recall   planted byte-identical copies caught (the copy or its source removed, not both kept)
  ws recall      planted whitespace-variant copies caught (exact dedup normalizes whitespace)
  near recall    planted edited copies with true Jaccard >= 0.8 caught (copy and source not both kept),
                 counted on sources with a single planted copy, where that means the pair was found;
                 also per Jaccard bin, next to the LSH formula's expectation
  false removals distinct base documents (Jaccard < 0.5 to every other one) whose text is gone: a control
                 (no planted copy) removed, or a source removed together with all its copies
  throughput     documents / wall second / worker, and (with --workers 1) documents / CPU second

    python benchmarks/dedup_bench.py --corpus /tmp/dedup-bench --out /tmp/dedup-bench/runs \\
        --layouts 20x8,14x8 --workers 2 --json benchmarks/results/DATE-cpu-dedup.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

from cptrain.data.dedup_config import load_dedup_config
from cptrain.data.dedup_lsh import pair_probability
from cptrain.data.dedup_run import prepare, run_local

BINS = [(0.0, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)]


def kept_ids(data_dir: Path) -> set[str]:
    ids = set()
    for path in sorted(data_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            ids.update(json.loads(line)["id"] for line in f)
    return ids


def score(truth: dict, kept: set[str], bands: int, rows: int) -> dict:
    """Recall and false removals of one run; see the module docstring for the definitions."""
    docs = truth["documents"]
    copies: dict[str, list[str]] = {}
    for i, t in docs.items():
        if "source" in t:
            copies.setdefault(t["source"], []).append(i)

    def caught(copy_id: str) -> bool:
        return not (copy_id in kept and docs[copy_id]["source"] in kept)

    def recall(ids: list[str]) -> dict:
        n = sum(caught(i) for i in ids)
        return {"planted": len(ids), "caught": n, "recall": round(n / len(ids), 4) if ids else None}

    near = [i for i, t in docs.items() if t["role"] == "near"]
    # a source with one planted copy: exactly one of the two survives only if that pair was found, so
    # these give the per-pair detection rate; with two copies the source may go because of the other one
    single = [i for i in near if len(copies[docs[i]["source"]]) == 1]
    by_bin = {}
    for lo, hi in BINS:
        ids = [i for i in single if lo <= docs[i]["jaccard"] < hi]
        expected = [pair_probability(docs[i]["jaccard"], bands, rows) for i in ids]
        by_bin[f"{lo:.1f}-{min(hi, 1.0):.1f}"] = recall(ids) | {
            "expected_pair_recall": round(sum(expected) / len(expected), 4) if expected else None
        }
    controls = [i for i, t in docs.items() if t["role"] == "control"]
    removed_controls = [i for i in controls if i not in kept]
    sources = [i for i, t in docs.items() if t["role"] == "source"]
    lost_groups = [s for s in sources if s not in kept and not any(c in kept for c in copies[s])]
    return {
        "exact": recall([i for i, t in docs.items() if t["role"] == "exact"]),
        "ws": recall([i for i, t in docs.items() if t["role"] == "ws"]),
        "near_jaccard_ge_0.8": recall([i for i in single if docs[i]["jaccard"] >= 0.8]),
        "near_jaccard_ge_0.8_all_copies": recall([i for i in near if docs[i]["jaccard"] >= 0.8]),
        "near_by_jaccard": by_bin,
        # distinct content lost: a control removed, or a source removed together with all its copies
        # (its cluster kept some unrelated document instead)
        "false_removals": {
            "base_documents": len(controls) + len(sources),
            "controls_removed": len(removed_controls),
            "groups_lost": len(lost_groups),
            "rate": round((len(removed_controls) + len(lost_groups)) / (len(controls) + len(sources)), 5),
            "examples": (removed_controls + lost_groups)[:10],
        },
        "documents_kept": len(kept),
    }


def signature_cost(corpus: Path, bands: int, rows: int, docs: int = 1000, repeats: int = 3) -> dict:
    """CPU ms per document of MinHash shingling + signing alone (best of `repeats`: robust to a busy box)."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    from cptrain.data.dedup_tokenizer import FastWordTokenizer

    texts = []
    with gzip.open(min((corpus / "corpus").glob("*.jsonl.gz")), "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == docs:
                break
    step = MinhashDedupSignature(
        str(corpus / "unused"),
        MinhashConfig(num_buckets=bands, hashes_per_bucket=rows),
        language=FastWordTokenizer(),
    )
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for text in texts:
            step.get_signature(step.get_shingles(text))
        best = min(best, time.process_time() - start)
    return {"docs": len(texts), "cpu_ms_per_doc": round(1000 * best / len(texts), 3)}


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_layout(corpus: Path, out: Path, bands: int, rows: int, workers: int, tasks: int) -> dict:
    run_dir = out / f"{bands}x{rows}-w{workers}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_dedup_config(
        None,
        [
            f'input.paths=["{corpus / "corpus"}"]',
            f'output.dir="{run_dir}"',
            f"minhash.bands={bands}",
            f"minhash.rows={rows}",
            f"executor.workers={workers}",
            f"executor.tasks={tasks}",
        ],
    )
    load_before, cpu_before, start = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    layout, stages = prepare(cfg)
    stage_seconds = run_local(cfg, layout, stages)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_before
    report = json.loads((run_dir / "report.json").read_text())
    docs_in = report["stages"][0]["docs_in"]
    timing = {
        "wall_s": round(wall, 1),
        "docs_per_s": round(docs_in / wall, 1),
        "docs_per_s_per_worker": round(docs_in / wall / workers, 1),
        "stage_wall_s": {s.name: round(t, 1) for s, t in zip(stages, stage_seconds, strict=True)},
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    if workers == 1:  # everything ran in this process: its CPU time is the whole cost
        timing |= {"cpu_s": round(cpu, 1), "docs_per_cpu_s": round(docs_in / cpu, 1)}
    timing["signature_only"] = signature_cost(corpus, bands, rows)
    truth = json.loads((corpus / "truth.json").read_text())
    return {
        "layout": f"{bands}x{rows}",
        "workers": workers,
        "tasks": tasks,
        "documents_in": docs_in,
        "report_stages": report["stages"],
        "timing": timing,
        **score(truth, kept_ids(run_dir / "data"), bands, rows),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="output folder of dedup_corpus.py")
    p.add_argument("--out", required=True, help="folder for the dedup runs")
    p.add_argument("--layouts", default="20x8", help="comma-separated BANDSxROWS")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--tasks", type=int, default=0, help="shards (0: = workers)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    corpus = Path(a.corpus)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "versions": {
            "python": platform.python_version(),
            "datatrove": version("datatrove"),
            "cptrain": version("cptrain"),
            "numpy": version("numpy"),
            "xxhash": version("xxhash"),
        },
        "command": "python " + " ".join([sys.argv[0], *argv]),
        "corpus": json.loads((corpus / "truth.json").read_text())["summary"],
        "runs": [],
    }
    for layout in a.layouts.split(","):
        bands, rows = (int(x) for x in layout.lower().split("x"))
        run = run_layout(corpus, Path(a.out), bands, rows, a.workers, a.tasks or a.workers)
        results["runs"].append(run)
        print(
            json.dumps(
                {
                    k: run[k]
                    for k in ("layout", "exact", "ws", "near_jaccard_ge_0.8", "false_removals", "timing")
                },
                indent=1,
            ),
            flush=True,
        )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
