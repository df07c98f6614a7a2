"""The GPU-only benchmarks, started on a machine without CUDA: one line and exit status 2, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
GPU_ONLY = ["kernels_ce", "ce_floor", "ce_chunk_rows", "ce_label_check", "kernels_tiled_mlp", "kernels_attention",
            "kernels_adamw", "overlap_adamw", "kernels_projections", "kernels_mlp_fused", "kernels_varlen_gqa", "step_gemms"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("script", GPU_ONLY)
def test_gpu_only_benchmark_refuses_in_one_line(script):
    run = subprocess.run([sys.executable, str(BENCH / f"{script}.py")], cwd=BENCH, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip() == (f"{script}.py: needs a CUDA GPU, and torch {torch.__version__} sees none here; "
                                  "benchmarks/README.md has the GPU commands")
