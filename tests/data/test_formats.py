"""Every source format yields exactly its documents, and resumes mid-file bitwise."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard

from cptrain.data import build_train_loader
from cptrain.data.sources import STDLIB, resolve_source
from tests.data.data_helpers import data_config, doc_text, encode_doc, input_stream, split_documents

TEXTS = [doc_text("fmt", i) for i in range(30)]


def _jsonl_bytes(texts, field="text") -> bytes:
    return "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()


def _write(tmp_path, kind: str) -> dict:
    """One source of kind `kind` holding TEXTS; returns its [[data.sources]] table. `-bom`: each file starts
    with a UTF-8 byte order mark, which is not part of the first document (nor a bad first jsonl line)."""
    if kind.endswith("-bom"):
        table = _write(tmp_path, kind.removesuffix("-bom"))
        for f in tmp_path.rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
        return table
    if kind == "jsonl":
        (tmp_path / "a.jsonl").write_bytes(_jsonl_bytes(TEXTS[:20]))
        (tmp_path / "b.jsonl").write_bytes(_jsonl_bytes(TEXTS[20:]))
        return {"path": str(tmp_path / "*.jsonl")}
    if kind == "jsonl.gz":
        (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(TEXTS)))
        return {"path": str(tmp_path / "a.jsonl.gz")}
    if kind == "jsonl.zst":
        z = zstandard.ZstdCompressor()
        (tmp_path / "a.jsonl.zst").write_bytes(
            z.compress(_jsonl_bytes(TEXTS[:11])) + z.compress(_jsonl_bytes(TEXTS[11:]))
        )
        return {"path": str(tmp_path / "a.jsonl.zst")}
    if kind == "parquet":
        table = pa.table({"id": list(range(30)), "content": TEXTS})
        pq.write_table(
            table, tmp_path / "a.parquet", row_group_size=7
        )  # several row groups to skip on resume
        return {"path": str(tmp_path), "text_field": "content"}
    if kind == "txt-separator":
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "a.txt").write_text("\n<doc>\n".join(TEXTS[:15]))
        (tmp_path / "b.txt").write_text("\n<doc>\n".join(TEXTS[15:]) + "\n<doc>\n")  # trailing separator
        return {"path": str(tmp_path / "**" / "*.txt"), "separator": "\n<doc>\n"}
    if kind == "txt-files":
        for i, t in enumerate(TEXTS):
            (tmp_path / f"doc{i:02d}.md").write_text(t)
        (tmp_path / ".hidden.md").write_text("never read")
        return {"path": str(tmp_path), "format": "txt"}
    if kind == "datasets":
        pytest.importorskip("datasets")
        (tmp_path / "a.jsonl").write_bytes(_jsonl_bytes(TEXTS))
        return {"path": "json", "format": "datasets", "data_files": [str(tmp_path / "a.jsonl")]}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "txt-separator", "txt-files", "datasets", "jsonl-bom",
             "txt-separator-bom", "txt-files-bom"]
)
def test_format_yields_its_documents_and_resumes(tmp_path, kind, smollm_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = data_config([_write(tmp_path, kind)], eval_fraction=0.0, shuffle_files=False)
    kw = {"seq_len": 40, "micro_batch_size": 2}
    loader = build_train_loader(cfg, smollm_tokenizer, **kw)
    batches = [next(loader) for _ in range(8)]
    state = loader.state_dict()
    later = [next(loader) for _ in range(12)]
    docs = split_documents(input_stream(batches + later), smollm_tokenizer.eos_token_id)
    assert set(docs) == {encode_doc(smollm_tokenizer, t) for t in TEXTS}  # all, and nothing else
    assert loader.report()["skipped_total"] == (1 if kind.startswith("txt-separator") else 0)  # the empty last piece
    resumed = build_train_loader(cfg, smollm_tokenizer, **kw)
    resumed.load_state_dict(state)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(later, [next(resumed) for _ in range(12)]) for k in a)


def test_builtin_stdlib_lists_every_py_file_but_site_packages():
    from cptrain.data.config import SourceConfig

    src = resolve_source(SourceConfig(name="py", path=STDLIB), "data.sources[0]")
    rels = [rel for rel, _ in src.files]
    assert len(rels) > 500 and rels == sorted(rels)
    assert all(r.endswith(".py") and "site-packages" not in r for r in rels)
    assert "json/decoder.py" in rels
