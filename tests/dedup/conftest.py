from __future__ import annotations

import pytest

from cptrain.data.dedup_config import load_dedup_config
from tests.dedup.corpus import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup-corpus")
    info = write_corpus(root)
    info["root"] = root
    info["inputs"] = str(root / "in")
    return info


def dedup_config(inputs: str, out, *overrides: str):
    return load_dedup_config(None, [f'input.paths=["{inputs}"]', f'output.dir="{out}"', *overrides])


@pytest.fixture(scope="session")
def default_run(corpus, tmp_path_factory):
    """Exact + MinHash with the default settings and a length filter, 2 tasks on 2 worker processes."""
    pytest.importorskip("datatrove")
    from cptrain.data.dedup_run import run_dedup

    out = tmp_path_factory.mktemp("dedup-default") / "run"
    cfg = dedup_config(
        corpus["inputs"], out, "filters.min_chars=100", "executor.tasks=2", "executor.workers=2"
    )
    report = run_dedup(cfg)
    return {"out": out, "report": report, "cfg": cfg}


@pytest.fixture(scope="session")
def filters_run(corpus, tmp_path_factory):
    """Gopher + C4 filters and exact dedup only, parquet output, in one process."""
    pytest.importorskip("datatrove")
    from cptrain.data.dedup_run import run_dedup

    out = tmp_path_factory.mktemp("dedup-filters") / "run"
    cfg = dedup_config(
        corpus["inputs"],
        out,
        "filters.gopher_repetition=true",
        "filters.gopher_quality=true",
        "filters.c4=true",
        "minhash.enabled=false",
        'output.format="parquet"',
        "executor.tasks=2",
        "executor.workers=1",
    )
    report = run_dedup(cfg)
    return {"out": out, "report": report, "cfg": cfg}
