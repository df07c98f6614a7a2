"""What a run tells its user on the console and in metrics.jsonl when something goes quietly wrong: steps whose
loss or gradient norm is NaN/inf, the tokens trained so far (CPU, the debug preset, real files)."""

import json

import pytest

from cptrain.train import run
from tests.train.tiny_runs import debug_cfg, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smollm_tokenizer):
    return make_corpus(tmp_path_factory, smollm_tokenizer)


def _steps(run_dir) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if "loss" in r]


@pytest.mark.parametrize("skip", [True, False])
def test_non_finite_steps_are_reported_and_labelled_as_what_happened(skip, tmp_path, corpus, capsys):
    """optim.lr = 1e6 drives the gradient norm to NaN within a few steps. The console says so (the progress
    line alone showed nothing with skip_nan_steps, and logging.every_steps > 1 hid it altogether), and
    metrics.jsonl's `skipped` is true only where the optimizer really left the weights alone: with
    train.skip_nan_steps = false the NaN steps are applied, and used to be labelled skipped all the same."""
    run_dir = tmp_path / "run"
    summary = run(debug_cfg(run_dir, corpus, "optim.lr=1e6", f"train.skip_nan_steps={str(skip).lower()}",
                            "logging.every_steps=100", "checkpoint.every_steps=0", "schedule.warmup_steps=0"))
    out = capsys.readouterr().out
    bad = [r for r in _steps(run_dir) if r["nonfinite"]]
    assert summary["nonfinite_steps"] >= 1
    assert summary["skipped_steps"] == (summary["nonfinite_steps"] if skip else 0)
    assert all(r["skipped"] is skip for r in bad)  # the last step is logged whatever logging.every_steps
    assert "non-finite loss or gradient norm" in out and "had a non-finite loss" in out
    assert ("the update was skipped" if skip else "the weights now hold NaN/inf") in out


def test_metrics_carry_the_tokens_trained_so_far(tmp_path, corpus):
    """tokens_seen (label tokens of all ranks since step 0) on every step line, as HF Trainer's
    num_input_tokens_seen or torchtitan's token count: the x axis of a CPT run's loss curve."""
    run_dir = tmp_path / "run"
    summary = run(debug_cfg(run_dir, corpus))
    steps = _steps(run_dir)
    running = 0
    for r in steps:
        running += r["label_tokens"]
        assert r["tokens_seen"] == running
    assert steps[-1]["tokens_seen"] == summary["tokens_seen"]


def test_ctrl_c_exits_with_where_to_resume_and_no_traceback(tmp_path, corpus):
    """SIGINT (Ctrl-C) mid-run: exit status 130, one line naming the checkpoint a relaunch resumes from (and that
    SIGTERM would have saved), not a KeyboardInterrupt traceback from deep inside the model."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(debug_cfg(run_dir, corpus, "train.steps=100000", "checkpoint.every_steps=2").to_toml())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cptrain.cli", "run", str(recipe)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = run_dir / "checkpoints" / "step-2" / "COMMITTED"
    deadline = time.monotonic() + 240
    while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "cptrain: interrupted; the newest committed checkpoint is " in err
    assert f"{run_dir / 'checkpoints'}/step-" in err and "send SIGTERM instead" in err


def test_relaunching_a_finished_run_with_other_settings_names_them(tmp_path, corpus, capsys):
    """A recipe edited and relaunched into the finished run's folder: nothing trains (as before), and the
    message says the edited settings were not used, instead of only "nothing to do"."""
    run_dir = tmp_path / "run"
    run(debug_cfg(run_dir, corpus, "train.steps=2", "checkpoint.every_steps=0"))
    capsys.readouterr()
    assert run(debug_cfg(run_dir, corpus, "train.steps=2", "checkpoint.every_steps=0")) == {"complete_at": 2}
    assert "differ" not in capsys.readouterr().out  # the same settings: no note
    again = run(debug_cfg(run_dir, corpus, "train.steps=2", "checkpoint.every_steps=0", "optim.lr=1e-4",
                          "data.sources[0].weight=2"))
    out = capsys.readouterr().out
    assert again == {"complete_at": 2} and "run already complete" in out
    assert "settings differ from the completed run's (data.sources[0].weight: 1.0 -> 2.0; optim.lr: 0.003 -> 0.0001)" in out


def test_a_corpus_smaller_than_the_run_is_said_to_repeat(tmp_path, smollm_tokenizer, capsys):
    """Three one-line documents feed 4 steps of 4 x 64 tokens: the stream starts over hundreds of times. Only
    report/data.json's epochs_started said so; the console now warns at the first checkpoint and at the end."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(3):
        (root / f"doc{i}.txt").write_text(f"hello world {i}\n")
    tok = tmp_path / "tok"
    smollm_tokenizer.save_pretrained(tok)
    run_dir = tmp_path / "run"
    run(debug_cfg(run_dir, (root, tok), "train.steps=4", "checkpoint.every_steps=2", "data.eval_fraction=0"))
    out = capsys.readouterr().out
    report = json.loads((run_dir / "report" / "data.json").read_text())
    epochs = report["sources"]["corpus"]["epochs_started"]
    assert epochs > 10
    assert "warning: at step 2 the training data repeats: 'corpus' read " in out
    assert f"warning: the training data repeated: 'corpus' read {epochs} times over" in out


