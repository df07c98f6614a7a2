from cptrain.cli import main
from cptrain.models.presets import PRESETS, count_parameters


def test_inspect_llama31_8b(capsys):
    assert main(["inspect-model", "llama3.1-8b"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248 (8.03B)" in out


def test_preset_sizes_match_published_counts():
    expected = {"llama3.2-1b": 1.236e9, "smollm2-135m": 0.1345e9, "qwen2.5-7b": 7.62e9, "qwen3-8b": 8.19e9,
                "mistral-7b": 7.25e9}
    for name, n in expected.items():
        total = count_parameters(PRESETS[name])["total"]
        assert abs(total - n) / n < 0.01, (name, total)



def test_tiled_mlp_estimate_only_where_auto_tiles(capsys):
    """At 128K tokens auto tiles the llama3.2-1b MLP: a third activation figure drops one block's
    [tokens, ffn] intermediates (3 bf16 tensors) from the full-checkpointing one. At 8K auto does not tile
    and no such line is printed."""
    from cptrain.models.inspect import GIB, memory_estimate

    args = PRESETS["llama3.2-1b"]
    long = memory_estimate(args, 131072, 1)
    dropped = 131072 * args.ffn_dim * 2 * 3 / GIB
    assert abs(long["activations_full_ckpt"] - long["activations_full_ckpt_tiled"] - dropped) < 1e-9
    assert memory_estimate(args, 8192, 1)["activations_full_ckpt_tiled"] is None
    assert main(["inspect-model", "llama3.2-1b", "--seq-len", "131072"]) == 0
    assert "with full checkpointing and model.tiled_mlp" in capsys.readouterr().out
    assert main(["inspect-model", "llama3.2-1b"]) == 0
    assert "tiled_mlp" not in capsys.readouterr().out
