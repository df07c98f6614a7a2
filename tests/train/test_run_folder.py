"""What a launch may do to an existing run folder: refuse before writing, never mix two runs, never lose a
committed checkpoint, and leave a finished run untouched (CPU, the debug preset, real files)."""

import json
from pathlib import Path

import pytest

from cptrain import checkpoint
from cptrain.configtools import ConfigError
from cptrain.train import run
from tests.train.tiny_runs import debug_cfg, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smollm_tokenizer):
    return make_corpus(tmp_path_factory, smollm_tokenizer)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    """A finished 6-step run with committed checkpoints at steps 3 and 6, shared read-only by the tests below
    (each test that changes a run folder copies it first)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run(debug_cfg(run_dir, corpus))
    return run_dir


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under the run folder with its size and modification time."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _logged_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_relaunching_a_finished_run_changes_nothing(finished, corpus):
    before = _snapshot(finished)
    assert run(debug_cfg(finished, corpus)) == {"complete_at": 6}
    assert _snapshot(finished) == before


def test_fresh_start_into_a_folder_with_checkpoints_is_refused_untouched(finished, corpus):
    before = _snapshot(finished)
    with pytest.raises(ConfigError, match="already holds checkpoints.*step-3, step-6"):
        run(debug_cfg(finished, corpus, "checkpoint.resume=never", "train.steps=2"))
    assert _snapshot(finished) == before


def test_launch_with_another_model_shape_is_refused_before_writing(finished, tmp_path, corpus):
    run_dir = _copy(finished, tmp_path / "run")
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match="n_layers 2 -> 3"):
        run(debug_cfg(run_dir, corpus, "model.overrides={vocab_size=49152, n_layers=3}", "train.steps=8"))
    assert _snapshot(run_dir) == before  # config.resolved.toml and model_args.json as the checkpoints' run left them


def test_a_model_smaller_than_its_tokenizer_is_refused(tmp_path, corpus):
    with pytest.raises(ConfigError, match="vocab_size .512. is smaller than its tokenizer's 49152"):
        run(debug_cfg(tmp_path / "run", corpus, "model.overrides={}"))
    assert not (tmp_path / "run").exists()


def test_resume_path_is_only_the_starting_point(finished, tmp_path, corpus):
    """A branch from another run's step 3 that is pre-empted at step 5: relaunching the same command goes on
    from the branch's own step 5, not from step 3 again (a SLURM requeue relaunches with the same arguments)."""
    branch = tmp_path / "branch"
    start = str(finished / "checkpoints" / "step-3")
    args = (f"checkpoint.resume='{start}'", "train.steps=8", "checkpoint.every_steps=0")
    assert run(debug_cfg(branch, corpus, *args, "train.stop_at_step=5")) == {"stopped_at": 5}
    summary = run(debug_cfg(branch, corpus, *args))
    assert summary["steps"] == 8
    assert _logged_steps(branch) == [4, 5, 6, 7, 8]


def test_branch_from_a_checkpoint_at_or_past_train_steps_is_refused(finished, tmp_path, corpus):
    start = str(finished / "checkpoints" / "step-6")
    with pytest.raises(ConfigError, match="saved at step 6.*nothing to train"):
        run(debug_cfg(tmp_path / "branch", corpus, f"checkpoint.resume='{start}'", "train.steps=6"))


def test_a_missing_resume_path_is_a_config_error(tmp_path, corpus):
    with pytest.raises(ConfigError, match="not a committed step folder"):
        run(debug_cfg(tmp_path / "run", corpus, f"checkpoint.resume='{tmp_path / 'nowhere'}'"))


def test_fresh_start_keeps_an_earlier_runs_metrics(tmp_path, corpus):
    """A folder whose earlier run saved no checkpoint: the new run starts at step 0 with its own metrics.jsonl,
    the old lines kept beside it."""
    run_dir = tmp_path / "run"
    no_ckpt = ("checkpoint.every_steps=0", "checkpoint.save_final=false", "train.steps=2")
    run(debug_cfg(run_dir, corpus, *no_ckpt))
    run(debug_cfg(run_dir, corpus, *no_ckpt))
    assert _logged_steps(run_dir) == [1, 2]
    assert (run_dir / "metrics.prev-1.jsonl").is_file()
    assert [r["step"] for r in map(json.loads, (run_dir / "metrics.prev-1.jsonl").read_text().splitlines())
            if "loss" in r] == [1, 2]
    assert (run_dir / "config.resolved.prev-1.toml").is_file()  # the settings of those metrics, beside them


def test_a_resume_with_other_settings_keeps_the_config_it_replaces(tmp_path, corpus, capsys):
    """Resuming with a lower lr (after a loss spike) used to overwrite config.resolved.toml, losing what the
    steps before were trained with: the old file is kept as config.resolved.before-step-N.toml and the
    console lists the changes; a resume with the same settings leaves no copy."""
    run_dir = tmp_path / "run"
    run(debug_cfg(run_dir, corpus, "train.stop_at_step=3"))
    run(debug_cfg(run_dir, corpus, "train.stop_at_step=4"))
    assert not list(run_dir.glob("config.resolved.before-*"))
    capsys.readouterr()
    run(debug_cfg(run_dir, corpus, "optim.lr=1e-3"))
    kept = run_dir / "config.resolved.before-step-4.toml"
    assert "lr = 0.003" in kept.read_text() and "lr = 0.001" in (run_dir / "config.resolved.toml").read_text()
    out = capsys.readouterr().out
    assert "optim.lr: 0.003 -> 0.001" in out and kept.name in out


