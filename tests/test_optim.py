"""Parameter groups: no decay on norms/biases, LR multipliers for embeddings and lm_head, freezing."""

import pytest
import torch

from cptrain.config import OptimConfig
from cptrain.configtools import ConfigError
from cptrain.models.decoder import Decoder
from cptrain.models.presets import get_preset
from cptrain.optim import adamw_kernel, apply_freeze, build_optimizer, param_groups


def model(**shape):
    m = Decoder(get_preset("debug").replace(**shape))
    m.init_weights()
    return m


def group_of(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_groups_decay_and_multipliers():
    m = model(qkv_bias=True, family="qwen2")
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, embedding_lr_mult=0.1, lm_head_lr_mult=0.5)
    groups = param_groups(m, cfg)
    assert group_of(groups, m.embed_tokens.weight)["lr"] == pytest.approx(1e-4)
    assert group_of(groups, m.lm_head.weight)["lr"] == pytest.approx(5e-4)
    attn = m.layers["0"].self_attn
    assert group_of(groups, attn.q_proj.weight)["weight_decay"] == 0.1
    assert group_of(groups, attn.q_proj.bias)["weight_decay"] == 0.0
    assert group_of(groups, m.norm.weight)["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(m.parameters()))  # every parameter once, tied ones included once


def test_tied_embedding_counts_once_in_embedding_group():
    m = model(tie_embeddings=True)
    groups = param_groups(m, OptimConfig(embedding_lr_mult=0.2, lm_head_lr_mult=3.0))
    assert group_of(groups, m.lm_head.weight)["lr_mult"] == 0.2


def test_freeze_by_pattern_and_optimizer_skips_frozen():
    m = model()
    frozen = apply_freeze(m, ["embed_tokens.*", "layers.0.*"])
    assert "embed_tokens.weight" in frozen and "layers.0.mlp.up_proj.weight" in frozen
    opt = build_optimizer(m, OptimConfig(), "cpu")
    trainable = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(m.embed_tokens.weight) not in trainable and id(m.layers["1"].mlp.up_proj.weight) in trainable
    before = m.embed_tokens.weight.clone()
    m(torch.randint(0, 512, (1, 8)), labels=torch.randint(0, 512, (1, 8))).backward()
    opt.step()
    assert torch.equal(before, m.embed_tokens.weight)
    with pytest.raises(ConfigError, match="match no parameter"):
        apply_freeze(model(), ["encoder.*"])


def test_triton_kernel_is_refused_on_cpu_and_auto_picks_torch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="optim.fused='triton' needs a CUDA device"):
        build_optimizer(model(), OptimConfig(fused="triton"), "cpu")
    opt = build_optimizer(model(), OptimConfig(), "cpu")
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["foreach"]


def test_a_freeze_pattern_for_a_tied_lm_head_names_the_shared_weight():
    m = model(tie_embeddings=True)
    with pytest.raises(ConfigError, match=r"\['lm_head.\*'\] match no parameter.*'lm_head.\*': lm_head.weight is "
                                          r"tied to embed_tokens.weight.*freeze it as 'embed_tokens.weight'"):
        apply_freeze(m, ["lm_head.*"])
    with pytest.raises(ConfigError, match="match no parameter") as untied:
        apply_freeze(model(), ["lm_head.bias"])  # an untied model: nothing to say about tying
    assert "tied" not in str(untied.value)
    assert apply_freeze(model(tie_embeddings=True), ["embed_tokens.weight"]) == ["embed_tokens.weight"]


def test_a_refused_freeze_leaves_every_parameter_trainable():
    """One bad pattern among good ones: nothing is frozen (the patterns are checked before any is applied)."""
    m = model()
    with pytest.raises(ConfigError, match=r"\['encoder.\*'\] match no parameter"):
        apply_freeze(m, ["layers.0.*", "encoder.*"])
    assert all(p.requires_grad for p in m.parameters())
    with pytest.raises(ConfigError, match="froze everything"):
        apply_freeze(m, ["*"])
    assert all(p.requires_grad for p in m.parameters())


def test_the_kernel_check_needs_no_model(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="optim.fused='triton' needs a CUDA device") as refused:
        adamw_kernel("triton", "cpu")
    assert refused.value.key == "optim.fused"
    assert [adamw_kernel(k, "cpu") for k in ("auto", "on", "off")] == ["off", "on", "off"]
