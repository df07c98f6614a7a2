"""The console ETA of the first reported step of a launch (a fresh run or a resume) is not zero."""

from cptrain.metrics import MetricsLogger


def _values(step_time_s: float) -> dict:
    return {"loss": 2.0, "lr": 1e-4, "tokens_per_s": 100.0, "step_time_s": step_time_s}


def test_first_progress_line_has_an_eta(tmp_path, capsys):
    log = MetricsLogger(tmp_path, total_steps=8, enabled=True)
    log.progress(1, _values(10.0))  # 7 steps to go at about 10 s each
    line = capsys.readouterr().out
    assert "eta 1m10s" in line, line
    log.close()


def test_first_progress_line_after_resume_has_an_eta(tmp_path, capsys):
    log = MetricsLogger(tmp_path, total_steps=8, enabled=True)
    log.progress(7, _values(12.0))  # resumed at step 6: one step to go
    line = capsys.readouterr().out
    assert "eta 0m12s" in line, line
    log.close()
