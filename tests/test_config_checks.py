"""Load-time checks: keys a recipe leaves out, world-size-free batch and parallel rules, ranges, and whether
the recipe or a command-line override is blamed. All of these must fail `cptrain run --dry-run`."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cptrain.cli import main
from cptrain.config import load_config
from cptrain.configtools import ConfigError

BASE = ["model.preset=debug", "model.init=random", "model.tokenizer=tok"]
MODEL = '[model]\npreset = "debug"\ninit = "random"\ntokenizer = "tok"\n'
SOURCES = '[[data.sources]]\npath = "builtin:python-stdlib"\n'


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def err(*overrides) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, *overrides])
    return str(e.value)


def dry_run_error(capsys, *argv) -> str:
    assert main(["run", *map(str, argv), "--dry-run"]) == 2
    return capsys.readouterr().err


# 1. sections a recipe leaves out are validated too; keys without a usable default are reported as missing


def test_recipe_without_model_names_the_missing_keys(tmp_path, capsys):
    path = recipe(tmp_path, SOURCES)
    msg = dry_run_error(capsys, path)
    assert f"{path}: model.path and model.preset are both missing from the recipe" in msg
    assert "builtin:smollm2-135m" in msg and "debug" in msg


def test_recipe_without_data_sources_is_refused(tmp_path, capsys):
    path = recipe(tmp_path, MODEL)
    assert "data.sources is missing from the recipe" in dry_run_error(capsys, path)
    with pytest.raises(ConfigError, match="data.sources is missing"):
        load_config(recipe(tmp_path, MODEL + "[data]\nsources = []\n"))


def test_config_from_overrides_alone_may_omit_data():
    """Tests and benchmarks build configs in code and feed their own batches; they can still ask for data."""
    assert load_config(None, BASE).data.sources == []
    with pytest.raises(ConfigError, match="data.sources is missing from the config"):
        load_config(None, BASE, need_data=True)
    with pytest.raises(ConfigError, match="model.path and model.preset are both missing from the config"):
        load_config(None, [])


def test_minimal_recipe_loads_with_every_default(tmp_path):
    cfg = load_config(recipe(tmp_path, MODEL + SOURCES))
    assert cfg.train.steps == 100 and cfg.eval.every_steps == 0 and cfg.parallel.tp == 1


@pytest.mark.parametrize("name", sorted(p.name for p in Path("recipes").glob("*.toml")))
def test_shipped_recipes_load_and_dry_run_output_loads_again(name, tmp_path):
    cfg = load_config(Path("recipes") / name)
    again = load_config(recipe(tmp_path, cfg.to_toml()))
    assert again.to_toml() == cfg.to_toml()


# 2. checks that need no world size run at load time


def test_unknown_model_override_suggests_the_field(tmp_path, capsys):
    msg = dry_run_error(capsys, "recipes/tiny-cpu.toml", "model.overrides.n_layerz=3")
    assert "unknown key 'model.overrides.n_layerz'; did you mean 'model.overrides.n_layers'?" in msg
    with pytest.raises(ConfigError, match=r"r\.toml: unknown key 'model\.overrides\.dimm'"):
        load_config(recipe(tmp_path, MODEL + SOURCES + "[model.overrides]\ndimm = 3\n"))
    assert "model.overrides.n_layers: expected an integer, got 'x'" in err("model.overrides={n_layers='x'}")
    assert load_config(None, [*BASE, "model.overrides={n_layers=3, rope_theta=5e5}"]).model.overrides == {
        "n_layers": 3, "rope_theta": 5e5}


def test_global_batch_must_be_a_multiple_of_micro_batch(capsys):
    msg = err("train.micro_batch_size=2", "train.global_batch_size=7")
    assert "train.global_batch_size = 7 is not allowed: a multiple of train.micro_batch_size = 2" in msg
    msg = dry_run_error(capsys, "recipes/tiny-cpu.toml", "train.global_batch_size=7")
    assert "train.global_batch_size = 7" in msg
    for ok in (0, 6):
        load_config(None, [*BASE, "train.micro_batch_size=2", f"train.global_batch_size={ok}"])


@pytest.mark.parametrize("dim", ["tp", "pp", "cp", "dp_replicate"])
def test_unimplemented_parallel_dims_fail_at_load_time(dim, capsys):
    msg = dry_run_error(capsys, "recipes/tiny-cpu.toml", f"parallel.{dim}=2")
    assert f"parallel.{dim} = 2 is not allowed" in msg and "only FSDP data parallelism" in msg
    assert load_config(None, [*BASE, "parallel.dp_shard=4"]).parallel.dp_shard == 4  # world size: at launch


# 3. an error in a command-line override is blamed on the override, not the recipe file


def test_override_errors_name_the_override(capsys):
    msg = dry_run_error(capsys, "recipes/tiny-cpu.toml", "train.steps=abc")
    assert "command-line override 'train.steps=abc': train.steps: expected an integer, got 'abc'" in msg
    assert "tiny-cpu.toml" not in msg
    assert "command-line override 'trian.steps=3': unknown key 'trian'" in err("trian.steps=3")
    assert "command-line override \"data.sources=[{path=''}]\": data.sources[0].path" in err(
        "data.sources=[{path=''}]")


def test_recipe_errors_still_name_the_recipe(tmp_path, capsys):
    path = recipe(tmp_path, MODEL + SOURCES + "[train]\nsteps = 'abc'\n")
    msg = dry_run_error(capsys, path, "optim.lr=1e-4")
    assert f"{path}: train.steps: expected an integer" in msg and "override" not in msg


def test_the_last_override_of_a_key_is_blamed():
    assert "override 'train.steps=-1'" in err("train.steps=4", "train.steps=-1")


# 4. negative counts and steps


@pytest.mark.parametrize("key, meaning", [("eval.every_steps", "0: only before and after training"),
                                          ("eval.sample_tokens", "0: no sample"),
                                          ("train.stop_at_step", "0: run all steps")])
def test_negative_steps_and_counts_are_refused(key, meaning):
    msg = err(f"{key}=-3")
    assert f"{key} = -3 is not allowed: >= 0 ({meaning})" in msg
    load_config(None, [*BASE, f"{key}=0"])


def test_empty_sample_prompt_needs_no_sample_tokens():
    assert "eval.sample_prompt = '' is not allowed" in err("eval.sample_prompt=''")
    load_config(None, [*BASE, "eval.sample_prompt=''", "eval.sample_tokens=0"])


# 5. model.tiled_mlp takes a tile count as a TOML integer too


def test_tiled_mlp_tile_count_from_toml_and_override(tmp_path):
    from cptrain.ops.tiled_mlp import resolve_num_tiles

    from_toml = load_config(recipe(tmp_path, MODEL + "tiled_mlp = 4\n" + SOURCES))
    for cfg in (from_toml, load_config(None, [*BASE, "model.tiled_mlp=4"]),
                load_config(None, [*BASE, "model.tiled_mlp='4'"])):
        assert cfg.model.tiled_mlp == "4"
        assert resolve_num_tiles(cfg.model.tiled_mlp, 128, 64, 128, 2) == 4
    assert load_config(None, [*BASE, "model.tiled_mlp=auto"]).model.tiled_mlp == "auto"
    for bad in ("0", "-2", "'x'"):
        assert "'off', 'auto' or a tile count >= 1" in err(f"model.tiled_mlp={bad}")
    assert "model.tiled_mlp: expected str or int, got True" in err("model.tiled_mlp=true")


def test_a_literal_or_bool_key_says_which_values_it_takes(tmp_path, capsys):
    """A Literal in a union is named by its values and a bool by true and false, as TOML writes them (this
    used to say "expected Literal or bool")."""
    msg = dry_run_error(capsys, "recipes/tiny-cpu.toml", "data.add_bos=yes")
    assert ("command-line override 'data.add_bos=yes': data.add_bos: expected 'auto', true or false, "
            "got 'yes' (str)") in msg
    with pytest.raises(ConfigError, match=r"r\.toml: data\.add_bos: expected 'auto', true or false, got 1 "):
        load_config(recipe(tmp_path, MODEL + SOURCES + "[data]\nadd_bos = 1\n"))
    for ok in ("'auto'", "true", "false"):
        load_config(None, [*BASE, f"data.add_bos={ok}"])


def test_an_override_can_address_one_list_entry(tmp_path):
    """`data.sources[1].weight=3` changes only that source; a wrong index or a dotted index says how to
    address an entry."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\npreset = "debug"\ninit = "random"\ntokenizer = "builtin:smollm2-135m"\n'
                      '[[data.sources]]\npath = "a"\nweight = 1.0\n[[data.sources]]\npath = "b"\nweight = 1.0\n')
    cfg = load_config(recipe, ["data.sources[1].weight=3"])
    assert [s.weight for s in cfg.data.sources] == [1.0, 3.0]
    with pytest.raises(ConfigError, match=r"'data.sources' has 2 entries, so there is no entry 2"):
        load_config(recipe, ["data.sources[2].weight=3"])
    with pytest.raises(ConfigError, match=r"'data.sources' is a list; address one entry as data.sources\[0\].weight"):
        load_config(recipe, ["data.sources.weight=3"])


