"""Cases shared by the CPU (Triton interpreter) and GPU tests of ops/add_rows.py."""

from __future__ import annotations

import torch

from cptrain.ops.add_rows import _ROWS, add_rows_


def make_case(device, dtype, n=200, vocab=50, dim=300, seed=0):
    """ids with many repeats: one id 2 * ROWS + 6 times (a run longer than two loop steps), others in short runs,
    and the largest id at the end of the sorted order; dim not a multiple of the column block."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (n,), generator=gen)
    ids[torch.randperm(n, generator=gen)[: 2 * _ROWS + 6]] = 7
    ids[-1] = vocab - 1
    out = torch.randn(vocab, dim, generator=gen).to(dtype)
    rows = torch.randn(n, dim, generator=gen).to(dtype)
    return out.to(device), ids.to(device), rows.to(device)


def expected(out, ids, rows):
    """fp64 sums of each id's rows added to its output row, one rounding to out's dtype."""
    acc = torch.zeros(out.shape, dtype=torch.float64, device=out.device)
    acc.index_add_(0, ids, rows.double())
    return (out.double() + acc).to(out.dtype)


def check_case(device, dtype, impl: str = "auto") -> None:
    out, ids, rows = make_case(device, dtype)
    want = expected(out, ids, rows)
    got = add_rows_(out.clone(), ids, rows, impl)
    again = add_rows_(out.clone(), ids, rows, impl)
    assert torch.equal(got, again)  # the same inputs give the same bits
    untouched = torch.ones(out.shape[0], dtype=torch.bool, device=device)
    untouched[ids] = False
    assert untouched.any() and torch.equal(got[untouched], out[untouched])
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    else:  # fp32 sums against fp64 ones can round the other way, by one bf16 step at most
        torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=1e-6)
