"""scripts/setup_env.sh and scripts/quickstart.sh as a user runs them, in a copy of the repository, from another
directory: a broken or too old .venv is one line that says what to do, and the quickstart touches the previous
run folder only once its overrides are known good."""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for name in ("scripts", "recipes", "src"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, repo / name)
    return repo


def _bash(script: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd="/", capture_output=True, text=True, check=False,
                          env={**os.environ, **env})


def test_setup_env_names_a_venv_whose_python_is_gone(tmp_path):
    """A .venv made from a Python since removed (a pyenv or Homebrew upgrade): `python3 -m venv` over it ended in
    "Error: [Errno 2] No such file or directory: '.venv/bin/python3'"."""
    repo = _copy(tmp_path)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")
    run = _bash(repo / "scripts" / "setup_env.sh")
    assert run.returncode == 1
    assert run.stderr.strip() == (f"setup_env: {repo}/.venv/bin/python does not run (the Python it was made from "
                                  f"is gone?): remove .venv (rm -rf {repo}/.venv) and run this again")


OLD = sorted(glob.glob("/root/.pyenv/versions/3.[6-9].*/bin/python3") + [
    p for p in (shutil.which(f"python3.{m}") for m in (8, 9)) if p])


@pytest.mark.skipif(not OLD, reason="needs a Python older than 3.10")
def test_setup_env_names_a_venv_too_old_for_cptrain(tmp_path):
    """A .venv made with PYTHON=python3.9 failed with pip's "Cannot install torch==2.13.0 ... conflicting
    dependencies", and again on every later run with a newer PYTHON, since the old .venv was reused."""
    repo = _copy(tmp_path)
    made = subprocess.run([OLD[-1], "-m", "venv", "--without-pip", str(repo / ".venv")], capture_output=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip(f"{OLD[-1]} cannot make a venv")
    run = _bash(repo / "scripts" / "setup_env.sh")
    assert run.returncode == 1
    assert run.stderr.startswith("setup_env: .venv is Python 3.") and "cptrain needs >= 3.10: remove .venv" in (
        run.stderr)


@pytest.mark.slow
def test_quickstart_keeps_the_previous_run_on_a_mistyped_override_or_a_dry_run(tmp_path):
    """`bash scripts/quickstart.sh optim.lrr=1` deleted runs/quickstart before the override was refused, and so did
    `--dry-run`. The copy's .venv sees this environment's packages (a .pth file), so setup_env.sh runs for real
    without installing torch again."""
    repo = _copy(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True)
    purelib = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    previous = repo / "runs" / "quickstart" / "checkpoints" / "step-32"
    previous.mkdir(parents=True)
    run = _bash(repo / "scripts" / "quickstart.sh", "optim.lrr=1")
    assert run.returncode == 2, run.stderr
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in run.stderr
    assert previous.is_dir() and "replacing the previous run folder" not in run.stdout
    run = _bash(repo / "scripts" / "quickstart.sh", "--dry-run", "train.steps=3")
    assert run.returncode == 0, run.stderr
    assert "steps = 3" in run.stdout and previous.is_dir()
