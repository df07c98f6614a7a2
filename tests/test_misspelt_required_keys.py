"""A misspelt model.path / data.sources (or its section) is reported as the unknown key it is, with the
closest valid key, not as the required key being missing."""

import pytest

from cptrain.cli import main

SOURCE = '[[data.sources]]\npath = "corpus.jsonl"\n'
MODEL = '[model]\npath = "builtin:smollm2-135m"\n'


@pytest.mark.parametrize(
    "recipe, unknown, suggested",
    [
        ('[model]\npth = "builtin:smollm2-135m"\n' + SOURCE, "model.pth", "model.path"),
        ('[modle]\npath = "builtin:smollm2-135m"\n' + SOURCE, "modle", "model"),
        (MODEL + '[[data.source]]\npath = "corpus.jsonl"\n', "data.source", "data.sources"),
    ],
)
def test_misspelt_required_key_is_named(tmp_path, capsys, recipe, unknown, suggested):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe)
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"unknown key '{unknown}'; did you mean '{suggested}'?" in err, err
    assert "missing" not in err, err


def test_misspelt_override_of_a_required_key_is_named(tmp_path, capsys):
    path = tmp_path / "recipe.toml"
    path.write_text(SOURCE)  # the model comes from the command line
    assert main(["run", str(path), "model.pth=builtin:smollm2-135m", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "command-line override 'model.pth=builtin:smollm2-135m'" in err, err
    assert "unknown key 'model.pth'; did you mean 'model.path'?" in err, err
