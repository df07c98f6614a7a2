"""Config validation and the command line of `cptrain dedup` (no dedup is run here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cptrain.configtools import ConfigError
from cptrain.data.dedup import config_keys, help_text, main, parse_argv
from cptrain.data.dedup_config import load_dedup_config
from cptrain.data.dedup_lsh import TARGET_RECALL, choose_bands_rows, pair_probability

BASE = ['input.paths=["in/*.jsonl"]', 'output.dir="out"']


def test_defaults_are_the_tuned_layout():
    cfg = load_dedup_config(None, BASE)
    assert cfg.minhash.bands_rows() == (20, 8)
    assert cfg.executor.kind == "local" and cfg.exact.enabled and cfg.minhash.enabled


@pytest.mark.parametrize(
    "override, words",
    [
        ("minhash.band=4", ["unknown key 'minhash.band'", "did you mean 'minhash.bands'"]),
        ("exact.normalise=1", ["unknown key 'exact.normalise'", "did you mean 'exact.normalize'"]),
        ('minhash.bands="many"', ["minhash.bands", "'many'", "expected int"]),
        ("minhash.threshold=1.5", ["minhash.threshold", "1.5", "(0, 1)"]),
        ("minhash.ngram=0", ["minhash.ngram", "0", ">= 1"]),
        ('output.format="csv"', ["output.format", "'csv'", "'jsonl.gz'", "'parquet'"]),
        ('executor.kind="slrum"', ["executor.kind", "did you mean 'slurm'"]),
        ('slurm.time="4 hours"', ["slurm.time", "'4 hours'", "HH:MM:SS"]),
        ("filters.max_chars=10", []),  # fine alone; see the pair below
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override, words):
    if not words:
        load_dedup_config(None, [*BASE, override])
        return
    with pytest.raises(ConfigError) as e:
        load_dedup_config(None, [*BASE, override])
    for w in words:
        assert w in str(e.value)


def test_impossible_combinations():
    with pytest.raises(ConfigError, match="minhash.bands and minhash.rows go together"):
        load_dedup_config(None, [*BASE, "minhash.bands=10"])
    with pytest.raises(ConfigError, match="minhash.threshold"):
        load_dedup_config(None, [*BASE, "minhash.bands=10", "minhash.rows=5", "minhash.threshold=0.7"])
    with pytest.raises(ConfigError, match=r"filters.max_chars = 10 .*min_chars = 100"):
        load_dedup_config(None, [*BASE, "filters.min_chars=100", "filters.max_chars=10"])
    with pytest.raises(ConfigError, match="input.paths"):
        load_dedup_config(None, ['output.dir="out"'])


def test_toml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "dedup.toml"
    path.write_text('[input]\npaths = ["a"]\n[output]\ndir = "o"\n[minhash]\nrow = 3\n')
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'minhash.row'; did you mean 'minhash.rows'"):
        load_dedup_config(str(path))


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_threshold_picks_a_layout_that_catches_pairs_at_it(threshold):
    bands, rows = choose_bands_rows(threshold)
    assert pair_probability(threshold, bands, rows) >= TARGET_RECALL
    assert pair_probability(threshold - 0.3, bands, rows) < 0.5
    cfg = load_dedup_config(None, [*BASE, f"minhash.threshold={threshold}"])
    assert cfg.minhash.bands_rows() == (bands, rows)


def test_help_lists_every_key_as_a_flag():
    text = help_text()
    keys = [k for k, *_ in config_keys()]
    assert len(keys) > 30
    for key in keys:
        assert f"--{key} " in text
    # and every flag in the help is a key the config accepts
    flags = [
        line.split()[0][2:]
        for line in text.splitlines()
        if line.startswith("  --") and "." in line.split()[0]
    ]
    assert set(flags) <= set(keys)


def test_help_shows_sbatch_args_as_the_table_it_takes():
    assert "  --slurm.sbatch_args {KEY = VALUE, ...}\n" in help_text()
    assert "<CLASS" not in help_text()
    # the flag takes that form, or one key at a time; anything else names the key
    _, overrides, _ = parse_argv(
        ["--slurm.sbatch_args", '{account = "proj", exclusive = true}', "--slurm.sbatch_args.qos", "high"]
    )
    cfg = load_dedup_config(None, [*BASE, *overrides])
    assert cfg.slurm.sbatch_args == {"account": "proj", "exclusive": True, "qos": "high"}
    with pytest.raises(ConfigError, match=r"slurm\.sbatch_args: expected a table, got 'account=proj'"):
        load_dedup_config(None, [*BASE, *parse_argv(["--slurm.sbatch_args", "account=proj"])[1]])


def test_flags_become_overrides():
    path, overrides, dry = parse_argv(
        [
            "c.toml",
            "--input.paths",
            "a/*.jsonl",
            "--input.paths=b.parquet",
            "--minhash.bands",
            "10",
            "--minhash.rows=4",
            "--dry-run",
        ]
    )
    assert path == "c.toml" and dry
    cfg = load_dedup_config(None, [*overrides, 'output.dir="o"'])
    assert cfg.input.paths == ["a/*.jsonl", "b.parquet"]
    assert cfg.minhash.bands_rows() == (10, 4)


def test_main_dry_run_and_errors(tmp_path, capsys):
    cfg = tmp_path / "dedup.toml"
    cfg.write_text('[input]\npaths = ["x/*.jsonl"]\n[output]\ndir = "out"\n')
    assert main([str(cfg), "--minhash.threshold", "0.7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "threshold = 0.7" in out and "20 bands x 5 rows" in out
    with pytest.raises(ConfigError, match="--minhash.bands needs a value"):
        main([str(cfg), "--minhash.bands"])


def test_console_script_reports_config_errors(tmp_path):
    cfg = tmp_path / "dedup.toml"
    cfg.write_text('[input]\npaths = ["x/*.jsonl"]\n[output]\ndir = "out"\n')
    run = subprocess.run(
        [sys.executable, "-m", "cptrain.cli", "dedup", str(cfg), "--minhash.seeed", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "unknown key 'minhash.seeed'; did you mean 'minhash.seed'" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "cptrain.cli", "dedup", str(cfg), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "--minhash.bands INT" in run.stdout


def test_missing_inputs_name_the_pattern(tmp_path):
    from cptrain.data.dedup_run import resolve_inputs

    with pytest.raises(ConfigError, match=r"input.paths: nothing matches '.*nothere/\*.jsonl'"):
        resolve_inputs([str(tmp_path / "nothere/*.jsonl")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .jsonl"):
        resolve_inputs([str(tmp_path / "empty")])


def test_user_guide_documents_every_key():
    from pathlib import Path

    guide = (Path(__file__).parents[2] / "docs" / "dedup.md").read_text()
    missing = [key for key, *_ in config_keys() if f"| `{key}` |" not in guide]
    assert missing == []


def test_without_datatrove_the_package_and_dry_run_work_and_a_run_names_the_extra(tmp_path):
    # a child interpreter where `import datatrove` fails, as on an install without the dedup extra
    code = f"""
import sys
sys.modules["datatrove"] = None
import cptrain, cptrain.cli
from cptrain.data.dedup import main
(p := __import__("pathlib").Path({str(tmp_path)!r}) / "a.jsonl").write_text('{{"text": "x"}}\\n')
args = ["--input.paths", str(p), "--output.dir", str(p.parent / "out")]
assert main([*args, "--dry-run"]) == 0
sys.exit(main(args))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 1, run.stderr
    assert "pip install 'cptrain[dedup]'" in run.stderr
