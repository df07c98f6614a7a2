"""Fixtures shared by the data tests."""

from __future__ import annotations

import pytest

from tests.data.data_helpers import doc_text, write_jsonl


@pytest.fixture
def offline_datasets(monkeypatch):
    """`datasets` never reaches the Hub: local files only (test modules opt in with usefixtures)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def recipe(tmp_path, smollm_tokenizer):
    """A recipe with a jsonl source and a folder of txt files; model.path is the saved SmolLM2 tokenizer."""
    web = [doc_text("web", i) for i in range(60)]
    write_jsonl(tmp_path / "raw" / "web.jsonl", web)
    (tmp_path / "raw" / "notes").mkdir()
    notes = [doc_text("note", i, words=40) for i in range(8)]
    for i, t in enumerate(notes):
        (tmp_path / "raw" / "notes" / f"{i}.txt").write_text(t)
    path = tmp_path / "recipe.toml"
    path.write_text(f"""
[model]
path = "{smollm_tokenizer.name_or_path}"
[train]
seq_len = 48
micro_batch_size = 2
[data]
cache_dir = "{tmp_path / "cache"}"
eval_fraction = 0.15
[[data.sources]]
name = "web"
path = "{tmp_path / "raw" / "web.jsonl"}"
weight = 2
[[data.sources]]
name = "notes"
path = "{tmp_path / "raw" / "notes"}"
""")
    return path, web + notes
