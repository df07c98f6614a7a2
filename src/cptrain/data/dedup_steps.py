"""datatrove pipeline steps cptrain adds around datatrove's own dedup and filter blocks.

- `CorpusReader` reads the user's files (jsonl[.gz|.zst], parquet) and skips a damaged file with a
  count instead of failing the task. Files with rows it could not use (no text, unparsable JSON) get
  a note naming the fields those rows do have, so a wrong `input.text_field` can be named as such.
- `ShardReader` reads back exactly the intermediate shard a task wrote in the previous stage: the
  datatrove dedup filters identify documents by (task rank, index in the task's stream), so every
  stage must see the same documents in the same order as the one that computed the signatures.
- `Tally` counts documents and UTF-8 bytes at a point of the pipeline, for the report.

Everything here is imported by datatrove workers (local processes or SLURM nodes) by reference,
so it must stay importable with only the `dedup` extra installed.
"""

from __future__ import annotations

import functools
import json
import unicodedata
import zlib
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseReader
from datatrove.utils.logging import logger

from cptrain.data.readers import BOM, zstd_lines

# errors that mean "this file is damaged", as opposed to a bug in the pipeline
_DAMAGED = (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError)
MAX_FIELDS_NOTED = 50  # field names kept per file to suggest a text_field; rows can be wide
# the training reader's byte order mark, as bytes: not part of the row, and orjson refuses a line that
# starts with it. Dropped from every line, as that reader does (a file made by concatenating such files has
# one at the start of each part).
BOM_BYTES = BOM.encode()


def input_format(path: str, fmt: str) -> str:
    """'jsonl' or 'parquet' for one input file; `fmt` is the config's input.format."""
    if fmt != "auto":
        return fmt
    return "parquet" if path.endswith(".parquet") else "jsonl"


@functools.cache
def _damage_errors() -> tuple[type[BaseException], ...]:
    """_DAMAGED plus zstandard's error for a corrupt .zst frame, which subclasses none of them
    (zstandard is only there when someone reads .zst files)."""
    try:
        from zstandard import ZstdError
    except ImportError:
        return _DAMAGED
    return (*_DAMAGED, ZstdError)


def _jsonl_lines(path: str) -> Iterator[bytes]:
    """The lines of a jsonl file, decompressed by extension.

    .zst goes through the training reader's frame-by-frame decoder: the zstandard stream fsspec opens
    cannot be iterated line by line (io.UnsupportedOperation), and it returns a short read rather than
    an error for a cut-off file. The decoder raises EOFError there instead."""
    if path.endswith(".zst"):
        yield from zstd_lines(Path(path))
        return
    import fsspec

    with fsspec.open(path, "rb", compression="infer") as f:
        yield from f


class CorpusReader(BaseReader):
    """Reads this task's share of the input files listed in `paths_file` (one absolute path a line)."""

    name = "📖 cptrain corpus reader"

    def __init__(
        self, paths_file: str, fmt: str, text_field: str, id_field: str, problems_dir: str, notes_dir: str
    ):
        super().__init__(text_key=text_field, id_key=id_field)
        self.paths_file = paths_file
        self.fmt = fmt
        self.problems_dir = problems_dir
        self.notes_dir = notes_dir

    def _rows(self, path: str, note: dict) -> Iterator[tuple[int, dict]]:
        """(where the row is in the file, row) for each row: the 0-based row index for parquet, the
        1-based line number for jsonl. Every line counts, blank and unparsable ones too, so a default
        id made from it points at the row even after a bad line."""
        if input_format(path, self.fmt) == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
            yield from enumerate(row for batch in batches for row in batch.to_pylist())
            return
        import orjson

        for line_no, line in enumerate(_jsonl_lines(path), 1):
            line = line.removeprefix(BOM_BYTES)
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                yield line_no, row
            else:
                self.stat_update("bad_json_lines")
                note["bad_json_lines"] += 1

    def _without_text(self, fields: list | None, note: dict) -> None:
        """Count a row without usable text; `fields`: the row's fields when it lacks the text field."""
        self.stat_update("documents_without_text")
        note["without_text"] += 1
        if fields is not None:
            note["missing_field"] += 1
            note["fields"] = sorted(set(note["fields"]) | set(map(str, fields)))[:MAX_FIELDS_NOTED]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with open(self.paths_file, encoding="utf-8") as f:
            paths = [line.rstrip("\n") for line in f if line.strip()]
        problems, notes = [], []
        for path in paths[rank::world_size]:
            self.stat_update("input_files")
            note = {"file": path, "without_text": 0, "missing_field": 0, "bad_json_lines": 0, "fields": []}
            n = 0
            try:
                for where, row in self._rows(path, note):
                    n += 1
                    fields = None if self.text_key in row else list(row)  # before the adapter pops them
                    with self.track_time():
                        doc = self.get_document_from_dict(row, path, where)
                    if doc is None:
                        self._without_text(fields, note)
                        continue
                    self.update_doc_stats(doc)
                    yield doc
            except _damage_errors() as e:
                # keep what was read before the damage; count the file, name it in the report
                self.stat_update("damaged_files")
                problems.append({"file": path, "rows_read": n, "error": f"{type(e).__name__}: {e}"})
                logger.warning(f"skipping the rest of damaged input file {path} after {n} rows: {e}")
            if note["without_text"] or note["bad_json_lines"]:
                notes.append(note)
        _write_notes(self.problems_dir, rank, problems)
        _write_notes(self.notes_dir, rank, notes)

    def _default_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
        text = data.pop(self.text_key, "")
        doc_id = data.pop(self.id_key, None)
        return {
            "text": text if isinstance(text, str) else "",
            "id": str(doc_id) if doc_id is not None else f"{path}:{id_in_file}",
            "metadata": data,
        }


