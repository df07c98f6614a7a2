"""Inline-table and inline-array overrides: a text key inside keeps the value as typed, like a direct
`slurm.time=12:00:00`; other keys keep their TOML type, and a wrong type is still reported by key."""

from __future__ import annotations

import pytest

from cptrain.config import load_config
from cptrain.configtools import ConfigError
from cptrain.data.dedup import main as dedup_main
from cptrain.data.dedup_config import load_dedup_config

DEDUP = ['input.paths=["in/*.jsonl"]', 'output.dir="out"']
RUN = ["model.preset=debug", "model.init=random", "model.tokenizer=tok"]


def test_slurm_time_in_an_inline_table_is_the_text_typed(tmp_path, capsys):
    cfg = load_dedup_config(None, [*DEDUP, 'slurm={time=12:00:00, partition=2024-01-01, job_name="a,=b", qos=7}'])
    assert cfg.slurm.time == "12:00:00" and cfg.slurm.partition == "2024-01-01"
    assert cfg.slurm.job_name == "a,=b" and cfg.slurm.qos == "7"
    path = tmp_path / "dedup.toml"
    path.write_text('[input]\npaths = ["x/*.jsonl"]\n[output]\ndir = "out"\n')
    assert dedup_main([str(path), "--slurm", "{time=12:00:00}", "--dry-run"]) == 0
    assert 'time = "12:00:00"' in capsys.readouterr().out


def test_text_items_of_an_inline_array_are_the_text_typed():
    cfg = load_dedup_config(None, ['input.paths=[2024-01-01, 1e-4, "a"]', 'output.dir="out"'])
    assert cfg.input.paths == ["2024-01-01", "1e-4", "a"]


def test_run_config_text_keys_in_inline_tables_are_the_text_typed():
    cfg = load_config(None, [
        *RUN,
        "eval={sample_prompt=12:00:00}",
        'model={preset="debug", init="random", tokenizer="tok", path=1979-05-27 07:32:00Z}',
        'data.sources=[{path="builtin:python-stdlib", name=2024-01-01, split=true, weight=2}]',
    ])
    assert cfg.eval.sample_prompt == "12:00:00" and cfg.model.path == "1979-05-27 07:32:00Z"
    source = cfg.data.sources[0]
    assert source.name == "2024-01-01" and source.split == "true" and source.weight == 2.0


def test_non_text_keys_in_an_inline_table_keep_their_toml_type():
    cfg = load_dedup_config(
        None, [*DEDUP, "slurm={time=12:00:00, cpus_per_task=4, wait=false}", "minhash={threshold=0.7}"]
    )
    assert cfg.slurm.time == "12:00:00" and cfg.slurm.cpus_per_task == 4 and cfg.slurm.wait is False
    assert cfg.minhash.threshold == 0.7
    # a free-form table has no types to go by: its values stay as TOML reads them, as with a direct key
    cfg = load_config(None, [
        *RUN, "eval={sample_prompt=12:00:00}",
        'model={preset="debug", init="random", tokenizer="tok", overrides={n_layers=3}}',
    ])
    assert cfg.model.overrides == {"n_layers": 3} and cfg.eval.sample_prompt == "12:00:00"


def test_a_wrong_type_in_an_inline_table_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_dedup_config(None, [*DEDUP, "slurm={time=12:00:00, cpus_per_task=12:00:00}"])
    assert str(e.value).startswith(
        "command-line flag --slurm: slurm.cpus_per_task: expected an integer, got datetime.time(12, 0)"
    )
    with pytest.raises(ConfigError) as e:
        load_config(None, [*RUN, "eval={sample_prompt=12:00:00}", "train={steps=12:00:00}"])
    assert str(e.value).startswith(
        "command-line override 'train={steps=12:00:00}': train.steps: expected an integer, got datetime.time"
    )
