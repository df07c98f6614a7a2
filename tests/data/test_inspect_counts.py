"""`cptrain inspect-data` numbers: whole-source token estimates of compressed files, stage boundaries in
optimizer steps (gradient accumulation), on real files with the real tokenizer."""

from __future__ import annotations

import gzip
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from cptrain.cli import main as cli
from cptrain.data import inspect as inspect_data
from tests.data.data_helpers import WORDS, doc_text, write_jsonl


def _rows(texts: list[str], first: int) -> bytes:
    """jsonl with fields besides the text, as real corpora have."""
    return "".join(
        json.dumps({"id": first + i, "url": f"https://example.org/{first + i}", "text": t}) + "\n"
        for i, t in enumerate(texts)
    ).encode()


def _write_sources(root) -> dict[str, list[str]]:
    """One source per format, each a few times bigger than the sample; returns each source's texts."""
    texts = {name: [doc_text(name, i, words=40) for i in range(300)] for name in ("b", "d", "p", "j")}
    root.mkdir()
    third = len(texts["b"]) // 3
    for k in range(3):  # three files: the estimate may measure some and scale to all
        part = texts["b"][k * third : (k + 1) * third]
        (root / f"b{k}.jsonl.gz").write_bytes(gzip.compress(_rows(part, k * third)))
    z = zstandard.ZstdCompressor()
    (root / "d.jsonl.zst").write_bytes(
        z.compress(_rows(texts["d"][:100], 0)) + z.compress(_rows(texts["d"][100:], 100))
    )
    pq.write_table(
        pa.table(
            {
                "id": list(range(300)),
                "text": texts["p"],
                "url": [f"https://example.org/{i}" for i in range(300)],
            }
        ),
        root / "p.parquet",
    )
    (root / "j.jsonl").write_bytes(_rows(texts["j"], 0))
    return texts


def _recipe(tmp_path, tokenizer, sources: list[tuple[str, str]], train: str = "", stages: str = "") -> str:
    path = tmp_path / "recipe.toml"
    body = "".join(f'[[data.sources]]\nname = "{n}"\npath = "{p}"\n' for n, p in sources)
    path.write_text(
        f'[model]\npath = "{tokenizer.name_or_path}"\n'
        f"[train]\nseq_len = 48\nmicro_batch_size = 2\n{train}"
        f"[data]\neval_fraction = 0.0\n{body}{stages}"
    )
    return str(path)


def _whole_source(out: str, name: str) -> int:
    line = next(line for line in out.splitlines() if line.startswith(f"{name} "))
    return int(re.search(r"~([\d,]+)", line).group(1).replace(",", ""))


