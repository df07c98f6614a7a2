"""Run a script under Triton's interpreter (TRITON_INTERPRET=1: kernels on CPU tensors) in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def assert_interpreted_ok(script: str) -> None:
    """The script runs to the end and prints "ok" last; tests/ops is on its path (for shared cases)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