# 6. on the command line a value for a text key is the text as typed, even where TOML reads another type


def test_text_keys_keep_override_values_as_typed(tmp_path):
    cfg = load_config(recipe(tmp_path, MODEL + SOURCES), [
        "eval.sample_prompt=12:00:00",  # TOML: a local time
        "model.path=1979-05-27T07:32:00Z",  # str | None; TOML: a datetime, whose str() would read differently
        "checkpoint.resume=1e-4",  # TOML: a float, str() would be 0.0001
        "data.sources[0].name=2024-01-01",  # a list entry's key; TOML: a date
        "data.sources[0].split=true",
    ])
    assert cfg.eval.sample_prompt == "12:00:00" and cfg.model.path == "1979-05-27T07:32:00Z"
    assert cfg.checkpoint.resume == "1e-4"
    assert cfg.data.sources[0].name == "2024-01-01" and cfg.data.sources[0].split == "true"


def test_other_keys_keep_the_toml_type_of_an_override():
    cfg = load_config(None, [*BASE, "train.steps=12", "optim.lr=1e-4", "logging.tensorboard=false"])
    assert cfg.train.steps == 12 and cfg.optim.lr == 1e-4 and cfg.logging.tensorboard is False
    # a list or table is not text: it still fails the str check, naming the key
    assert "eval.sample_prompt: expected a string, got [1, 2]" in err("eval.sample_prompt=[1, 2]")
    assert "train.steps: expected an integer, got datetime.time(12, 0)" in err("train.steps=12:00:00")


