"""A crashed dedup resumes: finished stages are not redone, and the result equals an uncrashed run."""

from __future__ import annotations

import pytest

from cptrain.configtools import ConfigError
from tests.dedup.conftest import dedup_config
from tests.dedup.corpus import output_rows

pytest.importorskip("datatrove")


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_crash_in_last_stage_then_resume(corpus, default_run, tmp_path):
    from cptrain.data.dedup_run import run_dedup

    out = tmp_path / "run"
    # same settings as default_run (one worker process instead of two does not change results)
    cfg = dedup_config(
        corpus["inputs"], out, "filters.min_chars=100", "executor.tasks=2", "executor.workers=1"
    )
    out.mkdir()
    (out / "data").write_text("a file where the output folder should be: the writing stage crashes")
    with pytest.raises(Exception):  # noqa: B017 - whatever the OS raises; the point is what happens next
        run_dedup(cfg)
    logs = out / "logs"
    finished = {d.name for d in logs.iterdir() if (d / "completions").exists()}
    assert {"1-filter", "2-exact-find", "3-exact-dedup", "4-minhash-buckets", "5-minhash-cluster"} <= finished
    assert not (logs / "6-near-dedup" / "completions").exists()
    before = {
        name: _mtimes(out / "work" / name) for name in ("filtered", "exact_deduped", "minhash_clusters")
    }

    (out / "data").unlink()
    report = run_dedup(cfg)

    after = {name: _mtimes(out / "work" / name) for name in ("filtered", "exact_deduped", "minhash_clusters")}
    assert after == before  # the finished stages were skipped, not redone
    kept = sorted(r["id"] for r in output_rows(out / "data"))
    assert kept == sorted(r["id"] for r in output_rows(default_run["out"] / "data"))
    assert report["stages"] == default_run["report"]["stages"]


def test_other_settings_in_the_same_folder_are_refused(corpus, default_run):
    from cptrain.data.dedup_run import run_dedup

    cfg = dedup_config(
        corpus["inputs"],
        default_run["out"],
        "filters.min_chars=100",
        "executor.tasks=2",
        "minhash.bands=10",
        "minhash.rows=4",
    )
    with pytest.raises(ConfigError, match=r"holds a run made with other settings \(differs in: minhash\)"):
        run_dedup(cfg)
