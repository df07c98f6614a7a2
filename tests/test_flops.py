"""The FLOP convention against numbers worked out by hand (see the comments)."""

import pytest

from cptrain.flops import (
    attention_forward_flops,
    flop_params,
    flops_per_token,
    mfu,
    peak_bf16_flops,
    training_flops,
)
from cptrain.models.presets import get_preset

# debug preset: vocab 512, dim 64, 2 layers, 4 heads (head 16), 2 kv heads, ffn 128, untied.
# block = attn 64*16*(2*4 + 2*2) = 12288 + mlp 3*64*128 = 24576 + norms 2*64 = 36992
# non-embedding = 2*36992 + 64 (final norm) = 74048; + lm_head 512*64 = 32768 -> 106816
DEBUG_N = 106_816


def test_flop_params_debug_counts_lm_head():
    assert flop_params(get_preset("debug")) == DEBUG_N


def test_tying_does_not_change_the_count():
    args = get_preset("debug")
    assert flop_params(args.replace(tie_embeddings=True)) == flop_params(args)


def test_one_document():
    # attention: 2 matmuls * 2 * (10^2 / 2) pairs * 4 heads * 16 head_dim * 2 layers = 25600
    args = get_preset("debug")
    assert attention_forward_flops(args, [10]) == 25_600
    assert training_flops(args, [10]) == 6 * DEBUG_N * 10 + 3 * 25_600  # 6_485_760


def test_document_lengths_not_row_length():
    # docs 3 and 7: pairs 4.5 + 24.5 = 29 -> 4 * 29 * 4 * 16 * 2 = 14848
    args = get_preset("debug")
    assert attention_forward_flops(args, [3, 7]) == 14_848
    assert training_flops(args, [3, 7]) == 6 * DEBUG_N * 10 + 3 * 14_848  # 6_453_504
    assert training_flops(args, [3, 7]) < training_flops(args, [10])


def test_llama32_1b_at_8k():
    # non-embedding 973_146_112 (tied) + lm_head 128256*2048 = 262_668_288 -> 1_235_814_400
    # attention per token: 2 * 8192 * 32 heads * 64 * 16 layers = 536_870_912, x3 for fwd+bwd
    args = get_preset("llama3.2-1b")
    assert flop_params(args) == 1_235_814_400
    assert flops_per_token(args, 8192) == 6 * 1_235_814_400 + 3 * 536_870_912  # 9_025_499_136
    # the goal: 65K tokens/s on one H100 is ~59% MFU
    assert mfu(flops_per_token(args, 8192) * 65_000, 1.0, "NVIDIA H100 80GB HBM3") == pytest.approx(
        0.5932, abs=1e-4)


def test_llama31_8b_params():
    # 32 * (4096*128*80 + 3*4096*14336 + 2*4096) + 4096 + lm_head 128256*4096
    assert flop_params(get_preset("llama3.1-8b")) == 6_979_588_096 + 525_336_576


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA B200", 2250e12),
    ("Tesla T4", None),
    ("cpu", None),
])
def test_peak_bf16_flops(name, peak):
    assert peak_bf16_flops(name) == peak


def test_mfu():
    assert mfu(989e12, 2.0, "NVIDIA H200") == pytest.approx(0.5)
    assert mfu(989e12, 2.0, "NVIDIA H200", n_gpus=2) == pytest.approx(0.25)
    assert mfu(989e12, 2.0, "Tesla T4") is None
