"""The dedup report: documents and bytes in and out of every stage, problems, examples of removals.

Runs as the last stage (one task, on whichever executor ran the rest) and reads only files the run
left behind: `work/stages.json` (written at launch), datatrove's per-task stats under `logs/`, the
damaged-input notes and the dedup intermediates. Writes `<dir>/report.md` and `<dir>/report.json`.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from cptrain.configtools import ConfigError, closest
from cptrain.data.dedup_samples import most_repeated_exact, near_pairs

# (stage that removes documents, tally before, tally after)
_STEPS = [
    ("filters", "tally read", "tally kept by filters"),
    ("exact dedup", "tally before exact dedup", "tally after exact dedup"),
    ("near dedup", "tally before near dedup", "tally after near dedup"),
]


def _total(metric) -> float:
    return metric.get("total", 0) if isinstance(metric, dict) else (metric or 0)


def merged_stats(stage_logs: Path) -> dict[str, dict[str, float]]:
    """Sum of each step's metrics over all finished tasks of a stage: {step name: {metric: total}}."""
    merged: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path in sorted((stage_logs / "stats").glob("*.json")):
        for step in json.loads(path.read_text()):
            # a step that counted nothing (every document filtered out) still shows up, with zeros
            merged.setdefault(step["name"], defaultdict(float))
            for metric, value in step.get("stats", {}).items():
                merged[step["name"]][metric] += _total(value)
    return {name: dict(metrics) for name, metrics in merged.items()}


def _find(stats: dict, suffix: str) -> dict[str, float] | None:
    for name, metrics in stats.items():
        if name.endswith(suffix):
            return metrics
    return None