def test_a_corpus_larger_than_the_run_gets_no_repeat_warning(tmp_path, corpus, capsys):
    run(debug_cfg(tmp_path / "run", corpus, "train.steps=2"))
    assert "repeat" not in capsys.readouterr().out


def test_a_rewind_to_an_own_step_that_is_not_taken_says_so(tmp_path, corpus, capsys):
    """checkpoint.resume = RUN/checkpoints/step-3 relaunched into RUN, which holds step-6 (rewinding after a loss
    spike): the run goes on from step 6, as documented for requeues, but used to say only "resumed from step-6"."""
    run_dir = tmp_path / "run"
    run(debug_cfg(run_dir, corpus))
    capsys.readouterr()
    step3 = run_dir / "checkpoints" / "step-3"
    run(debug_cfg(run_dir, corpus, f"checkpoint.resume='{step3}'", "train.steps=7"))
    out = capsys.readouterr().out
    assert f"resumed from {run_dir / 'checkpoints' / 'step-6'} at step 6" in out
    assert f"warning: checkpoint.resume = '{step3}' was not used" in out and "this run's newest is step-6" in out


def _strict_rows(path) -> list[dict]:
    """The file's lines as JSON, refusing the bare NaN / Infinity that Python's json accepts and strict readers
    (JavaScript's JSON.parse, Go's encoding/json) do not."""
    def refuse(token):
        raise ValueError(f"{path.name} holds {token}, which is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_diverged_run_stops_after_max_nonfinite_steps_in_a_row(tmp_path, corpus, capsys):
    """With the updates applied (skip_nan_steps = false) every step after the first NaN is NaN too: the run stops
    once train.max_nonfinite_steps of them came in a row, instead of spending all its steps, with one line through
    the CLI (exit 1) naming the steps and the checkpoints saved before and after the divergence; metrics.jsonl
    stays strict JSON (a NaN loss is null)."""
    from cptrain.cli import main

    run_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(debug_cfg(run_dir, corpus, "optim.lr=1e6", "train.skip_nan_steps=false", "train.steps=20",
                                "train.max_nonfinite_steps=3", "checkpoint.every_steps=1",
                                "checkpoint.keep_latest_k=0", "schedule.warmup_steps=0").to_toml())
    assert main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cptrain: error: steps ") and "3 in a row" in err[0], err
    rows = [r for r in _strict_rows(run_dir / "metrics.jsonl") if "loss" in r]
    bad = [r["step"] for r in rows if r["nonfinite"]]
    last = rows[-1]["step"]
    assert last < 20 and bad[-3:] == [last - 2, last - 1, last]
    assert all(r["loss"] is None or r["grad_norm"] is None for r in rows if r["nonfinite"])
    first_bad = last - 2
    assert f"steps {first_bad}-{last}" in err[0] and f"the newest usable checkpoint is step {first_bad - 1}" in err[0]
    assert f"checkpoints/step-{first_bad}," in err[0]  # saved with NaN weights: named, to be moved out
    assert not (run_dir / "report" / "summary.json").exists()


def test_max_nonfinite_steps_zero_never_stops(tmp_path, corpus):
    """0 keeps the old behaviour: every step runs, and the summary (a NaN loss as null) is strict JSON."""
    run_dir = tmp_path / "run"
    summary = run(debug_cfg(run_dir, corpus, "optim.lr=1e6", "train.skip_nan_steps=false",
                            "train.max_nonfinite_steps=0", "checkpoint.every_steps=0", "schedule.warmup_steps=0"))
    assert summary["steps"] == 6 and summary["nonfinite_steps"] >= 1
    _strict_rows(run_dir / "metrics.jsonl")
    after = json.loads((run_dir / "report" / "summary.json").read_text(), parse_constant=float)["after"]
    assert after["loss"] is None  # the held-out loss of NaN weights, as null rather than a bare NaN


def test_loss_mean_is_the_token_weighted_mean_since_the_line_before(tmp_path, corpus):
    """logging.every_steps = 3 writes steps 3 and 6 (and the last); their loss_mean is the mean per label token of
    the three steps each line covers, which the run with every_steps = 1 logs one by one."""
    run(debug_cfg(tmp_path / "a", corpus))
    run(debug_cfg(tmp_path / "b", corpus, "logging.every_steps=3"))
    every, sparse = _steps(tmp_path / "a"), _steps(tmp_path / "b")
    assert [r["step"] for r in sparse] == [3, 6]
    assert all(r["loss_mean"] == r["loss"] for r in every)
    for line in sparse:
        covered = [r for r in every if line["step"] - 3 < r["step"] <= line["step"]]
        want = sum(r["loss"] * r["label_tokens"] for r in covered) / sum(r["label_tokens"] for r in covered)
        assert line["loss"] == pytest.approx(covered[-1]["loss"], rel=1e-6)  # same data and init, same steps
        assert line["loss_mean"] == pytest.approx(want, rel=1e-6) and line["loss_mean"] != line["loss"]
