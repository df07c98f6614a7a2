"""--only of the variant benchmarks: a misspelt name stops with the choices before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, args, message", [
    ("activation_memory.py", ["--only", "llama3.2-1b-L2-8k-acnon", "--work", "{tmp}/work"],
     "--only: unknown case llama3.2-1b-L2-8k-acnon; the cases are llama3.2-1b-L2-8k-acnone,"),
    ("cptrain_speed.py", ["--base-src", "src", "--only", "nwe", "--results-dir", "{tmp}"],
     "--only: unknown variant nwe; choose from base, new,"),
])
def test_unknown_only_entry_is_a_usage_error(tmp_path, script, args, message):
    argv = [a.format(tmp=tmp_path) for a in args]
    run = subprocess.run([sys.executable, str(BENCH / script), *argv], cwd=BENCH.parent, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
    assert not any(tmp_path.iterdir())
