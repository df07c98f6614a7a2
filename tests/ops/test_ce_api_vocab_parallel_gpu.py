"""Vocabulary-parallel linear_cross_entropy on CUDA: two gloo ranks sharing one GPU (NCCL refuses two ranks on
one device) run the compiled one-pass kernel on their slices of a bf16 head, against an fp32 reference."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from cptrain.ops.chunked_ce import linear_cross_entropy
from tests.dist_utils import run_ranks
from tests.ops.test_chunked_ce import naive_loss
from tests.ops.test_chunked_ce_gpu import bf16_case, rel_err

pytestmark = pytest.mark.gpu


def _worker() -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    sizes = [25129, 25128]
    hidden, weight, labels = bf16_case(4099, 1024, sum(sizes))
    for kw in (dict(reduction="sum"), dict(reduction="mean", z_loss=1e-4, softcap=30.0)):
        h = hidden.float().requires_grad_()
        w = weight.float().requires_grad_()
        naive_loss(h, w, labels, **kw).backward()
        mine = weight.split(sizes)[rank].clone().requires_grad_()
        hid = hidden.clone().requires_grad_()
        loss = linear_cross_entropy(hid, mine, labels, chunk_size=1024, impl="triton",
                                    process_group=dist.group.WORLD, **kw)
        loss.backward()
        want = naive_loss(hidden.float(), weight.float(), labels, **kw)
        torch.testing.assert_close(loss.detach(), want, rtol=2e-3, atol=1e-3)
        assert rel_err(hid.grad, h.grad) < 1e-2, kw
        assert rel_err(mine.grad, w.grad.split(sizes)[rank]) < 1e-2, kw


def test_two_ranks_on_one_gpu_match_the_fp32_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    run_ranks(2, _worker)
