"""q/k/v projected by one matmul over the concatenated weights == three matmuls: same loss, same gradient
for every parameter (fp32, CPU), with and without qkv bias, grouped-query heads, and through the varlen path."""

import pytest
import torch

from cptrain.models.decoder import Decoder
from cptrain.models.presets import get_preset


def loss_and_grads(fuse: bool, attention: str, **shape):
    torch.manual_seed(0)
    model = Decoder(get_preset("debug").replace(**shape))
    model.init_weights()
    model.set_attention_backend(attention)
    for block in model.layers.values():
        block.self_attn.fuse_qkv = fuse
    ids = torch.randint(0, 512, (2, 24))
    docs = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
    pos = torch.cat([torch.arange(10), torch.arange(14)]).unsqueeze(0).expand(2, -1).clone()
    pos[1] = torch.arange(24)
    extra = {}
    if attention == "varlen":
        extra = {"cu_seqlens": torch.tensor([0, 10, 24, 48], dtype=torch.int32), "max_seqlen": 128}
    loss = model(ids, pos, docs, torch.randint(0, 512, (2, 24)), **extra)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention", ["flex", "varlen"])
@pytest.mark.parametrize("shape", [{}, {"qkv_bias": True, "family": "qwen2"}])
def test_fused_qkv_matches_separate_projections(attention, shape):
    if attention == "flex":
        attention = "reference"  # the CPU stand-in for the document-masked path
    loss_f, grads_f = loss_and_grads(True, attention, **shape)
    loss_s, grads_s = loss_and_grads(False, attention, **shape)
    torch.testing.assert_close(loss_f, loss_s, rtol=1e-6, atol=1e-6)
    assert grads_f.keys() == grads_s.keys() and any("q_proj" in n for n in grads_f)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_s[name], rtol=1e-5, atol=1e-6, msg=name)
