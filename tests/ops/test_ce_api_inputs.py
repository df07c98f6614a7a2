"""linear_cross_entropy's public API with the inputs a Liger / cut-cross-entropy user passes: bad labels and
dtypes must fail with one clear message, and autocast must give what `hidden @ weight.T` would give."""

from __future__ import annotations

import pytest
import torch

from cptrain.ops.chunked_ce import linear_cross_entropy
from tests.ops.interpreted import assert_interpreted_ok
from tests.ops.test_chunked_ce import IGNORE, grads_of, make_case

VOCAB = 50  # make_case's default


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 7, -1, -3])
@pytest.mark.parametrize("chunk_size", [4, None])
def test_out_of_range_label_is_an_error(bad, chunk_size):
    hidden, weight, labels = make_case()
    labels[30] = bad  # in the last chunk: not just the first one is checked
    with pytest.raises(ValueError, match=rf"labels must be in \[0, {VOCAB}\).*got {bad}"):
        linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)


def test_other_ignore_index_is_not_out_of_range():
    hidden, weight, labels = make_case()
    labels[labels == IGNORE] = -1
    want = linear_cross_entropy(hidden, weight, torch.where(labels == -1, IGNORE, labels))
    got = linear_cross_entropy(hidden, weight, labels, ignore_index=-1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8])
def test_labels_must_be_integer_ids(dtype):
    hidden, weight, labels = make_case(n=6)
    with pytest.raises(ValueError, match="labels must be int64 or int32"):
        linear_cross_entropy(hidden, weight, labels.clamp(min=0).to(dtype))


def test_int32_labels_match_int64():
    hidden, weight, labels = make_case(n=9)
    want = grads_of(lambda: linear_cross_entropy(hidden, weight, labels, chunk_size=4), hidden, weight)
    got = grads_of(lambda: linear_cross_entropy(hidden, weight, labels.int(), chunk_size=4), hidden, weight)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_integer_hidden_is_an_error():
    _, _, labels = make_case(n=5)
    with pytest.raises(ValueError, match="hidden and weight must be floating point"):
        linear_cross_entropy(torch.ones(5, 16, dtype=torch.int64), torch.ones(VOCAB, 16, dtype=torch.int64),
                             labels)


def test_under_autocast_matches_explicit_bf16_and_keeps_fp32_grads():
    """fp32 hidden and weight under autocast: the matmul runs in bf16 as `hidden @ weight.T` would, and the
    fp32 leaves get fp32 gradients; bf16 activations with an fp32 weight (mixed precision's usual pair) too."""
    hidden, weight, labels = make_case(n=21)
    h16, w16 = (t.detach().bfloat16().requires_grad_() for t in (hidden, weight))
    kw = dict(reduction="mean", z_loss=1e-2, chunk_size=8)
    want = grads_of(lambda: linear_cross_entropy(h16, w16, labels, **kw), h16, w16)
    for make_hidden in (lambda: hidden, lambda: hidden.bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = grads_of(lambda: linear_cross_entropy(make_hidden(), weight, labels, **kw), hidden, weight)
        assert got[1].dtype == got[2].dtype == torch.float32
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w.float(), rtol=0, atol=0)


def test_without_autocast_mixed_dtypes_still_refused():
    hidden, weight, labels = make_case(n=4)
    with pytest.raises(ValueError, match="hidden is torch.bfloat16 but weight is torch.float32"):
        linear_cross_entropy(hidden.bfloat16(), weight, labels)


_INTERPRETED = """
import pytest, torch
from cptrain.ops.chunked_ce import linear_cross_entropy
from test_chunked_ce import make_case
for bad in (50, -2):
    h, w, y = make_case(n=21, v=50)
    y[17] = bad
    with pytest.raises(ValueError, match="labels must be in"):
        linear_cross_entropy(h, w, y, chunk_size=8, impl="triton")
print("ok")
"""


def test_out_of_range_label_is_an_error_on_the_triton_path():
    assert_interpreted_ok(_INTERPRETED)


def test_tensors_on_different_devices_are_an_error():
    hidden, weight, labels = make_case(n=4)
    with pytest.raises(ValueError, match="must be on one device"):
        linear_cross_entropy(hidden, weight.detach().to("meta"), labels)
