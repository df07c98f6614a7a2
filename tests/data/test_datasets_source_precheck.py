"""`format = "datasets"` sources of local files are checked before training like the other sources: their
first rows are read (streamed, at most PREFLIGHT_ROWS, until one usable text) when the loader is built, and a
source with no usable text there is refused naming the source and its column, before the model is built or the
run folder made. It used to fail only at the first batch. Real local json and parquet files through
`datasets.load_dataset`, the real tokenizer; no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptrain.configtools import ConfigError
from cptrain.data import DataError, build_train_loader
from cptrain.data.checks import PREFLIGHT_ROWS
from tests.data.data_helpers import data_config, datasets_source, doc_text, write_jsonl

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets", reason="format = 'datasets' sources need the datasets package")

KW = {"seq_len": 40, "micro_batch_size": 2}


pytestmark = pytest.mark.usefixtures("offline_datasets")


def _body_files(tmp_path: Path, builder: str) -> list[str]:
    """Two files of 20 documents each, their text in a `body` column: none has `text`."""
    files = []
    for name in ("a", "b"):
        texts = [doc_text(name, i) for i in range(20)]
        if builder == "json":
            files.append(str(write_jsonl(tmp_path / "data" / f"{name}.jsonl", texts, field="body")))
        else:
            (tmp_path / "data").mkdir(exist_ok=True)
            pq.write_table(
                pa.table({"body": texts, "id": list(range(20))}), tmp_path / "data" / f"{name}.parquet"
            )
            files.append(str(tmp_path / "data" / f"{name}.parquet"))
    return files


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("builder", ["json", "parquet"])
def test_a_source_without_its_text_column_is_refused_when_the_loader_is_built(
    tmp_path, smollm_tokenizer, builder, streaming
):
    files = _body_files(tmp_path, builder)
    cfg = data_config([datasets_source(builder, files, streaming=streaming)], eval_fraction=0.0)
    fields = "['body']" if builder == "json" else "['body', 'id']"
    with pytest.raises(DataError) as refused:
        build_train_loader(cfg, smollm_tokenizer, **KW)
    assert str(refused.value) == (
        f"data.sources[0] (source 'hf', format 'datasets', path '{builder}'): no usable text in column 'text' "
        f"in all 40 rows of 2 files (missing_field: 40); the rows have the fields {fields} "
        "(set data.sources[0].text_field)"
    )
    # the column it names trains
    cfg = data_config([datasets_source(builder, files, streaming=streaming, text_field="body")], eval_fraction=0.0)
    assert next(build_train_loader(cfg, smollm_tokenizer, **KW))["input_ids"].shape == (2, 40)


def test_the_check_reads_only_the_first_rows(tmp_path, smollm_tokenizer):
    """Past PREFLIGHT_ROWS rows without text it stops and says so; one usable row ends it, so a later file
    that `datasets` cannot parse is not read up front (training reaches it, and names it, in its turn)."""
    many = write_jsonl(
        tmp_path / "data" / "many.jsonl", [f"row {i}" for i in range(PREFLIGHT_ROWS + 500)], "body"
    )
    cfg = data_config([datasets_source("json", [str(many)], streaming=False)], eval_fraction=0.0)
    with pytest.raises(
        DataError,
        match=rf"no usable text in column 'text' in the first {PREFLIGHT_ROWS} rows "
        rf"\(missing_field: {PREFLIGHT_ROWS}\)",
    ):
        build_train_loader(cfg, smollm_tokenizer, **KW)

    good = write_jsonl(tmp_path / "data" / "good.jsonl", [doc_text("good", i) for i in range(5)])
    broken = tmp_path / "data" / "broken.jsonl"
    broken.write_text('{"text": "cut off')
    cfg = data_config([datasets_source("json", [str(good), str(broken)])], eval_fraction=0.0, shuffle_files=False)
    loader = build_train_loader(cfg, smollm_tokenizer, **KW)
    with pytest.raises(ConfigError, match="datasets cannot read .*broken.jsonl"):
        for _ in range(10):
            next(loader)


def test_a_run_is_refused_before_the_model_and_its_run_folder(tmp_path, smollm_tokenizer, tmp_path_factory):
    """A tiny real run (debug preset, CPU) on a source whose rows lack the text column."""
    from cptrain.train import run
    from tests.train.tiny_runs import debug_cfg, make_corpus

    files = _body_files(tmp_path, "json")
    source = f"data.sources=[{{name='hf', format='datasets', path='json', data_files={json.dumps(files)}}}]"
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"source 'hf'.*'text'"):  # the wording: the loader test above
        run(debug_cfg(run_dir, make_corpus(tmp_path_factory, smollm_tokenizer), source))
    assert not run_dir.exists()
