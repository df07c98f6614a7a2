"""Config errors name the key, the value and what is allowed, before anything heavy is built."""

import pytest

from cptrain.cli import main
from cptrain.config import load_config
from cptrain.configtools import ConfigError

BASE = ["model.preset=debug", "model.init=random", "model.tokenizer=tok"]


def err(*overrides) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, *overrides])
    return str(e.value)


def test_unknown_key_names_closest():
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in err("optim.lrr=1e-4")
    assert "unknown key 'trian'; did you mean 'train'?" in err("trian.steps=3")


def test_wrong_type_names_key_and_value():
    msg = err("train.steps='many'")
    assert "train.steps" in msg and "'many'" in msg and "integer" in msg


def test_impossible_values():
    assert "optim.lr = -0.001" in err("optim.lr=-1e-3")
    assert "schedule.decay_shape" in err("schedule.decay_shape='square'")
    assert "model.preset" in err("model.preset=llama9")


def test_heads_not_divisible_names_fields():
    """Refused when the config loads (overrides on a preset), and again by the model build for any shape."""
    from cptrain.models.presets import ModelArgs

    with pytest.raises(ConfigError, match="model.overrides.n_heads = 6 is not allowed: n_heads=6 must be "
                                          "divisible by n_kv_heads=4"):
        load_config(None, [*BASE, "model.overrides={n_heads=6, n_kv_heads=4}"])
    with pytest.raises(ConfigError, match="n_heads=6 must be divisible by n_kv_heads=4"):
        ModelArgs(n_heads=6, n_kv_heads=4).check()


def test_pretrained_needs_path():
    with pytest.raises(ConfigError, match="model.init = 'pretrained' needs model.path"):
        load_config(None, ["model.preset=debug"])


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text("[model]\npreset = 'debug'\ninit = 'random'\ntokenizer = 't'\n[optim]\nlr = 'fast'\n"
                   "[[data.sources]]\npath = 'builtin:python-stdlib'\n")
    with pytest.raises(ConfigError, match=r"r\.toml: optim\.lr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\npreset = "debug"\ninit = "random"\ntokenizer = "t"\n[train]\nsteps = 7\n'
                      '[[data.sources]]\npath = "builtin:python-stdlib"\n')
    assert main(["run", str(recipe), "optim.lr=5e-5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps = 7" in out and "lr = 5e-05" in out
    assert main(["run", str(recipe), "optim.lrr=5e-5"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def test_quickstart_recipe_is_valid():
    cfg = load_config("recipes/quickstart.toml")
    assert cfg.model.path == "builtin:smollm2-135m"
