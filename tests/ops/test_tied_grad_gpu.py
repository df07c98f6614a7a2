"""The tied embedding's one gradient buffer on CUDA (Triton cross-entropy, bf16), against autograd's two
gradients, both compared with the fp32 model's."""

from __future__ import annotations

import pytest
import torch

from tests.ops.test_tied_grad import _batch, _grads, _model

pytestmark = pytest.mark.gpu


def test_shared_buffer_on_cuda_bf16():
    ref_model, model = _model(torch.float32).cuda(), _model(torch.bfloat16).cuda()
    ids, labels = (t.cuda() for t in _batch(model.args.vocab_size))
    ref = _grads(ref_model, ids, labels, False)
    want, got = _grads(model, ids, labels, False), _grads(model, ids, labels, True)
    for k in ref:
        err_want = (want[k].float() - ref[k]).abs().max()
        err_got = (got[k].float() - ref[k]).abs().max()
        assert err_got <= 1.25 * err_want + 1e-6, (k, float(err_got), float(err_want))