def test_an_unquoted_time_in_a_recipe_says_to_quote_it(tmp_path):
    path = recipe(tmp_path, MODEL + SOURCES + "[eval]\nsample_prompt = 12:00:00\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert ('eval.sample_prompt: expected a string, got datetime.time(12, 0) (time); TOML reads it unquoted '
            'as a time: write it in quotes, e.g. "12:00:00"') in str(e.value)


# 7. errors raised by a section's own checks name their key, so an override that set it is blamed


def test_check_errors_blame_the_override_that_set_the_key(tmp_path, capsys):
    path = recipe(tmp_path, MODEL + SOURCES)
    msg = dry_run_error(capsys, path, "model.init=pretrained")
    assert "command-line override 'model.init=pretrained': model.init = 'pretrained' needs model.path" in msg
    assert str(path) not in msg
    msg = dry_run_error(capsys, path, "precision.fp8=true")
    assert "command-line override 'precision.fp8=true': precision.fp8 = true: FP8 training is not" in msg
    assert str(path) not in msg


def test_data_source_and_stage_errors_blame_the_override_that_set_the_name(tmp_path, capsys):
    two = SOURCES + '[[data.sources]]\nname = "b"\npath = "builtin:python-stdlib"\n'
    path = recipe(tmp_path, MODEL + two + '[[data.stages]]\nstart_step = 10\nweights = {b = 2.0}\n')
    msg = dry_run_error(capsys, path, "data.stages[0].weights.nosuch=1.0")
    assert "command-line override 'data.stages[0].weights.nosuch=1.0': data.stages[0].weights.nosuch: no " \
           "source is named 'nosuch'" in msg
    msg = dry_run_error(capsys, path, "data.sources[1].name=python-stdlib")
    assert "command-line override 'data.sources[1].name=python-stdlib': data.sources[1].name = " in msg


