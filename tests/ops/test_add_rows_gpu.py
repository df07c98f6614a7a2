"""ops/add_rows.py on CUDA: the shared cases, and llama3.2-1b's step shape against torch's index_put_."""

from __future__ import annotations

import pytest
import torch

from cptrain.ops.add_rows import add_rows_
from tests.ops.add_rows_cases import check_case, expected

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cases_on_cuda(dtype):
    check_case(torch.device("cuda"), dtype)


def test_step_shape_against_fp64_and_index_put():
    """8192 token rows of 2048 into a 128256-row bf16 gradient, ids drawn so that a few are very frequent
    (as in text; id 0 about 440 times): within one bf16 rounding of the fp64 sums, no further from them than
    torch's index_put_ with accumulate, and the same bits twice."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    ranks = torch.rand(8192, generator=gen, device="cuda")
    ids = (ranks.pow(4) * 128256).long()
    out = torch.randn(128256, 2048, generator=gen, device="cuda").to(torch.bfloat16)
    rows = torch.randn(8192, 2048, generator=gen, device="cuda").to(torch.bfloat16) * 1e-2
    want = expected(out, ids, rows).float()
    got = add_rows_(out.clone(), ids, rows)
    assert torch.equal(got, add_rows_(out.clone(), ids, rows))
    torch.testing.assert_close(got.float(), want, rtol=2 ** -7, atol=1e-6)
    theirs = out.clone().index_put_((ids,), rows, accumulate=True).float()
    assert (got.float() - want).abs().max() <= (theirs - want).abs().max()
