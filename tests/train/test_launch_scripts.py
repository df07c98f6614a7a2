"""The launcher scripts (torchrun_configs/, slurm/) as a user runs them, without an activated venv."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_venv() -> dict:
    """The environment of a shell where the venv is not activated: its bin/ is off PATH."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    return {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "PATH": path}


def _fake_python(tmp_path: Path) -> Path:
    """A CPTRAIN_PYTHON that logs each call and answers the GPU count with 3, in place of the real one."""
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "calls"}\nif [[ "$1" == "-c" ]]; then echo 3; fi\n'
    )
    fake.chmod(0o755)
    return fake


def test_single_node_counts_gpus_with_the_interpreter_it_trains_with(tmp_path):
    # a python3 on PATH without torch, as on a machine whose system python has none
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 1\n")
    (tmp_path / "bin" / "python3").chmod(0o755)
    env = _without_venv()
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    env["CPTRAIN_PYTHON"] = str(_fake_python(tmp_path))
    run = subprocess.run(
        ["bash", str(ROOT / "torchrun_configs" / "single_node.sh"), "recipes/tiny-cpu.toml", "train.steps=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    dry, count, launch = (tmp_path / "calls").read_text().splitlines()
    assert dry == "-m cptrain.cli run recipes/tiny-cpu.toml train.steps=1 --dry-run"
    assert count.startswith("-c import torch")
    assert launch == (
        "-m torch.distributed.run --standalone --nproc_per_node 3 "
        "-m cptrain.cli run recipes/tiny-cpu.toml train.steps=1"
    )


def test_single_node_names_a_missing_interpreter(tmp_path):
    env = {**_without_venv(), "CPTRAIN_PYTHON": str(tmp_path / "nothere" / "python")}
    run = subprocess.run(
        ["bash", str(ROOT / "torchrun_configs" / "single_node.sh"), "recipes/tiny-cpu.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert f"no python at '{tmp_path / 'nothere' / 'python'}'" in run.stderr


@pytest.mark.parametrize("script", ["torchrun_configs/single_node.sh", "slurm/train.sbatch"])
def test_a_missing_recipe_is_one_line_before_torchrun_starts(tmp_path, script):
    """It was torchrun's ChildFailedError report around cptrain's one line (under sbatch, in the job's log)."""
    env = {**_without_venv(), "CPTRAIN_PYTHON": str(_fake_python(tmp_path))}
    run = subprocess.run(["bash", str(ROOT / script), "recipes/nope.toml", "train.steps=1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]  # one line
    assert "recipe 'recipes/nope.toml' not found" in run.stderr and str(ROOT) in run.stderr
    assert not (tmp_path / "calls").exists()  # neither the GPU count nor torchrun ran


@pytest.mark.parametrize("script", ["torchrun_configs/single_node.sh", "slurm/train.sbatch"])
def test_a_config_error_is_one_line_before_torchrun_starts(tmp_path, script):
    """An unknown key was printed by every rank, then torchrun's ChildFailedError report (exit 1)."""
    env = {**_without_venv(), "CPTRAIN_PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"),
           "NPROC_PER_NODE": "2"}
    run = subprocess.run(["bash", str(ROOT / script), "recipes/tiny-cpu.toml", "optim.lrr=1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("cptrain: error: command-line override 'optim.lrr=1': unknown key 'optim.lrr'")
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_single_node_lets_a_flag_come_before_the_recipe(tmp_path):
    env = {**_without_venv(), "CPTRAIN_PYTHON": str(_fake_python(tmp_path))}
    run = subprocess.run(["bash", str(ROOT / "torchrun_configs" / "single_node.sh"), "--dry-run",
                          "recipes/tiny-cpu.toml"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "calls").read_text().splitlines()[-1].endswith("run --dry-run recipes/tiny-cpu.toml")


def test_train_sbatch_log_survives_a_requeue():
    """SLURM truncates --output when a requeued job starts (JobFileAppend=0 is its default): the log of the
    pre-empted attempt (its steps, 'stop requested: checkpoint saved') was gone. The script asks to append."""
    header = [line.split()[1] for line in (ROOT / "slurm" / "train.sbatch").read_text().splitlines()
              if line.startswith("#SBATCH ")]
    assert "--requeue" in header and "--open-mode=append" in header


def _single_node_two_ranks(tmp_path, run_dir, tokenizer) -> subprocess.Popen:
    """single_node.sh training tiny-cpu on two gloo ranks without end, in a session of its own, once its first
    step is logged."""
    tokenizer.save_pretrained(tmp_path / "tok")
    env = {**os.environ, "NPROC_PER_NODE": "2", "CPTRAIN_PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        ["bash", str(ROOT / "torchrun_configs" / "single_node.sh"), "recipes/tiny-cpu.toml",
         f"train.run_dir='{run_dir}'", f"model.tokenizer='{tmp_path / 'tok'}'", "train.steps=100000",
         "checkpoint.every_steps=100000", "eval.every_steps=0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    try:
        _wait_for(lambda: metrics.exists() and '"loss"' in metrics.read_text(), 240, "the first step")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("target", ["script", "group", "torchrun"])
def test_single_node_usr1_saves_and_stops_the_trainers(target, tmp_path, smollm_tokenizer):
    """SIGUSR1 (the pre-emption signal cptrain documents) to single_node.sh, or SIGTERM to its process group: it
    signals the trainers itself, which save and exit, and the script exits 0 (torchrun, in a group of its own, is
    not signalled and ends as its trainers did). Sent to torchrun (as `scancel --signal=USR1` or a wrapper might), torchrun
    forwards it (left to its default signal list, USR1 killed torchrun alone and the trainers trained on, orphaned);
    the save lands, but torchrun exits 1, and on torch < 2.13 it SIGKILLs trainers still saving after 30 s, which is
    why the script no longer execs torchrun and forwards the signal through it (a 1B save on one H100 took longer)."""
    run_dir = tmp_path / "run"
    proc = _single_node_two_ranks(tmp_path, run_dir, smollm_tokenizer)
    try:
        if target == "group":  # SIGTERM to the script's process group, as `kill -TERM -PGID` or a service stop
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            pid = proc.pid
            if target == "torchrun":  # the script's one child
                pid = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                         text=True).stdout.split()[0])
            os.kill(pid, signal.SIGUSR1)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stop requested: checkpoint saved at step" in out, out[-3000:]
    saved = [p for p in (run_dir / "checkpoints").iterdir() if (p / "COMMITTED").is_file()]
    assert len(saved) == 1 and (saved[0] / "rank-1.pt").is_file()
    assert proc.returncode == (1 if target == "torchrun" else 0), out[-3000:]


@pytest.mark.slow
def test_single_node_ctrl_c_stops_at_once_with_130(tmp_path, smollm_tokenizer):
    """Ctrl-C (SIGINT to the terminal's foreground process group, the script's): the script passes it to the
    trainers, which stop without saving as `cptrain run` does, and exits 130 (torchrun reports their 130 as a
    failure, 1)."""
    run_dir = tmp_path / "run"
    proc = _single_node_two_ranks(tmp_path, run_dir, smollm_tokenizer)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "cptrain: interrupted;" in out, out[-3000:]
    assert not list((run_dir / "checkpoints").glob("step-*"))


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    run = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return run.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in run.stdout.split())


def _job_info(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.skipif(not _cluster_up(), reason="needs SLURM (sbatch); see scripts/local_slurm.sh")
def test_train_sbatch_preemption_signals_only_its_own_trainers(tmp_path, smollm_tokenizer):
    """The pre-emption warning checkpoints this job and requeues it; another job's trainer of the
    same user, on the same node, is left alone."""
    smollm_tokenizer.save_pretrained(tmp_path / "tok")  # skip re-reading the GGUF in the job
    # a process that looks like a torchrun worker of another job; USR1 would end it (sleep's default)
    decoy = subprocess.Popen(
        ["bash", "-c", 'exec -a "python -u -m cptrain.cli run other.toml" sleep 600'],
        env={**os.environ, "SLURM_JOB_ID": "4242424"},
    )
    log = tmp_path / "job.out"
    job = None
    try:
        job = (
            subprocess.run(
                [
                    "sbatch",
                    "--parsable",
                    "--chdir",
                    str(ROOT),
                    "--output",
                    str(log),
                    "--cpus-per-task=1",
                    "--mem=4G",
                    "--time=00:10:00",
                    f"--export=ALL,MASTER_PORT={_free_port()}",
                    str(ROOT / "slurm" / "train.sbatch"),
                    "recipes/tiny-cpu.toml",
                    f"train.run_dir='{tmp_path / 'run'}'",
                    f"model.tokenizer='{tmp_path / 'tok'}'",
                    "train.steps=100000",
                    "checkpoint.every_steps=100000",
                ],
                env=_without_venv(),
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .split(";")[0]
        )
        metrics = tmp_path / "run" / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and '"loss"' in metrics.read_text(), 240, "the first step")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)  # what --signal=B:USR1 does
        _wait_for(lambda: "stop requested: checkpoint saved" in log.read_text(), 120, "the checkpoint")
        _wait_for(lambda: "Restarts=1" in _job_info(job), 60, "the requeue")
        assert decoy.poll() is None, "the other job's trainer got the signal"
    finally:
        if job:
            subprocess.run(["scancel", job], check=False)
        decoy.kill()
        decoy.wait()
