"""The SLURM executor on a real (one-node) cluster: scripts/local_slurm.sh sets one up.

Skipped where `sbatch` is absent or the cluster has no node that accepts jobs.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.dedup.conftest import dedup_config
from tests.dedup.corpus import output_rows

pytest.importorskip("datatrove")


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    run = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return run.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in run.stdout.split())


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _cluster_up(), reason="needs SLURM (sbatch); see scripts/local_slurm.sh"),
]


def test_slurm_stages_chain_fail_cleanly_and_resume(corpus, default_run, tmp_path):
    from cptrain.data.dedup_run import run_dedup

    out = tmp_path / "run"
    # same settings as default_run; 10 datatrove tasks per array job keeps the job count small
    cfg = dedup_config(
        corpus["inputs"],
        out,
        "filters.min_chars=100",
        "executor.tasks=2",
        'executor.kind="slurm"',
        'slurm.time="00:10:00"',
        "slurm.tasks_per_job=10",
        'slurm.job_name="cptrain-test"',
    )
    out.mkdir()
    (out / "data").write_text("a file where the output folder should be: the writing stage fails")
    with pytest.raises(RuntimeError, match=r"dedup stage 'near-dedup' failed.*slurm_logs"):
        run_dedup(cfg)
    launch = (out / "logs" / "1-filter" / "launch_script.slurm").read_text()
    assert "#SBATCH --array=0-0" in launch and "launch_pickled_pipeline" in launch
    assert not (out / "logs" / "7-report" / "completions").exists()
    submitted = {d.name: (d / "launch_script.slurm").stat().st_mtime_ns for d in (out / "logs").iterdir()}

    (out / "data").unlink()
    report = run_dedup(cfg)  # only near-dedup and report are submitted again
    again = {d.name: (d / "launch_script.slurm").stat().st_mtime_ns for d in (out / "logs").iterdir()}
    assert [name for name in sorted(again) if again[name] != submitted[name]] == ["6-near-dedup", "7-report"]
    kept = sorted(r["id"] for r in output_rows(out / "data"))
    assert kept == sorted(r["id"] for r in output_rows(default_run["out"] / "data"))
    assert report["stages"] == default_run["report"]["stages"]
    # nothing of this run is left queued; a job that just wrote its completion file may show as running for
    # a moment before SLURM marks it done (seen once: "R 0:01" right after run_dedup returned)
    names = ",".join(f"cptrain-test-{s}" for s in ("report", "near-dedup"))
    deadline = time.monotonic() + 60
    while True:
        queue = subprocess.run(["squeue", "-h", "-n", names], capture_output=True, text=True, check=True).stdout
        if not queue.strip() or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert queue.strip() == ""
