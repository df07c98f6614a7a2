"""The tied embedding's one gradient buffer on CUDA (Triton cross-entropy, bf16), against autograd's two
gradients, both compared with the fp32 model's."""

from __future__ import annotations

import pytest
import torch

from tests.ops.test_tied_grad import assert_bf16_buffer_as_close_to_fp32

pytestmark = pytest.mark.gpu


def test_shared_buffer_on_cuda_bf16():
    assert_bf16_buffer_as_close_to_fp32(torch.device("cuda"))
