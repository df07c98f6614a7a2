"""slurm.sbatch_args written as #SBATCH lines: booleans as a bare flag or nothing, TOML dates and times in
ISO 8601 (no space inside the value), tables and arrays refused naming the key. Read from a real recipe
file through the dedup config loader."""

from __future__ import annotations

import pytest

from cptrain.configtools import ConfigError
from cptrain.data.dedup_config import load_dedup_config
from cptrain.data.dedup_slurm import sbatch_directives


def _args(tmp_path, table: str) -> dict:
    recipe = tmp_path / "dedup.toml"
    recipe.write_text(f'[input]\npaths = ["{tmp_path}"]\n[output]\ndir = "{tmp_path / "out"}"\n'
                      f"[slurm.sbatch_args]\n{table}\n")
    return load_dedup_config(recipe, []).slurm.sbatch_args


def test_values_become_sbatch_text(tmp_path):
    args = _args(tmp_path, 'account = "proj"\nnodes = 2\nexclusive = true\nrequeue = false\n'
                           "begin = 2024-01-01T10:00:00\ndeadline = 2024-02-01")
    assert sbatch_directives(args) == {"account": "proj", "nodes": "2", "exclusive": "",
                                       "begin": "2024-01-01T10:00:00", "deadline": "2024-02-01"}


def test_a_table_value_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"slurm\.sbatch_args\.gres"):
        sbatch_directives(_args(tmp_path, 'gres = ["gpu:1"]'))
