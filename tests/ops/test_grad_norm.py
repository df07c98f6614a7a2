"""GradNorm (one Triton kernel per gradient dtype, interpreted on CPU tensors) against torch's norm of the
concatenated gradients: ragged spans, mixed dtypes, empty tensors, gradients that move or change size."""

from __future__ import annotations

from tests.ops.interpreted import assert_interpreted_ok

_SCRIPT = """
import torch
from cptrain.ops import grad_norm
from cptrain.ops.grad_norm import GradNorm

grad_norm.BLOCK, grad_norm.ITERS = 32, 2  # several programs per tensor, ragged last ones, in little time
gen = torch.Generator().manual_seed(0)


def grads(shapes, dtypes):
    return [torch.randn(s, generator=gen).to(d) * 3 for s, d in zip(shapes, dtypes)]


def want(gs):
    return torch.linalg.vector_norm(torch.cat([g.float().flatten() for g in gs]))


norm = GradNorm()
shapes = [(130, 7), (5,), (0,), (64,), (3, 65), (1,)]
dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float32, torch.bfloat16, torch.float16]
gs = grads(shapes, dtypes)
got = norm(gs)
assert got.dtype == torch.float32 and got.dim() == 0
torch.testing.assert_close(got, want(gs), rtol=1e-6, atol=0)
assert set(norm._tables) == {torch.float32, torch.bfloat16, torch.float16}

# new gradients of the same sizes (other addresses): the tables follow
gs2 = grads(shapes, dtypes)
torch.testing.assert_close(norm(gs2), want(gs2), rtol=1e-6, atol=0)
assert norm._tables[torch.float32].addresses == [g.data_ptr() for g in gs2 if g.dtype == torch.float32 and g.numel()]
# other sizes: a new table
gs3 = grads([(7,), (300,)], [torch.float32, torch.float32])
torch.testing.assert_close(norm(gs3), want(gs3), rtol=1e-6, atol=0)
# the module's block size changing later does not break a table laid out for the old one
grad_norm.BLOCK = 16
torch.testing.assert_close(norm(gs3), want(gs3), rtol=1e-6, atol=0)
grad_norm.BLOCK = 32
# only empty tensors: 0
assert float(norm([torch.zeros(0)])) == 0.0
# a non-contiguous gradient is refused, naming its strides
try:
    norm([torch.randn(4, 6).t()])
except RuntimeError as e:
    assert "strides" in str(e)
else:
    raise AssertionError("non-contiguous gradient accepted")
print("ok")
"""


def test_grad_norm_matches_torch_interpreted():
    assert_interpreted_ok(_SCRIPT)
