"""Run a dedup config: resolve inputs, refuse to mix configs in one folder, run the stages.

Resuming: every stage runs through a datatrove executor whose logging folder
(`<dir>/logs/<n>-<stage>/completions/`) marks finished tasks; running the same command again skips
them, so a crash costs only the tasks that were in flight.
"""

from __future__ import annotations

import glob
import json
import os
import time
from importlib.metadata import version
from pathlib import Path

from cptrain.configtools import ConfigError, to_dict
from cptrain.data.dedup_config import DedupConfig
from cptrain.data.dedup_lsh import s_curve_table
from cptrain.data.dedup_stages import RunLayout, Stage, build_stages

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".parquet")
# keys that change results; executor.kind / workers and [slurm] may change between a crash and a resume
_RESULT_SECTIONS = ("input", "output", "filters", "exact", "minhash", "language", "word_tokenizer")


def resolve_inputs(paths: list[str], fmt: str = "auto") -> list[str]:
    """Absolute, sorted, de-duplicated input files; folders are searched for known extensions.

    With format = auto a file named outright must have a known extension too: the reader would take
    a .txt or .csv file for jsonl and skip every line of it as unparsable."""
    files: set[str] = set()
    for pattern in paths:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise ConfigError(f"input.paths: nothing matches {pattern!r}")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                found = [
                    str(f.resolve()) for f in p.rglob("*") if f.is_file() and f.name.endswith(INPUT_SUFFIXES)
                ]
                if not found:
                    raise ConfigError(f"input.paths: folder {m!r} holds no {', '.join(INPUT_SUFFIXES)} files")
                files.update(found)
            elif p.is_file():
                if fmt == "auto" and not p.name.endswith(INPUT_SUFFIXES):
                    raise ConfigError(
                        f"input.paths: {m!r} is not a format cptrain dedup reads; it reads "
                        f"{', '.join(INPUT_SUFFIXES)} files (for jsonl or parquet files with other names "
                        "set input.format; plain text can be trained on directly as a data source)"
                    )
                files.add(str(p.resolve()))
    return sorted(files)


def _check_same_config(cfg: DedupConfig, layout: RunLayout, tasks: int) -> None:
    """A folder holds one run: resuming with other settings would mix shards made two ways."""
    current = {k: v for k, v in to_dict(cfg).items() if k in _RESULT_SECTIONS} | {"tasks": tasks}
    saved_path = layout.work / "config.json"
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        if saved != current:
            changed = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
            raise ConfigError(
                f"output.dir = {str(layout.root)!r} holds a run made with other settings "
                f"(differs in: {', '.join(changed)}); use a new output.dir, or delete that folder "
                f"to start over"
            )
    layout.work.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(json.dumps(current, indent=1))


def default_tasks(cfg: DedupConfig, n_files: int) -> int:
    if cfg.executor.tasks:
        return cfg.executor.tasks
    if cfg.executor.kind == "slurm":
        return max(n_files, 1)
    return local_workers(cfg)


def local_workers(cfg: DedupConfig) -> int:
    return cfg.executor.workers or os.cpu_count() or 1


def describe(cfg: DedupConfig) -> str:
    parts = []
    if cfg.exact.enabled:
        parts.append(f"exact dedup on {cfg.exact.normalize}-normalized text")
    if cfg.minhash.enabled:
        bands, rows = cfg.minhash.bands_rows()
        parts.append(f"MinHash on {cfg.minhash.ngram}-word shingles, {s_curve_table(bands, rows)}")
    f = cfg.filters
    filters = [
        n
        for n, on in (
            ("length", f.min_chars or f.max_chars),
            ("gopher_repetition", f.gopher_repetition),
            ("gopher_quality", f.gopher_quality),
            ("c4", f.c4),
        )
        if on
    ]
    parts.append(f"filters: {', '.join(filters) if filters else 'none'}")
    return "; ".join(parts) + "."


def prepare(cfg: DedupConfig) -> tuple[RunLayout, list[Stage]]:
    """Resolve inputs, check the folder, write the input list and stage manifest; build the stages."""
    layout = RunLayout(Path(cfg.output.dir).resolve())
    files = resolve_inputs(cfg.input.paths, cfg.input.format)
    tasks = default_tasks(cfg, len(files))
    _check_same_config(cfg, layout, tasks)
    layout.input_list.write_text("".join(f"{f}\n" for f in files))
    stages = build_stages(cfg, layout, tasks)
    manifest = {
        "stages": [
            {
                "name": s.name,
                "tasks": s.tasks,
                "logs": str(layout.stage_logs(i, s.name).relative_to(layout.root)),
            }
            for i, s in enumerate(stages, 1)
        ],
        "exact": cfg.exact.enabled,
        "minhash": cfg.minhash.enabled,
        "settings": {
            "datatrove": version("datatrove"),
            "ngram": cfg.minhash.ngram,
            "bands_rows": list(cfg.minhash.bands_rows()),
            "tasks": tasks,
            "input_files": len(files),
            "text_field": cfg.input.text_field,
            "summary": describe(cfg),
        },
    }
    (layout.work / "stages.json").write_text(json.dumps(manifest, indent=1))
    return layout, stages


def run_local(cfg: DedupConfig, layout: RunLayout, stages: list[Stage]) -> list[float]:
    """Run the stages one after another on this machine; returns each stage's wall time in seconds."""
    from datatrove.executor import LocalPipelineExecutor

    workers = local_workers(cfg)
    times = []
    for i, stage in enumerate(stages, 1):
        start = time.perf_counter()
        executor = LocalPipelineExecutor(
            stage.pipeline,
            tasks=stage.tasks,
            workers=min(workers, stage.tasks),
            logging_dir=str(layout.stage_logs(i, stage.name)),
        )
        executor.run()
        incomplete = executor.get_incomplete_ranks()
        if incomplete:
            raise RuntimeError(
                f"dedup stage {stage.name!r}: tasks {incomplete[:10]} did not finish; see "
                f"{layout.stage_logs(i, stage.name)}/logs/ and run the same command again"
            )
        times.append(time.perf_counter() - start)
    return times


def run_dedup(cfg: DedupConfig) -> dict | None:
    """Run (or resume) the whole dedup; returns the report data (None when SLURM jobs were only submitted)."""
    layout, stages = prepare(cfg)
    if cfg.executor.kind == "slurm":
        from cptrain.data.dedup_slurm import run_slurm

        if not run_slurm(cfg, layout, stages):
            return None
    else:
        run_local(cfg, layout, stages)
    info = json.loads((layout.root / "report.json").read_text())
    # nothing read at all: a wrong text_field or format, not a corpus the filters emptied
    if info["stages"] and not info["stages"][0]["docs_in"]:
        from cptrain.data.dedup_report import nothing_read

        raise nothing_read(info)
    return info