def _write_notes(folder: str, rank: int, entries: list[dict]) -> None:
    if entries:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{rank:05d}.json").write_text(json.dumps(entries, indent=1))


class ShardReader(BaseReader):
    """Reads `<folder>/<rank>.jsonl`, the intermediate shard this task's rank wrote one stage earlier."""

    name = "📖 cptrain shard reader"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import orjson

        path = Path(self.folder) / f"{rank:05d}.jsonl"
        if not path.exists():  # an earlier stage kept no documents for this rank
            return
        with path.open("rb") as f:
            for line in f:
                row = orjson.loads(line)
                doc = Document(text=row["text"], id=row["id"], metadata=row.get("metadata") or {})
                self.update_doc_stats(doc)
                yield doc


class Tally(PipelineStep):
    """Counts documents and UTF-8 bytes passing this point; the report reads them from datatrove's stats."""

    type = "📊 - TALLY"

    def __init__(self, label: str):
        self.name = f"tally {label}"
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("documents")
            self.stat_update("bytes", value=len(doc.text.encode("utf-8")))
            yield doc


class LengthFilter(BaseFilter):
    """Drops documents outside [min_chars, max_chars]; 0 turns a bound off."""

    name = "📏 length"

    def __init__(self, min_chars: int, max_chars: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_chars = min_chars
        self.max_chars = max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.min_chars and len(doc.text) < self.min_chars:
            return False, "too_short"
        if self.max_chars and len(doc.text) > self.max_chars:
            return False, "too_long"
        return True


# --- what the exact-dedup stage hashes (module-level so SLURM workers can unpickle them) ---------


def text_as_is(doc: Document) -> str:
    return doc.text


def text_whitespace_normalized(doc: Document) -> str:
    """NFKC, then every run of whitespace becomes one space: re-wrapped or re-indented copies match."""
    return " ".join(unicodedata.normalize("NFKC", doc.text).split())


def text_simplified(doc: Document) -> str:
    """datatrove's MinHash normalization: lowercase, no punctuation, digits as 0, no accents."""
    from datatrove.utils.text import TextNormConfig, simplify_text

    return simplify_text(doc.text, TextNormConfig())


CONTENT_GETTERS = {"none": text_as_is, "whitespace": text_whitespace_normalized, "simplify": text_simplified}


# --- what the output shards hold -----------------------------------------------------------------

# bookkeeping datatrove adds to kept documents; not part of the user's rows
_ADDED_FIELDS = ("duplicate_count",)


def _fields(doc: Document) -> dict:
    return {k: v for k, v in doc.metadata.items() if k not in _ADDED_FIELDS}


def output_row(writer, doc: Document) -> dict:
    """`text` and `id` plus the input's other fields, flat: the data pipeline reads `text` directly."""
    return {**_fields(doc), "id": doc.id, "text": doc.text}


def parquet_row(writer, doc: Document) -> dict:
    """Fixed columns for parquet (a schema cannot follow per-row fields): text, id, other fields as JSON."""
    return {"text": doc.text, "id": doc.id, "metadata": json.dumps(_fields(doc), ensure_ascii=False)}