def _tokens(tokenizer, texts: list[str]) -> int:
    """What the loader makes of them: the text's tokens plus EOS (SmolLM2 adds no BOS)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)


def test_whole_source_estimates_count_the_text_of_compressed_files(tmp_path, smollm_tokenizer, capsys):
    """gzip, zstd (two frames), parquet and jsonl, all with fields besides the text: within 10% of the
    real count (on-disk size x tokens per text byte was 4x to 40x off for the compressed ones)."""
    texts = _write_sources(tmp_path / "raw")
    raw = tmp_path / "raw"
    sources = [
        ("b", f"{raw}/b*.jsonl.gz"),
        ("d", f"{raw}/d.jsonl.zst"),
        ("p", f"{raw}/p.parquet"),
        ("j", f"{raw}/j.jsonl"),
    ]
    recipe = _recipe(tmp_path, smollm_tokenizer, sources)
    assert cli(["inspect-data", recipe, "--batches", "40"]) == 0
    out = capsys.readouterr().out
    for name, _ in sources:
        actual = _tokens(smollm_tokenizer, texts[name])
        estimate = _whole_source(out, name)
        assert abs(estimate / actual - 1) < 0.1, (name, estimate, actual)


def test_text_bytes_of_large_compressed_files_come_from_their_first_bytes(tmp_path, monkeypatch):
    """Files larger than the sample: their start is read, scaled by on-disk size, and files beyond
    SAMPLE_FILES are scaled from the ones measured. Sample and read size are cut by the same factor."""
    from cptrain.data.config import SourceConfig
    from cptrain.data.sources import resolve_source

    monkeypatch.setattr(inspect_data, "SAMPLE_BYTES", 1 << 16)
    monkeypatch.setattr(inspect_data, "CHUNK", 1 << 8)
    monkeypatch.setattr(inspect_data, "SAMPLE_FILES", 2)
    rng = random.Random(0)  # documents alike all through the files, as in a real corpus
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 100))) for _ in range(9000)]
    for k in range(3):
        (tmp_path / f"b{k}.jsonl.gz").write_bytes(gzip.compress(_rows(texts[k * 3000 : (k + 1) * 3000], 0)))
    z = zstandard.ZstdCompressor()
    (tmp_path / "d.jsonl.zst").write_bytes(
        z.compress(_rows(texts[:4500], 0)) + z.compress(_rows(texts[4500:], 0))
    )
    true = sum(len(t.encode()) for t in texts)
    for pattern in ("b*.jsonl.gz", "d.jsonl.zst"):
        src = resolve_source(SourceConfig(name="x", path=str(tmp_path / pattern)), "data.sources[0]")
        assert all(src.path_of(rel).stat().st_size > 3 * inspect_data.SAMPLE_BYTES for rel, _ in src.files)
        assert abs(inspect_data.source_text_bytes(src) / true - 1) < 0.03, pattern


def _stage_tokens(tmp_path, tokenizer, capsys, train: str, *flags: str) -> list[int]:
    web = write_jsonl(tmp_path / "web.jsonl", [doc_text("web", i) for i in range(80)])
    notes = write_jsonl(tmp_path / "notes.jsonl", [doc_text("note", i) for i in range(80)])
    stages = "[[data.stages]]\nstart_step = 3\nweights = {web = 0, notes = 1}\n"
    recipe = _recipe(tmp_path, tokenizer, [("web", web), ("notes", notes)], train, stages)
    assert cli(["inspect-data", recipe, "--json", *flags]) == 0
    return [s["tokens"] for s in json.loads(capsys.readouterr().out)["stages"]]


def test_stages_begin_at_the_optimizer_step_not_the_micro_batch(tmp_path, smollm_tokenizer, capsys):
    """global_batch_size 4 = 2 rows x 2 micro-batches: step 3 starts at micro-batch 6."""
    train = "global_batch_size = 4\n"
    assert _stage_tokens(tmp_path, smollm_tokenizer, capsys, train, "--batches", "6")[1] == 0  # steps 0-2
    assert _stage_tokens(tmp_path, smollm_tokenizer, capsys, train, "--batches", "8")[1] > 0  # step 3


def test_ranks_share_the_global_batch(tmp_path, smollm_tokenizer, capsys):
    """global_batch_size 8 over 2 ranks of 2 rows: 2 micro-batches per step on each rank."""
    train = "global_batch_size = 8\n"
    assert _stage_tokens(tmp_path, smollm_tokenizer, capsys, train, "--batches", "6", "--ranks", "2")[1] == 0
    assert _stage_tokens(tmp_path, smollm_tokenizer, capsys, train, "--batches", "8", "--ranks", "2")[1] > 0
    # one rank: 4 micro-batches per step, so 8 micro-batches are steps 0-1
    assert _stage_tokens(tmp_path, smollm_tokenizer, capsys, train, "--batches", "8")[1] == 0


def test_a_global_batch_the_ranks_cannot_share_is_refused(tmp_path, smollm_tokenizer, capsys):
    web = write_jsonl(tmp_path / "web.jsonl", [doc_text("web", i) for i in range(20)])
    recipe = _recipe(tmp_path, smollm_tokenizer, [("web", web)], "global_batch_size = 6\n")
    assert cli(["inspect-data", recipe, "--ranks", "2"]) == 2
    assert "must be a multiple of micro_batch_size x data-parallel ranks = 2 x 2" in capsys.readouterr().err
