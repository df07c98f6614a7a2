"""`cptrain dedup` flags: a text key keeps the value as typed, and an error set by a flag blames the flag."""

from __future__ import annotations

import pytest

from cptrain.configtools import ConfigError
from cptrain.data.dedup import main
from cptrain.data.dedup_config import load_dedup_config

BASE = ['input.paths=["in/*.jsonl"]', 'output.dir="out"']


def config_file(tmp_path, extra: str = "") -> str:
    path = tmp_path / "dedup.toml"
    path.write_text('[input]\npaths = ["x/*.jsonl"]\n[output]\ndir = "out"\n' + extra)
    return str(path)


def test_slurm_time_flag_is_the_text_typed(tmp_path, capsys):
    assert main([config_file(tmp_path), "--slurm.time", "12:00:00", "--dry-run"]) == 0
    assert 'time = "12:00:00"' in capsys.readouterr().out
    cfg = load_dedup_config(
        None, [*BASE, "slurm.time=12:00:00", "slurm.partition=2024-01-01", "slurm.qos=7", "language=true"]
    )
    assert cfg.slurm.time == "12:00:00" and cfg.slurm.partition == "2024-01-01"
    assert cfg.slurm.qos == "7" and cfg.language == "true"


def test_flags_for_other_keys_keep_their_toml_type():
    cfg = load_dedup_config(
        None, [*BASE, "slurm.cpus_per_task=4", "minhash.threshold=0.7", "slurm.wait=false"]
    )
    assert cfg.slurm.cpus_per_task == 4 and cfg.minhash.threshold == 0.7 and cfg.slurm.wait is False
    with pytest.raises(ConfigError, match=r"slurm.cpus_per_task: expected an integer, got datetime.time"):
        load_dedup_config(None, [*BASE, "slurm.cpus_per_task=12:00:00"])


def test_an_unquoted_time_in_the_file_says_to_quote_it(tmp_path):
    path = config_file(tmp_path, "[slurm]\ntime = 12:00:00\n")
    with pytest.raises(ConfigError, match=rf"{path}: slurm.time: expected a string, .* write it in quotes"):
        load_dedup_config(path)


def test_errors_set_by_a_flag_blame_the_flag_not_the_file(tmp_path):
    path = config_file(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_dedup_config(path, ["minhash.threshold=1.5"])
    assert str(e.value).startswith("command-line flag --minhash.threshold: minhash.threshold = 1.5")
    assert path not in str(e.value) and e.value.key == "minhash.threshold"
    with pytest.raises(
        ConfigError, match="^command-line flag --minhash.rows: minhash.bands and minhash.rows"
    ):
        load_dedup_config(path, ["minhash.rows=4"])


def test_errors_set_in_the_file_still_blame_the_file(tmp_path):
    path = config_file(tmp_path, "[minhash]\nbands = 10\n")
    with pytest.raises(ConfigError, match=rf"^{path}: minhash.bands and minhash.rows go together"):
        load_dedup_config(path, ["slurm.qos=x"])
