"""Running the dedup stages as SLURM array jobs through datatrove's SlurmPipelineExecutor.

Each stage becomes one array job (one array task per datatrove task) that starts only after the
previous stage's job succeeded (`--dependency=afterok`). Run this on a login node: datatrove
pickles each stage to `<dir>/logs/<n>-<stage>/executor.pik` and the generated sbatch script next
to it (`launch_script.slurm`) loads it on the compute node; SLURM's own output is in `slurm_logs/`.
"""

from __future__ import annotations

import copy
import getpass
import shutil
import subprocess
import sys
import time
from pathlib import Path

from datatrove.executor.slurm import SlurmPipelineExecutor

from cptrain.configtools import ConfigError
from cptrain.data.dedup_config import DedupConfig
from cptrain.data.dedup_stages import RunLayout, Stage

POLL_SECONDS = 5.0


class StageExecutor(SlurmPipelineExecutor):
    """datatrove's SLURM executor with two changes.

    - No per-stage `merge_stats` job: the report merges stats itself, and a merge job left waiting on
      a failed stage would otherwise sit in the queue forever.
    - A fresh copy of the pipeline for every task: with `tasks_per_job` > 1 one process runs several
      tasks, and datatrove 0.10 reuses the step objects, so each task's stats would include the
      previous tasks' (its local executor copies the pipeline the same way).
    """

    def launch_merge_stats(self) -> None:
        pass

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        pipeline = self.pipeline
        self.pipeline = copy.deepcopy(pipeline)
        try:
            return super()._run_for_rank(rank, local_rank, node_rank)
        finally:
            self.pipeline = pipeline


def default_partition() -> str:
    """The partition SLURM marks as default (`sinfo` prints it with a trailing '*')."""
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    for name in out.split():
        if name.endswith("*"):
            return name[:-1]
    raise ConfigError("slurm.partition: the cluster has no default partition; set slurm.partition")


def env_command(cfg: DedupConfig) -> str:
    """Shell line run before each task: the user's, else activate the venv this command runs from."""
    if cfg.slurm.env_command:
        return cfg.slurm.env_command
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.exists():
        return f"source {activate}"
    return f"export PATH={Path(sys.executable).parent}:$PATH"


def sbatch_directives(args: dict) -> dict[str, str]:
    """slurm.sbatch_args as the text of `#SBATCH --key=value` lines (datatrove writes `--key` alone for an
    empty value). `true` is the bare flag (`exclusive = true` -> `--exclusive`; "True" would be an invalid
    value) and `false` leaves it out; a TOML date or time is written as ISO 8601 (`begin =
    2024-01-01T10:00:00` -> `--begin=2024-01-01T10:00:00`, where str() would put a space that ends the line's
    value)."""
    out = {}
    for key, value in args.items():
        if value is False:
            continue
        if isinstance(value, (dict, list)):
            raise ConfigError(f"slurm.sbatch_args.{key}: expected a text, number, boolean, date or time, got "
                              f"{value!r} (one #SBATCH --{key}=VALUE line per key)")
        out[key] = "" if value is True else value.isoformat() if hasattr(value, "isoformat") else str(value)
    return out


def build_executors(cfg: DedupConfig, layout: RunLayout, stages: list[Stage]) -> list[StageExecutor]:
    for tool in ("sbatch", "sinfo", "squeue"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"executor.kind = 'slurm' needs `{tool}` on PATH: run on a SLURM login node, "
                f"or use executor.kind = 'local'"
            )
    s = cfg.slurm
    partition = s.partition or default_partition()
    executors: list[StageExecutor] = []
    for i, stage in enumerate(stages, 1):
        executors.append(
            StageExecutor(
                stage.pipeline,
                tasks=stage.tasks,
                time=s.time,
                partition=partition,
                cpus_per_task=s.cpus_per_task,
                mem_per_cpu_gb=s.mem_per_cpu_gb,
                workers=cfg.executor.workers or -1,
                tasks_per_job=s.tasks_per_job,
                job_name=f"{s.job_name}-{stage.name}",
                qos=s.qos or None,
                env_command=env_command(cfg),
                sbatch_args=sbatch_directives(s.sbatch_args),
                logging_dir=str(layout.stage_logs(i, stage.name)),
                depends=executors[-1] if executors else None,
            )
        )
    return executors


def _queued(job_ids: set[str]) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of our jobs still in the queue."""
    out = subprocess.run(
        ["squeue", "-h", "-u", getpass.getuser(), "-o", "%A|%T|%r"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]
    return [r for r in rows if r[0] in job_ids]


def _first_unfinished(executors: list[StageExecutor], stages: list[Stage]) -> tuple[Stage, list[int]] | None:
    for executor, stage in zip(executors, stages, strict=True):
        missing = executor.get_incomplete_ranks(skip_completed=True)
        if missing:
            return stage, missing
    return None


def wait_for(executors: list[StageExecutor], stages: list[Stage], layout: RunLayout) -> None:
    """Block until the report stage finished; raise naming the failed stage and its logs otherwise."""
    job_ids = {str(e.job_id) for e in executors if e.job_id not in (None, -1)}
    while True:
        if not executors[-1].get_incomplete_ranks(skip_completed=True):
            return
        queued = _queued(job_ids)
        stuck = [q for q in queued if "DependencyNeverSatisfied" in q[2]]
        if queued and not stuck:
            time.sleep(POLL_SECONDS)
            continue
        if not executors[-1].get_incomplete_ranks(skip_completed=True):  # finished between the two checks
            return
        if stuck:
            subprocess.run(["scancel", *sorted(job_ids)], check=False)
        failed = _first_unfinished(executors, stages)
        name, missing = (failed[0].name, failed[1]) if failed else ("report", [0])
        index = [s.name for s in stages].index(name) + 1
        raise RuntimeError(
            f"dedup stage {name!r} failed: tasks {missing[:10]} did not finish. SLURM output: "
            f"{layout.stage_logs(index, name)}/slurm_logs/, task logs: "
            f"{layout.stage_logs(index, name)}/logs/. Fix the cause and run the same command "
            f"again: finished tasks are kept."
        )


def run_slurm(cfg: DedupConfig, layout: RunLayout, stages: list[Stage]) -> bool:
    """Submit all stages; with slurm.wait, block until done (True). Without, print the job ids (False)."""
    executors = build_executors(cfg, layout, stages)
    executors[-1].launch_job()  # launches the dependency chain first
    for executor, stage in zip(executors, stages, strict=True):
        state = "already finished" if executor.job_id == -1 else f"job {executor.job_id}"
        print(f"cptrain dedup: stage {stage.name}: {state}", file=sys.stderr)
    if not cfg.slurm.wait:
        print(
            f"cptrain dedup: submitted; the report will be written to {layout.root / 'report.md'}",
            file=sys.stderr,
        )
        return False
    wait_for(executors, stages, layout)
    return True
