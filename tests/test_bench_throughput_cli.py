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
        "none",
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
