"""A resume whose saved data position the new settings cannot continue (train.micro_batch_size changed since the
save) is refused by the loader's own check before the model is built and before anything in the run folder is
made or renamed: a branch into a new run folder leaves none behind, and a run folder holding only its checkpoints
(copied to another machine) stays as it was. The ways out the message names then work (CPU, the debug preset,
real files)."""

import json
import shutil
from pathlib import Path

import pytest

from cptrain.data import DataError
from cptrain.train import run
from tests.train.tiny_runs import debug_cfg, make_corpus

REFUSAL = (r"train\.micro_batch_size: 2 -> 1.*data\.on_resume_mismatch=restart"
           r".*checkpoint\.load_data_state=false")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smollm_tokenizer):
    return make_corpus(tmp_path_factory, smollm_tokenizer)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, corpus):
    """A run of train.micro_batch_size = 2 stopped at step 3 of 6, its checkpoint committed; read-only."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    assert run(debug_cfg(run_dir, corpus, "train.stop_at_step=3")) == {"stopped_at": 3}
    return run_dir


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under the run folder with its size and modification time."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*"))}


def _first_step(run_dir: Path) -> int:
    return json.loads((run_dir / "report" / "data.json").read_text())["first_step"]


def test_a_branch_with_another_micro_batch_size_is_refused_before_its_run_folder_is_made(stopped, tmp_path, corpus):
    branch = tmp_path / "branch"
    step_3 = f"checkpoint.resume='{stopped / 'checkpoints' / 'step-3'}'"
    with pytest.raises(DataError, match=REFUSAL):
        run(debug_cfg(branch, corpus, step_3, "train.micro_batch_size=1"))
    assert not branch.exists()
    # the way out it names: weights and optimizer from step 3, the data stream started over there
    summary = run(debug_cfg(branch, corpus, step_3, "train.micro_batch_size=1", "data.on_resume_mismatch=restart"))
    assert summary["steps"] == 6 and _first_step(branch) == 3


def test_a_run_folder_of_only_checkpoints_is_left_as_it_was(stopped, tmp_path, corpus):
    """The run's own checkpoints, copied without the rest of its folder: a refused relaunch makes no samples/,
    report/ or metrics.jsonl beside them."""
    run_dir = tmp_path / "run"
    shutil.copytree(stopped / "checkpoints", run_dir / "checkpoints")
    before = _snapshot(run_dir)
    with pytest.raises(DataError, match=REFUSAL):
        run(debug_cfg(run_dir, corpus, "train.micro_batch_size=1"))
    assert _snapshot(run_dir) == before
    summary = run(debug_cfg(run_dir, corpus, "train.micro_batch_size=1", "checkpoint.load_data_state=false"))
    assert summary["steps"] == 6 and _first_step(run_dir) == 3