def collect(root: Path) -> dict:
    """Everything the report shows, as plain data (also written as report.json)."""
    work = root / "work"
    manifest = json.loads((work / "stages.json").read_text())
    all_stats: dict[str, dict] = {}
    for stage in manifest["stages"]:
        all_stats.update(merged_stats(root / stage["logs"]))
    rows = []
    for label, before, after in _STEPS:
        a, b = _find(all_stats, before), _find(all_stats, after)
        if a is None or b is None:
            continue
        rows.append(
            {
                "stage": label,
                "docs_in": int(a.get("documents", 0)),
                "docs_out": int(b.get("documents", 0)),
                "bytes_in": int(a.get("bytes", 0)),
                "bytes_out": int(b.get("bytes", 0)),
            }
        )
    reasons = {}
    for name, metrics in all_stats.items():
        for metric, value in metrics.items():
            if metric.startswith("dropped_") and value:
                reasons[f"{name.split(': ', 1)[-1]}: {metric[len('dropped_') :]}"] = int(value)
    reader = _find(all_stats, "cptrain corpus reader") or {}
    damaged = []
    for path in sorted((work / "damaged_inputs").glob("*.json")):
        damaged.extend(json.loads(path.read_text()))
    unread = []
    for path in sorted((work / "unread_rows").glob("*.json")):
        unread.extend(json.loads(path.read_text()))
    shards = work / ("exact_deduped" if manifest["exact"] else "filtered")
    data_files = sorted(p.name for p in (root / "data").glob("*") if p.is_file())
    return {
        "run_dir": str(root),
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": manifest["settings"],
        "stages": rows,
        "filter_reasons": reasons,
        "input": {
            "files": int(reader.get("input_files", 0)),
            "damaged_files": len(damaged),
            "bad_json_lines": int(reader.get("bad_json_lines", 0)),
            "documents_without_text": int(reader.get("documents_without_text", 0)),
            "damaged": damaged,
            "unread": sorted(unread, key=lambda u: u["file"]),
        },
        "output": {"dir": str(root / "data"), "files": data_files},
        "examples_exact": most_repeated_exact(work) if manifest["exact"] else [],
        "examples_near": near_pairs(work, shards, manifest["settings"]["ngram"])
        if manifest["minhash"]
        else [],
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def render(info: dict) -> str:
    s = info["settings"]
    lines = [
        f"# Dedup report: {info['run_dir']}",
        "",
        f"Written {info['written']} by cptrain dedup (datatrove {s['datatrove']}). {s['summary']}",
        "",
        "| stage | documents in | documents out | removed | MB in | MB out |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in info["stages"]:
        removed = r["docs_in"] - r["docs_out"]
        pct = f" ({100 * removed / r['docs_in']:.2f}%)" if r["docs_in"] else ""
        lines.append(
            f"| {r['stage']} | {r['docs_in']:,} | {r['docs_out']:,} | {removed:,}{pct} | "
            f"{_mb(r['bytes_in'])} | {_mb(r['bytes_out'])} |"
        )
    if info["stages"]:
        first, last = info["stages"][0], info["stages"][-1]
        lines.append(
            f"| **total** | {first['docs_in']:,} | {last['docs_out']:,} | "
            f"{first['docs_in'] - last['docs_out']:,} | {_mb(first['bytes_in'])} | {_mb(last['bytes_out'])} |"
        )
    inp = info["input"]
    lines += [
        "",
        "## Input",
        "",
        (
            f"{inp['files']} files read; {inp['damaged_files']} damaged (rows before the damage kept, rest "
            f"skipped); {inp['bad_json_lines']} unparsable JSON lines skipped; "
            f"{inp['documents_without_text']} rows without text skipped."
        ),
    ]
    for d in inp["damaged"][:20]:
        lines.append(f"- `{d['file']}`: {d['rows_read']} rows read, then {d['error']}")
    for u in inp["unread"][:20]:
        lines.append(f"- `{u['file']}`: {unread_rows(u, s['text_field'])}")
    if len(inp["unread"]) > 20:
        lines.append(f"- ... and {len(inp['unread']) - 20} more files with unusable rows (report.json)")
    if info["filter_reasons"]:
        lines += ["", "## Filtered out, by reason", ""]
        lines += [
            f"- {reason}: {n:,}" for reason, n in sorted(info["filter_reasons"].items(), key=lambda x: -x[1])
        ]
    if info["examples_exact"]:
        lines += ["", "## Most repeated texts (exact duplicates; one copy kept)", ""]
        for e in info["examples_exact"]:
            lines.append(f"- `{e['kept_id']}` (copies removed: {e['copies_removed']}): {e['text']}")
    if info["examples_near"]:
        lines += ["", "## Near-duplicate pairs (first clusters; Jaccard of word shingles)", ""]
        for e in info["examples_near"]:
            lines += [
                (
                    f"- cluster of {e['cluster_size']}, Jaccard {e['jaccard']}: kept `{e['kept_id']}`, "
                    f"removed `{e['removed_id']}`"
                ),
                f"  - kept: {e['kept_text']}",
                f"  - removed: {e['removed_text']}",
            ]
    out = info["output"]
    lines += [
        "",
        "## Output",
        "",
        f"{len(out['files'])} shards in `{out['dir']}`. Train on them with:",
        "",
        "```toml",
        "[[data.sources]]",
        f'path = "{out["dir"]}"',
        'text_field = "text"',
        "```",
        "",
    ]
    return "\n".join(lines)


def unread_rows(note: dict, text_field: str) -> str:
    """What was wrong with one file's unusable rows, suggesting the field that likely holds the text."""
    parts = []
    if note["missing_field"]:
        fields = note["fields"]
        parts.append(
            f"{note['missing_field']:,} rows without the field {text_field!r} (their fields: "
            f"{', '.join(fields)}{closest(text_field, fields)})"
        )
    if note["without_text"] > note["missing_field"]:
        parts.append(f"{note['without_text'] - note['missing_field']:,} rows with empty or non-string text")
    if note["bad_json_lines"]:
        parts.append(f"{note['bad_json_lines']:,} unparsable JSON lines")
    return ", ".join(parts)


def nothing_read(info: dict) -> ConfigError:
    """The error for a run that read no document at all: per file, why its rows were unusable."""
    inp, text_field = info["input"], info["settings"]["text_field"]
    why = [f"{u['file']}: {unread_rows(u, text_field)}" for u in inp["unread"]]
    why += [f"{d['file']}: damaged after {d['rows_read']} rows ({d['error']})" for d in inp["damaged"]]
    if not why:
        why = ["the files hold no rows"]
    more = f"; and {len(why) - 3} more files" if len(why) > 3 else ""
    return ConfigError(
        f"input.paths: no document could be read from {inp['files']} input "
        f"file{'s' if inp['files'] != 1 else ''} "
        f"(input.text_field = {text_field!r}): {'; '.join(why[:3])}{more}. "
        f"Details: {info['run_dir']}/report.md; after fixing input.text_field or input.format, use a "
        f"new output.dir or delete {info['run_dir']}"
    )


def write_report(root: str | Path) -> dict:
    root = Path(root)
    info = collect(root)
    (root / "report.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    (root / "report.md").write_text(render(info))
    return info


class ReportStep(PipelineStep):
    """The last stage: one task that writes report.md / report.json for the run under `root`."""

    name = "📝 cptrain dedup report"
    type = "📊 - REPORT"

    def __init__(self, root: str):
        super().__init__()
        self.root = root

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        write_report(self.root)
        return iter(())
