"""model.overrides break no shape rule and carry a usable rope_scaling, checked when the config loads (so
`cptrain run --dry-run` refuses them) and naming the override; a config.json's rope_scaling is refused as
clearly when the shape is read at run time."""

import pytest
import transformers

from cptrain.cli import main
from cptrain.config import load_config
from cptrain.configtools import ConfigError
from cptrain.models.build import model_args

BASE = ["model.preset=debug", "model.init=random", "model.tokenizer=tok"]


def err(*overrides) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, *overrides])
    return str(e.value)


def dry_run_error(capsys, *overrides) -> str:
    assert main(["run", "recipes/tiny-cpu.toml", *overrides, "--dry-run"]) == 2
    return capsys.readouterr().err


# rope_scaling: each type's sub-keys and their values, unknown types


def test_dry_run_refuses_a_yarn_rope_scaling_without_factor(capsys):
    """This one used to pass --dry-run and end the real run in a KeyError traceback from models/rope.py."""
    msg = dry_run_error(capsys, 'model.overrides.rope_scaling={type="yarn"}')
    assert msg.count("\n") == 1 and "Traceback" not in msg
    assert ("command-line override 'model.overrides.rope_scaling={type=\"yarn\"}': "
            "model.overrides.rope_scaling = {'type': 'yarn'} is not allowed: rope_scaling type 'yarn' needs "
            "rope_scaling.factor: a number >= 1") in msg


@pytest.mark.parametrize("scaling, why", [
    ('{type="llama3", factor=8.0}', "rope_scaling type 'llama3' needs rope_scaling.low_freq_factor"),
    ('{type="yarm", factor=2.0}', "rope_scaling type 'yarm' is not supported (use one of default, linear, "
                                  "llama3, yarn); did you mean 'yarn'?"),
    ("{factor=2.0}", "rope_scaling needs a type: one of default, linear, llama3, yarn"),
    ('{type="linear", factor=0.5}', "rope_scaling.factor must be a number >= 1 (the context extension "
                                    "ratio), got 0.5"),
    ('{type="yarn", factor=4, beta_fast=0}', "rope_scaling.beta_fast must be a number > 0, got 0"),
    ('{type="yarn", factor=4, beta_fats=16}', "rope_scaling.beta_fats is not a key of type 'yarn'; did "
                                              "you mean 'beta_fast'?"),
    ('{type="linear", factor="2"}', "rope_scaling.factor must be a number >= 1 (the context extension "
                                    "ratio), got '2'"),
])
def test_rope_scaling_overrides_are_checked_at_load_time(scaling, why):
    msg = err(f"model.overrides.rope_scaling={scaling}")
    assert (f"command-line override 'model.overrides.rope_scaling={scaling}': "
            "model.overrides.rope_scaling = ") in msg
    assert why in msg


def test_usable_rope_scaling_overrides_load():
    """HF's `rope_type` spelling is taken too, and kept as `type` as well (export and inspect read that)."""
    yarn = load_config(None, [*BASE, 'model.overrides.rope_scaling={type="yarn", factor=4.0}'])
    assert yarn.model.overrides["rope_scaling"] == {"type": "yarn", "factor": 4.0}
    linear = load_config(None, [*BASE, 'model.overrides.rope_scaling={rope_type="linear", factor=2}'])
    assert linear.model.overrides["rope_scaling"] == {"rope_type": "linear", "factor": 2, "type": "linear"}
    assert model_args(linear.model).rope_scaling["type"] == "linear"
    llama3 = ('{rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, '
              "original_max_position_embeddings=8192}")
    load_config(None, [*BASE, f"model.overrides.rope_scaling={llama3}"])


def test_a_rope_scaling_override_on_a_model_path_is_checked_at_load_time():
    """The rest of a model.path shape is read from its config.json at run time; rope_scaling needs none of
    it."""
    msg = err("model.path=builtin:smollm2-135m", 'model.overrides.rope_scaling={type="yarn"}')
    assert "model.overrides.rope_scaling = {'type': 'yarn'} is not allowed" in msg


def test_a_bad_rope_scaling_in_config_json_is_refused_naming_it(tmp_path):
    """transformers reads a yarn beta_fast of 0; the decoder would divide by it when the model is built."""
    transformers.LlamaConfig(vocab_size=311, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 0}
                             ).save_pretrained(tmp_path)
    cfg = load_config(None, [f"model.path='{tmp_path}'"])
    with pytest.raises(ConfigError, match=r"^model: rope_scaling\.beta_fast must be a number > 0, got 0$"):
        model_args(cfg.model)


# shape rules between fields, on a preset


def test_dry_run_refuses_heads_that_do_not_divide(capsys):
    """`n_heads=3` on the debug preset (n_kv_heads 2) used to pass --dry-run; only the run refused it."""
    msg = dry_run_error(capsys, "model.overrides.n_heads=3")
    assert ("command-line override 'model.overrides.n_heads=3': model.overrides.n_heads = 3 is not allowed: "
            "n_heads=3 must be divisible by n_kv_heads=2") in msg


@pytest.mark.parametrize("overrides, why", [
    ("model.overrides.n_kv_heads=0", "model.overrides.n_kv_heads = 0 is not allowed: n_kv_heads=0 must be "
                                     ">= 1"),
    ("model.overrides.dim=60", "model.overrides.dim = 60 is not allowed: head size 15 must be even for "
                               "RoPE"),
    ("model.overrides.dim=66", "model.overrides.dim = 66 is not allowed: dim=66 must be divisible by "
                               "n_heads=4"),
    ("model.overrides.head_dim=15", "model.overrides.head_dim = 15 is not allowed: head size 15 must be "
                                    "even"),
    ("model.overrides.rope_theta=0", "model.overrides.rope_theta = 0.0 is not allowed: rope_theta=0 must "
                                     "be > 0"),
])
def test_shape_overrides_on_a_preset_are_checked_at_load_time(overrides, why):
    assert why in err(overrides)


def test_a_shape_rule_on_overridden_fields_alone_is_checked_for_a_model_path():
    """n_heads 6 with n_kv_heads 4 is wrong whatever config.json says; n_heads 6 alone may fit its shape."""
    msg = err("model.path=builtin:smollm2-135m", "model.overrides={n_heads=6, n_kv_heads=4}")
    assert "model.overrides.n_heads = 6 is not allowed: n_heads=6 must be divisible by n_kv_heads=4" in msg
    assert load_config(None, [*BASE, "model.path=builtin:smollm2-135m", "model.overrides.n_heads=6"])


def test_a_shape_set_in_the_recipe_blames_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\npreset = "debug"\ninit = "random"\ntokenizer = "tok"\n'
                      "overrides = { n_heads = 3 }\n[[data.sources]]\npath = \"builtin:python-stdlib\"\n")
    assert main(["run", str(recipe), "--dry-run"]) == 2
    msg = capsys.readouterr().err
    assert f"{recipe}: model.overrides.n_heads = 3 is not allowed" in msg and "override '" not in msg
