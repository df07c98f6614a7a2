"""ops/add_rows.py: out[ids] += rows with repeated ids summed in fp32 (the tied embedding lookup's backward)."""

from __future__ import annotations

import pytest
import torch

from cptrain.ops.add_rows import add_rows_
from tests.ops.add_rows_cases import expected, make_case
from tests.ops.interpreted import assert_interpreted_ok


def test_cpu_path_is_index_put():
    out, ids, rows = make_case("cpu", torch.float32)
    torch.testing.assert_close(add_rows_(out.clone(), ids, rows), expected(out, ids, rows), rtol=1e-6, atol=1e-5)


def test_shapes_are_checked():
    out, ids, rows = make_case("cpu", torch.float32)
    with pytest.raises(ValueError, match="add_rows_"):
        add_rows_(out, ids, rows[:, :-1])
    with pytest.raises(ValueError, match="add_rows_"):
        add_rows_(out.t(), ids, rows)


def test_triton_kernel_interpreted():
    """The kernel itself, run by Triton's interpreter on CPU tensors: fp32 and bf16 outputs, a run longer
    than two loop steps, runs crossing loop-step edges, a last run ending at the last position, a partial
    column block; and the same bits twice."""
    assert_interpreted_ok(
        "import torch\n"
        "from add_rows_cases import check_case\n"
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    check_case('cpu', dtype, impl='triton')\n"
        "print('ok')\n")
