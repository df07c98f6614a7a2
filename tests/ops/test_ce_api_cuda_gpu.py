"""linear_cross_entropy's input checks on CUDA: the label range check is device-side (no host sync in the
training step) yet still stops the run on a bad label; autocast works on the Triton path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cptrain.ops.chunked_ce import linear_cross_entropy

pytestmark = pytest.mark.gpu


def _case(n=3000, h=256, v=5003):
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, h, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    weight = (torch.randn(v, h, device="cuda", generator=g) * 0.05).bfloat16().requires_grad_()
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    labels[::5] = -100
    return hidden, weight, labels


def test_forward_and_backward_never_sync_with_the_host():
    hidden, weight, labels = _case()
    linear_cross_entropy(hidden, weight, labels, chunk_size=1024).backward()  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = linear_cross_entropy(hidden, weight, labels, chunk_size=1024, reduction="mean", z_loss=1e-4)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


_BAD_LABEL = """
import torch
from tests.ops.test_ce_api_cuda_gpu import _case
from cptrain.ops.chunked_ce import linear_cross_entropy
hidden, weight, labels = _case()
labels[2500] = weight.shape[0]
linear_cross_entropy(hidden, weight, labels, chunk_size=1024).backward()
torch.cuda.synchronize()
print("no error")
"""


def test_out_of_range_label_stops_the_process():
    # a device-side assert poisons the CUDA context: run it in a process of its own
    run = subprocess.run([sys.executable, "-c", _BAD_LABEL], capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode != 0 and "no error" not in run.stdout, run.stdout + run.stderr[-2000:]
    assert "assert" in run.stderr.lower(), run.stderr[-2000:]


def test_autocast_with_fp32_weight_on_the_triton_path():
    hidden, weight, labels = _case()
    w32 = weight.detach().float().requires_grad_()
    want = linear_cross_entropy(hidden, weight, labels, chunk_size=1024)
    want.backward()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden.detach().float(), w32, labels, chunk_size=1024)
    got.backward()
    assert w32.grad.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(w32.grad, weight.grad.float(), rtol=0, atol=0)
