"""tiled_mlp at the edges of its API: no tokens, more tiles than tokens, nothing or only the input needing a
gradient, and tile counts that are not positive integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cptrain.ops.tiled_mlp import tiled_mlp
from tests.ops.test_tiled_mlp import TOL, make_mlp

PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["swiglu", "generic"])


def grads(mlp, x: torch.Tensor, num_tiles: int, fast_path: bool):
    """Output, d(x) (None when x needs none) and d(params) of a fixed weighted sum of the output."""
    mlp.zero_grad(set_to_none=True)
    out = tiled_mlp(mlp.swiglu, x, num_tiles, list(mlp.parameters()), fast_path=fast_path)
    if out.requires_grad:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in mlp.parameters()]


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, **TOL)


@PATHS
def test_no_tokens_forward_and_backward(fast_path):
    mlp = make_mlp()
    x = torch.randn(0, 16, requires_grad=True)
    got = grads(mlp, x, 3, fast_path)
    assert got[0].shape == (0, 16) and got[1].shape == (0, 16)
    for g, p in zip(got[2:], mlp.parameters(), strict=True):
        torch.testing.assert_close(g, torch.zeros_like(p), rtol=0, atol=0)


@PATHS
@pytest.mark.parametrize("num_tiles", [7, 12])  # 7 tokens: one token per tile, and more tiles than tokens
def test_as_many_or_more_tiles_than_tokens(num_tiles, fast_path):
    mlp, x = make_mlp(), torch.randn(1, 7, 16)
    want = grads(mlp, x.clone().requires_grad_(), 1, fast_path)
    assert_same(grads(mlp, x.clone().requires_grad_(), num_tiles, fast_path), want)


@PATHS
def test_frozen_mlp_still_gives_the_input_gradient(fast_path):
    mlp, x = make_mlp(), torch.randn(2, 5, 16)
    mlp.requires_grad_(False)
    want = grads(mlp, x.clone().requires_grad_(), 1, fast_path)
    got = grads(mlp, x.clone().requires_grad_(), 3, fast_path)
    assert got[2:] == [None, None, None]
    assert_same(got, want)


@PATHS
def test_input_without_grad_still_gives_parameter_gradients(fast_path):
    mlp, x = make_mlp(), torch.randn(2, 5, 16)
    assert_same(grads(mlp, x, 4, fast_path), grads(mlp, x, 1, fast_path))


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3", None])
def test_tile_count_must_be_a_positive_integer(bad):
    mlp = make_mlp()
    with pytest.raises(ValueError, match="num_tiles must be a positive integer"):
        tiled_mlp(mlp.swiglu, torch.randn(4, 16), bad, list(mlp.parameters()))


def test_numpy_integer_tile_count_is_accepted():
    mlp, x = make_mlp(), torch.randn(6, 16)
    out = tiled_mlp(mlp.swiglu, x, np.int64(3), list(mlp.parameters()))
    torch.testing.assert_close(out, mlp.swiglu(x), **TOL)
