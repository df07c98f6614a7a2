"""Dedup output feeds the trainer's data config unchanged: point [[data.sources]] at <dir>/data."""

from __future__ import annotations

import pytest

from cptrain.config import load_config
from tests.dedup.corpus import output_rows

pytest.importorskip("datatrove")


def _data_config(path, fmt: str = "auto"):
    return load_config(
        None,
        [
            "model.preset=debug",
            "model.init=random",
            "model.tokenizer=builtin:smollm2-135m",
            "data.eval_fraction=0.0",
            f'data.sources=[{{path = "{path}", format = "{fmt}", text_field = "text"}}]',
        ],
    ).data


@pytest.mark.parametrize("run_name", ["default_run", "filters_run"])  # jsonl.gz and parquet shards
def test_output_folder_is_a_training_source(run_name, request, smollm_tokenizer):
    from cptrain.data import build_train_loader

    run = request.getfixturevalue(run_name)
    data_dir = run["out"] / "data"
    cfg = _data_config(data_dir)
    assert cfg.sources[0].path == str(data_dir)
    # the snippet the report prints is the same config
    assert f'path = "{data_dir}"' in (run["out"] / "report.md").read_text()
    loader = build_train_loader(cfg, smollm_tokenizer, seq_len=64, micro_batch_size=2)
    batch = next(iter(loader))
    assert tuple(batch["input_ids"].shape) == (2, 64)
    texts = "".join(r["text"] for r in output_rows(data_dir))
    row = smollm_tokenizer.decode(batch["input_ids"][0][:24].tolist()).strip()
    assert len(row) > 20
    eos = smollm_tokenizer.eos_token
    assert all(piece.strip() in texts for piece in row.split(eos) if piece.strip())
