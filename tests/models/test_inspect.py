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
