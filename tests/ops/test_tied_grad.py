"""A tied embedding's one gradient buffer (ops/tied_grad.py) gives the same gradients as autograd's two."""

from __future__ import annotations

import torch

from cptrain.models.decoder import Decoder
from cptrain.models.presets import get_preset
from cptrain.ops.tied_grad import GradSlot, lookup_sharing_grad


def _grads(model: Decoder, ids: torch.Tensor, labels: torch.Tensor, share: bool) -> dict:
    model.zero_grad(set_to_none=True)
    model._shares_tied_grad = lambda: share  # the instance's answer: the same model, either path
    model(ids, labels=labels).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def _model(dtype: torch.dtype) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(get_preset("debug").replace(tie_embeddings=True))
    model.init_weights()
    model.loss_impl = "fused_chunked"
    return model.to(dtype)


def _batch(vocab: int):
    gen = torch.Generator().manual_seed(1)
    # repeated tokens (rows of the lookup's gradient summed), and labels partly ignored
    ids = torch.randint(0, 40, (2, 24), generator=gen)
    labels = torch.randint(0, vocab, (2, 24), generator=gen)
    labels[0, :5] = -100
    return ids, labels


def test_shared_buffer_matches_two_gradients_fp32():
    model = _model(torch.float32)
    ids, labels = _batch(model.args.vocab_size)
    assert Decoder._shares_tied_grad(model)  # the real condition holds for this model
    want, got = _grads(model, ids, labels, False), _grads(model, ids, labels, True)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=k)
    # tokens never looked up have only the head's gradient: it reached the buffer
    head_rows = want["embed_tokens.weight"][40:]
    assert head_rows.abs().sum() > 0
    torch.testing.assert_close(got["embed_tokens.weight"][40:], head_rows, rtol=1e-5, atol=1e-7)


def test_shared_buffer_in_bf16_is_as_close_to_fp32_as_two_gradients():
    """bf16: the two paths round differently (one rounding of the fp32 row sums added to the head's
    gradient, against two), so each is compared with the fp32 model's gradients."""
    assert_bf16_buffer_as_close_to_fp32(torch.device("cpu"))


def assert_bf16_buffer_as_close_to_fp32(device: torch.device) -> None:
    """The bf16 model's gradients with the one buffer are, per parameter, no further from the fp32 model's
    than autograd's two-gradient path is (within 25%)."""
    ref_model, model = _model(torch.float32).to(device), _model(torch.bfloat16).to(device)
    ids, labels = (t.to(device) for t in _batch(model.args.vocab_size))
    ref = _grads(ref_model, ids, labels, False)
    want, got = _grads(model, ids, labels, False), _grads(model, ids, labels, True)
    for k in ref:
        err_want = (want[k].float() - ref[k]).abs().max()
        err_got = (got[k].float() - ref[k]).abs().max()
        assert err_got <= 1.25 * err_want + 1e-6, (k, float(err_got), float(err_want))


def test_no_slot_grad_means_the_lookup_alone():
    torch.manual_seed(0)
    weight = torch.randn(10, 4, requires_grad=True)
    ids = torch.tensor([[1, 1, 3]])
    lookup_sharing_grad(ids, weight, GradSlot()).sum().backward()
    want = torch.zeros(10, 4)
    want[1], want[3] = 2.0, 1.0
    torch.testing.assert_close(weight.grad, want)


def test_evaluation_and_untied_models_take_the_plain_lookup():
    model = Decoder(get_preset("debug").replace(tie_embeddings=True))
    model.loss_impl = "fused_chunked"
    with torch.no_grad():
        assert not model._shares_tied_grad()
    assert model._shares_tied_grad()
    model.loss_impl = "naive"
    assert not model._shares_tied_grad()
    untied = Decoder(get_preset("debug"))
    untied.loss_impl = "fused_chunked"
    assert not untied._shares_tied_grad()
    model.loss_impl, model.compute_dtype = "fused_chunked", torch.bfloat16  # fp32 weights cast for compute
    assert not model._shares_tied_grad()