def test_check_errors_set_in_the_recipe_still_blame_the_recipe(tmp_path, capsys):
    path = recipe(tmp_path, MODEL + SOURCES + "[precision]\nfp8 = true\n")
    msg = dry_run_error(capsys, path, "optim.lr=1e-4")
    assert f"{path}: precision.fp8 = true" in msg and "override" not in msg
    path = recipe(tmp_path, '[model]\npreset = "debug"\ninit = "random"\n' + SOURCES)
    msg = dry_run_error(capsys, path, "model.preset=debug")
    assert f"{path}: model.tokenizer is needed when model.path is unset" in msg


# 8. valid but probably unmeant schedules are warned about when the config is loaded


def test_wsd_warmup_running_into_the_decay_is_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="cptrain.config"):
        load_config(None, [*BASE, "train.steps=100", "schedule.warmup_steps=90"])
    assert ("schedule.warmup_steps = 90 overlaps the WSD decay: with train.steps = 100 the decay "
            "(schedule.decay_fraction = 0.2) takes the last 20 steps, from step 80") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cptrain.config"):
        load_config(None, [*BASE, "train.steps=100", "schedule.warmup_steps=60", "schedule.decay_steps=50"])
    assert "schedule.warmup_steps = 60 overlaps the WSD decay" in caplog.text
    assert "the decay (schedule.decay_steps = 50) takes the last 50 steps, from step 50" in caplog.text


@pytest.mark.parametrize("overrides", [
    ["schedule.warmup_steps=80"],  # warmup ends where the decay starts: no stable phase, but no overlap
    ["schedule.warmup_steps=90", "schedule.decay_fraction=0"],  # no decay to run into
    ["schedule.warmup_steps=90", "schedule.name=cosine"],
    ["schedule.warmup_steps=150"],  # longer than the run: the trainer's own "never reaches" warning instead
])
def test_schedules_without_an_overlap_are_not_warned(overrides, caplog):
    with caplog.at_level(logging.WARNING, logger="cptrain.config"):
        load_config(None, [*BASE, "train.steps=100", *overrides])
    assert "overlaps" not in caplog.text


@pytest.mark.parametrize("steps", [2, 8])
def test_a_wsd_warmup_as_long_as_the_run_is_warned(steps, caplog):
    """The warmup wins while it lasts: ending with the run, it leaves the (now never empty) decay no step."""
    with caplog.at_level(logging.WARNING, logger="cptrain.config"):
        load_config(None, [*BASE, f"train.steps={steps}", f"schedule.warmup_steps={steps}"])
    assert (f"schedule.warmup_steps = {steps} lasts all train.steps = {steps}: the learning rate peaks on the "
            "last step and the WSD decay (schedule.decay_fraction = 0.2, the last ") in caplog.text
    assert "never runs, so the run does not end at schedule.min_lr_ratio" in caplog.text


def test_only_the_first_rank_warns(monkeypatch, caplog):
    monkeypatch.setenv("RANK", "3")  # every rank of a launch loads the config; one warning is enough
    with caplog.at_level(logging.WARNING, logger="cptrain.config"):
        load_config(None, [*BASE, "train.steps=100", "schedule.warmup_steps=90"])
    assert "overlaps" not in caplog.text


def test_dry_run_shows_the_schedule_warning_on_stderr():
    argv = ["run", "recipes/tiny-cpu.toml", "schedule.warmup_steps=7", "--dry-run"]
    run = subprocess.run([sys.executable, "-m", "cptrain.cli", *argv], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0 and "warmup_steps = 7" in run.stdout
    assert "schedule.warmup_steps = 7 overlaps the WSD decay: with train.steps = 8" in run.stderr
