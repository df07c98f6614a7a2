"""Vocabulary-parallel linear_cross_entropy on real gloo groups of 2 and 3 processes: uneven slices, slices
whose default chunk sizes differ, labels outside the whole vocabulary, and the Triton one-pass kernel (run by
Triton's interpreter on CPU) finishing each row after the ranks combine their log-sum-exps."""

from __future__ import annotations

import datetime
import os
import re
import sys

import pytest
import torch
import torch.distributed as dist

from cptrain.ops.chunked_ce import default_chunk_size, linear_cross_entropy
from tests.dist_utils import run_ranks
from tests.ops.test_chunked_ce import TOL, naive_loss

_TORCH_PATH_BYTES = 16  # chunked_ce's torch path: bytes per logit it budgets


def _init() -> tuple[int, int]:
    torch.set_num_threads(1)
    # a short timeout: ranks that disagree on their collectives fail instead of hanging the test
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    return dist.get_rank(), dist.get_world_size()


def _case(n: int, vocab: int, hdim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, hdim, generator=g).requires_grad_()
    weight = torch.randn(vocab, hdim, generator=g).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::4] = -100
    return hidden, weight, labels


def _check_against_single_process(sizes: list[int], n: int, hdim: int, chunk_size: int | None = None,
                                  case=None, **kw) -> None:
    """`case`: (hidden, weight, labels) over the whole vocabulary instead of _case's; `kw` goes to both the
    reference (impl excepted) and linear_cross_entropy."""
    rank = dist.get_rank()
    hidden, weight, labels = case or _case(n, sum(sizes), hdim, seed=n)
    reference_kw = {k: v for k, v in kw.items() if k != "impl"}
    loss = naive_loss(hidden, weight, labels.long(), **reference_kw)  # F.cross_entropy takes int64 targets only
    want = torch.autograd.grad(loss * 0.5, (hidden, weight))
    rows = weight.detach().split(sizes)[rank].clone().requires_grad_()
    h = hidden.detach().clone().requires_grad_()
    got = linear_cross_entropy(h, rows, labels, process_group=dist.group.WORLD, chunk_size=chunk_size, **kw)
    (got * 0.5).backward()
    torch.testing.assert_close(got.detach(), loss.detach(), **TOL)
    torch.testing.assert_close(h.grad, want[0], **TOL)
    torch.testing.assert_close(rows.grad, want[1].split(sizes)[rank], **TOL)


def _three_ranks_worker() -> None:
    rank, _ = _init()
    sizes = [7, 9, 5]
    for n, chunk in ((17, 5), (1, 3), (6, 100)):
        _check_against_single_process(sizes, n, 8, reduction="sum", chunk_size=chunk)
        _check_against_single_process(sizes, n, 8, reduction="mean", z_loss=1e-2, softcap=3.0, chunk_size=chunk)
    # 22 is outside the whole vocabulary (21 rows over 3 ranks): every rank refuses, none waits in a collective
    labels = torch.tensor([3, 22, -100])
    with pytest.raises(ValueError, match=re.escape("labels must be in [0, 21)")):
        linear_cross_entropy(torch.randn(3, 8), torch.randn(sizes[rank], 8), labels,
                             process_group=dist.group.WORLD)


def test_three_uneven_ranks_match_single_process_and_refuse_bad_labels():
    run_ranks(3, _three_ranks_worker)


# slices of 98304 and 98305 rows: the torch path's default chunk is 512 rows for the first, 256 for the second
_SPLIT_SIZES = [98304, 98305]


def _default_chunks_differ_worker() -> None:
    _init()
    assert len({default_chunk_size(v, _TORCH_PATH_BYTES) for v in _SPLIT_SIZES}) == 2
    # 300 tokens: one chunk of 300 rows on one rank, two of 150 on the other unless they agree
    _check_against_single_process(_SPLIT_SIZES, 300, 2, reduction="mean")


def test_uneven_slices_with_different_default_chunks():
    run_ranks(2, _default_chunks_differ_worker)


def _token_count_mismatch_worker() -> None:
    rank, _ = _init()
    n = 5 + rank
    with pytest.raises(ValueError, match=re.escape("token counts by rank: [5, 6]")):
        linear_cross_entropy(torch.randn(n, 4), torch.randn(6, 4), torch.zeros(n, dtype=torch.int64),
                             chunk_size=2, process_group=dist.group.WORLD)


def test_ranks_with_different_token_counts_are_refused():
    run_ranks(2, _token_count_mismatch_worker)


def _sharded_weight_worker() -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    _init()
    weight = distribute_tensor(torch.randn(10, 4), init_device_mesh("cpu", (2,)), [Shard(0)])
    try:
        linear_cross_entropy(torch.randn(3, 4), weight, torch.tensor([1, 2, 3]))
    except ValueError as e:
        assert "weight is a DTensor" in str(e) and "full_tensor()" in str(e), e
    else:
        raise AssertionError("a sharded DTensor weight was accepted")


def test_still_sharded_fsdp2_weight_is_named_in_the_error():
    """FSDP2 parameters are sharded DTensors outside the module's forward, where a user may compute the loss
    from `model.lm_head.weight`; mm's own error speaks of mixing tensors."""
    run_ranks(2, _sharded_weight_worker)


def _interpreted_one_pass_worker() -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: before triton_ce is imported
    assert "cptrain.ops.triton_ce" not in sys.modules
    rank, _ = _init()
    sizes = [37, 33]
    for kw in (dict(reduction="sum"), dict(reduction="mean", z_loss=1e-2, softcap=3.0)):
        _check_against_single_process(sizes, 21, 16, chunk_size=8, impl="triton", **kw)
    # every logit of rank 1's slice lies ~120 below rank 0's: its softmax share underflows to 0 (row scale 0) and
    # its targets' gradient is the bare -scale
    hidden, weight, _ = _case(5, sum(sizes), 16, seed=5)
    with torch.no_grad():
        hidden.abs_()
        weight[sizes[0]:] = -7.5 - 0.1 * weight[sizes[0]:].abs()
    labels = torch.tensor([40, 41, 3, -100, 69], dtype=torch.int32)  # int32 ids index the slice too
    _check_against_single_process(sizes, 5, 16, chunk_size=8, case=(hidden, weight, labels), impl="triton",
                                  reduction="mean")
    assert "cptrain.ops.triton_ce" in sys.modules


def test_one_pass_kernel_on_vocabulary_slices_in_interpreter():
    pytest.importorskip("triton")
    run_ranks(2, _interpreted_one_pass_worker)
