"""benchmarks/throughput.py's folders: the work folder goes where --work-dir says, results to --results-dir."""

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
throughput = importlib.import_module("throughput")


def test_work_dir_holds_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OUT", raising=False)
    argv = [
        "--question",
        "1",
        "--peers",
        "cptrain",
        "--budget-s",
        "0.001",  # every variant is listed as skipped: nothing runs
        "--results-dir",
        str(tmp_path / "results"),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert throughput.main(argv) == 0
    (run,) = (tmp_path / "work").iterdir()
    assert run.name.startswith("throughput-q1-") and (run / "throughput-q1.log").is_file()
    assert len(list((tmp_path / "results").glob("*-throughput-q1.md"))) == 1


def test_help_documents_work_dir(capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--work-dir WORK_DIR where each run makes its work folder" in text
    assert str(Path(throughput.harness.REPO) / "runs" / "bench") in text


@pytest.mark.parametrize("args, message", [
    (["--peers", "cptrain,hf-ligre"], "--peers: unknown hf-ligre; choose from cptrain, hf, hf-liger, torchtitan"),
    (["--recipe", "no-such.toml"], "--recipe no-such.toml: no such file"),
    (["--shape", "llama3-1b"], "--shape llama3-1b: not a cptrain preset"),
])
def test_bad_arguments_stop_before_anything_runs(tmp_path, capsys, args, message):
    """A typo used to run nothing for that peer (or no cptrain at all) and still write a results table."""
    with pytest.raises(SystemExit) as e:
        throughput.main(["--question", "1", "--results-dir", str(tmp_path / "results"),
                         "--work-dir", str(tmp_path / "work"), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()