def test_no_heldout_data_skips_the_eval_and_a_too_long_warmup_is_named(tmp_path, corpus, capsys):
    summary = run(debug_cfg(tmp_path / "run", corpus, "data.eval_fraction=0", "train.steps=2",
                            "checkpoint.every_steps=0", "schedule.warmup_steps=5",
                            "model.overrides={vocab_size=49152, max_seq_len=32}"))
    assert summary["before"] is None and summary["after"] is None and summary["steps"] == 2
    out = capsys.readouterr().out
    assert "no held-out data" in out
    assert "schedule.warmup_steps = 5 is more than train.steps = 2" in out
    assert "warning: train.seq_len = 64 is longer than the model's 32 positions" in out


def test_saving_a_committed_step_again_keeps_the_old_one_until_the_new_one_commits(finished, tmp_path, corpus):
    """checkpoint.save over a committed step folder: a save that fails halfway leaves the committed one whole
    (and still found by resume); a save that succeeds replaces it and leaves nothing beside it."""
    import torch

    from cptrain.models.build import build_model
    from cptrain.optim import build_optimizer
    from cptrain.parallel.dims import build_mesh, init_distributed, shutdown

    cfg = debug_cfg(tmp_path / "run", corpus)
    run_dir = _copy(finished, tmp_path / "run")
    step_dir = run_dir / "checkpoints" / "step-6"
    before = _snapshot(step_dir)
    env = init_distributed("cpu")
    try:
        model = build_model(cfg.model, cfg.precision, build_mesh(cfg.parallel, env), torch.device("cpu"),
                            seq_len=64, micro_batch_size=2)
        optimizer = build_optimizer(model, cfg.optim, "cpu")
        with pytest.raises(Exception):  # the data state cannot be pickled: fails after the DCP shards are written
            checkpoint.save(step_dir, model, optimizer, train_state={"step": 6}, data_state={"f": lambda: 0},
                            keep_latest_k=2)
        assert _snapshot(step_dir) == before
        assert checkpoint.find_resume(run_dir, "auto") == step_dir
        checkpoint.save(step_dir, model, optimizer, train_state={"step": 6}, data_state={}, keep_latest_k=2)
    finally:
        shutdown()
    assert (step_dir / checkpoint.MARKER).is_file() and (step_dir / "model").is_dir()
    assert _snapshot(step_dir) != before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-3", "step-6"]


def test_a_stop_on_the_last_step_finishes_the_run(tmp_path, corpus):
    """A stop agreed on the last step (a pre-emption signal late in the run, or stop_at_step = steps): the
    checkpoint is saved and the run still ends as a complete one, with its final eval and report; a relaunch
    then finds it complete."""
    run_dir = tmp_path / "run"
    summary = run(debug_cfg(run_dir, corpus, "train.stop_at_step=6", "checkpoint.save_final=false"))
    assert summary["steps"] == 6 and summary["after"] is not None
    assert json.loads((run_dir / "report" / "summary.json").read_text())["steps"] == 6
    assert [p.name for p in checkpoint.committed_steps(run_dir / "checkpoints")] == ["step-3", "step-6"]
    assert run(debug_cfg(run_dir, corpus)) == {"complete_at": 6}


def test_resume_with_another_number_of_ranks(finished, tmp_path, corpus, capsys):
    """A checkpoint whose train_state says 2 ranks wrote it, resumed by 1: refused before anything is built or
    written, unless the data stream may restart (then weights and optimizer resume, the data starts over)."""
    run_dir = _copy(finished, tmp_path / "run")
    state_file = run_dir / "checkpoints" / "step-6" / "train_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "world_size": 2}))
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match="saved by 2 ranks, this job has 1.*load_data_state = false"):
        run(debug_cfg(run_dir, corpus, "train.steps=8"))
    assert _snapshot(run_dir) == before
    summary = run(debug_cfg(run_dir, corpus, "train.steps=8", "data.on_resume_mismatch=restart"))
    assert summary["steps"] == 8
    assert "the data stream restarts at the resumed step" in capsys.readouterr().out


def test_mixture_stages_continue_at_the_resumed_step_when_the_data_restarts(tmp_path, corpus):
    """A run stopped at step 3 and resumed with checkpoint.load_data_state = false (a new data stream): the
    stage that starts at step 3 mixes steps 4-6, as in an uninterrupted run, not stage 0 again."""
    root, _ = corpus
    halves = ("a", sorted(p.name for p in root.iterdir())[:20]), ("b", sorted(p.name for p in root.iterdir())[20:])
    for name, files in halves:
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text((root / f).read_text())
    mix = (f"data.sources=[{{name='a', path='{tmp_path / 'a'}', format='txt'}}, "
           f"{{name='b', path='{tmp_path / 'b'}', format='txt'}}]",
           "data.stages=[{start_step=3, weights={a=0.0, b=1.0}}]", "checkpoint.every_steps=0")
    run_dir = tmp_path / "run"
    assert run(debug_cfg(run_dir, corpus, *mix, "train.stop_at_step=3")) == {"stopped_at": 3}
    run(debug_cfg(run_dir, corpus, *mix, "checkpoint.load_data_state=false"))
    report = json.loads((run_dir / "report" / "data.json").read_text())
    assert report["first_step"] == 3
    first, second = report["stages"]
    assert first["tokens"] == 0 and second["tokens"] > 0
    assert second["realized_shares"]["a"] == 0.0
