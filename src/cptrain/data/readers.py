"""Reading rows out of one file (txt, jsonl, jsonl.gz, jsonl.zst, parquet) with nothing lost silently.

A reader yields `Row`s from a starting row on; each row is either raw data that `row_text` turns into
a document text, or a problem (`Row.problem`) such as a truncated compressed file. `row_text` checks
one row and returns its text or the reason it must be skipped. Raw rows are not parsed until asked, so
a data-parallel rank can walk past the rows it does not own cheaply.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import zlib
from collections.abc import Generator, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cptrain.configtools import ConfigError

MISSING = object()  # a parquet / datasets row without the text column


@dataclass(slots=True)
class Row:
    row: int  # 0-based row index in the file (one row per line for jsonl, one per file for txt)
    line: int  # 1-based line (jsonl) or row number, for messages
    offset: int  # byte offset where the row starts in an uncompressed jsonl file; -1 elsewhere
    data: Any = None  # bytes (jsonl, txt) or the text column's value (parquet, datasets)
    problem: str | None = None  # a file-level problem: truncated_file, empty_file, read_error
    end: int = -1  # byte offset just after the row (uncompressed jsonl), where the next row starts
    file: str = ""  # datasets: the data file the row is in, when read file by file (`line` counts in it)
    fields: tuple = ()  # datasets: the row's columns when it lacks the text column (a preflight names them)


BOM = "\ufeff"


def _utf8(data: bytes) -> str:
    """UTF-8 text without a leading byte order mark (Windows editors and some exporters write one): it is
    not part of the text, and json.loads refuses a line that starts with it."""
    return data.decode("utf-8").removeprefix(BOM)


def file_format(path: str, fmt: str) -> str:
    """The reader for `path`: the source's format, or one chosen by extension when it is `auto`."""
    if fmt != "auto":
        if fmt == "jsonl":
            return "jsonl.gz" if path.endswith(".gz") else "jsonl.zst" if path.endswith(".zst") else "jsonl"
        return fmt
    for ext, name in (
        (".jsonl.gz", "jsonl.gz"),
        (".json.gz", "jsonl.gz"),
        (".jsonl.zst", "jsonl.zst"),
        (".json.zst", "jsonl.zst"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
    ):
        if path.endswith(ext):
            return name
    return "txt"


def read_rows(
    path: Path,
    fmt: str,
    text_field: str = "text",
    separator: str = "",
    start_row: int = 0,
    start_offset: int = -1,
) -> Iterator[Row]:
    """Rows of one file from `start_row` on (jumping to `start_offset` where the format allows)."""
    try:
        if fmt == "txt":
            yield from _txt_rows(path, separator, start_row)
        elif fmt == "parquet":
            yield from _parquet_rows(path, text_field, start_row)
        else:
            yield from _line_rows(path, fmt, start_row, start_offset)
    except OSError as e:
        yield Row(start_row, start_row + 1, -1, None, f"read_error: {e.strerror or e}")


def _txt_rows(path: Path, separator: str, start_row: int) -> Iterator[Row]:
    data = path.read_bytes()
    if not data:
        if start_row == 0:
            yield Row(0, 1, -1, None, "empty_file")
        return
    if not separator:
        if start_row == 0:
            yield Row(0, 1, -1, data)
        return
    try:
        text = _utf8(data)
    except UnicodeDecodeError as e:
        if start_row == 0:  # the whole file is one bad row: pieces cannot be trusted
            yield Row(0, data.count(b"\n", 0, e.start) + 1, -1, data)
        return
    line = 1
    for i, piece in enumerate(text.split(separator)):
        if i >= start_row:
            yield Row(i, line, -1, piece)
        line += piece.count("\n") + separator.count("\n")


def decompressor(fmt: str):
    """A fresh incremental decompressor for one gzip member (jsonl.gz) or zstd frame (jsonl.zst)."""
    if fmt == "jsonl.gz":
        return zlib.decompressobj(31)
    try:
        import zstandard
    except ImportError:
        raise ConfigError(
            "reading .zst files needs zstandard: pip install 'cptrain[data]' (or pip install zstandard)"
        ) from None
    return zstandard.ZstdDecompressor().decompressobj()


def decompress_frames(chunks: Iterator[bytes], fmt: str) -> Iterator[tuple[bytes, bool]]:
    """(decompressed bytes, whether a member/frame is still open) for raw `chunks` of a file of back-to-back
    gzip members or zstd frames: a frame may end inside a chunk and the next one start there."""
    obj = decompressor(fmt)
    for chunk in chunks:
        while chunk:
            data = obj.decompress(chunk)
            chunk, open_frame = b"", True
            if obj.eof:  # a frame ended; the rest of the chunk starts the next one
                chunk, obj, open_frame = obj.unused_data, decompressor(fmt), False
            yield data, open_frame


def zstd_lines(path: Path) -> Iterator[bytes]:
    """Lines of a .zst file (any number of frames); a stream that stops inside a frame raises EOFError.

    zstandard's stream reader returns a short read, not an error, for a cut-off file, so frames are
    decompressed by hand and checked for their end."""
    try:
        decompressor("jsonl.zst")  # a missing zstandard fails here, naming the file
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    pending, in_frame = b"", False
    with path.open("rb") as f:
        for data, in_frame in decompress_frames(iter(lambda: f.read(1 << 20), b""), "jsonl.zst"):
            pending += data
            *lines, pending = pending.split(b"\n")
            yield from (line + b"\n" for line in lines)
    if in_frame:
        raise EOFError("zstd stream ended inside a frame")
    if pending:
        yield pending


def _line_rows(path: Path, fmt: str, start_row: int, start_offset: int) -> Iterator[Row]:
    plain = fmt == "jsonl"
    with contextlib.ExitStack() as stack:
        if fmt == "jsonl.zst":
            lines = zstd_lines(path)
        else:
            opened = gzip.open(path, "rb") if fmt == "jsonl.gz" else path.open("rb")  # noqa: SIM115
            f = stack.enter_context(opened)
            lines = iter(f.readline, b"")
        row = 0
        if plain and start_offset >= 0:
            f.seek(start_offset)
            row = start_row
        offset = start_offset if plain and start_offset >= 0 else 0
        while True:
            try:
                line = next(lines, b"")
            except Exception as e:  # noqa: BLE001 - EOFError, zlib.error, ZstdError: a cut-off stream
                yield Row(row, row + 1, -1, None, f"truncated_file: {type(e).__name__}: {e}")
                return
            if not line:
                if row == 0:
                    yield Row(0, 1, -1, None, "empty_file")
                return
            if row >= start_row:
                yield Row(
                    row, row + 1, offset if plain else -1, line, end=offset + len(line) if plain else -1
                )
            offset += len(line)
            row += 1


def _pyarrow_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            f"{path}: reading parquet needs pyarrow: pip install 'cptrain[data]' (or pip install pyarrow)"
        ) from None
    return pq


def _parquet_rows(path: Path, column: str, start_row: int) -> Iterator[Row]:
    """Rows of a parquet file's `column` from `start_row` on, skipping whole row groups before it."""
    pq = _pyarrow_parquet(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid for cut-off or non-parquet files
        yield Row(start_row, start_row + 1, -1, None, f"truncated_file: {type(e).__name__}: {e}")
        return
    meta = pf.metadata
    if meta.num_rows == 0:
        if start_row == 0:
            yield Row(0, 1, -1, None, "empty_file")
        return
    has_column = column in pf.schema_arrow.names
    first = 0
    for group in range(meta.num_row_groups):
        n = meta.row_group(group).num_rows
        if first + n <= start_row:
            first += n
            continue
        if has_column:
            values = pf.read_row_group(group, columns=[column]).column(0).to_pylist()
        else:
            values = [MISSING] * n
        for i, value in enumerate(values):
            if first + i >= start_row:
                yield Row(first + i, first + i + 1, -1, value)
        first += n


def row_text(data: Any, fmt: str, text_field: str) -> tuple[str | None, str | None]:
    """(text, None) for a usable row, else (None, reason) with reason one of the skip kinds."""
    if fmt.startswith("jsonl"):
        if not data.strip():
            return None, "blank_line"
        try:
            line = _utf8(data)
        except UnicodeDecodeError:
            return None, "invalid_utf8"
        try:
            obj = json.loads(line)
        except ValueError:
            return None, "invalid_json"
        if not isinstance(obj, dict):
            return None, "invalid_json"
        data = obj.get(text_field, MISSING)
    elif fmt == "txt" and isinstance(data, bytes):
        try:
            data = _utf8(data)
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if data is MISSING:
        return None, "missing_field"
    if not isinstance(data, str):
        return None, "non_string_text" if data is not None else "missing_field"
    if "\x00" in data:
        return None, "nul_bytes"
    if not data.strip():
        return None, "empty_text"
    return data, None


def dataset_rows(
    path: str,
    config_name: str | None,
    split: str,
    data_files: list[str],
    streaming: bool,
    column: str,
    start_row: int = 0,
    *,
    source: str = "",
    local_files: list[str] | None = None,
) -> Iterator[Row]:
    """Rows of anything `datasets.load_dataset` reads (local builders, or hub names when online).

    Local data files are read one at a time, in the order `datasets` gives them, with the row numbers of
    the source as one stream (document names stay `path:row`): read together, `datasets` casts every
    file to the first one's columns, so a file whose rows lack the text column (another exporter's name
    for it) failed the whole source instead of being skipped row by row; and each skipped row is counted
    under its own file. A row `datasets` cannot parse is still a ConfigError naming `source`, the file
    and the parser's message, not a skipped row: its builders parse many rows at once (the json builder a
    whole block of a file with pyarrow), so the bad row cannot be told apart from its neighbours.
    `local_files` (the source's data files) name the files as the recipe does."""
    datasets = _datasets_module(path)
    where = f"source {source!r} (format 'datasets', path {path!r})" if source else f"source {path!r}"
    files = _split_files(datasets, path, config_name, split, data_files)
    if files is None:
        kwargs = {"data_files": data_files} if data_files else {}
        ds = _load(datasets, where, local_files, path, config_name, split, streaming, kwargs)
        yield from _dataset_stream(ds, column, where, local_files, 0, start_row)
        return
    first = 0  # source row of the current file's first row
    for file in files:
        name = _file_name(file, local_files)
        label = [name if len(files) == 1 else f"{name} (one of its {len(files)} data files)"]
        ds = _load(
            datasets, where, label, path, config_name, split, streaming, {"data_files": {split: [file]}}
        )
        first += yield from _dataset_stream(ds, column, where, label, first, max(0, start_row - first), name)


def _datasets_module(path: str):
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"source {path!r} with format 'datasets' needs the datasets package: "
            "pip install 'cptrain[data]' (or pip install datasets)"
        ) from None
    return datasets


def _split_files(
    datasets, path: str, config_name: str | None, split: str, data_files: list[str]
) -> list[str] | None:
    """The local files `datasets` reads for `split`, in its order; None where the source is one stream
    (a dataset on the Hub or at a URL, a split expression such as 'train[:10%]', a loading script)."""
    kwargs = {"data_files": data_files} if data_files else {}
    try:
        builder = datasets.load_dataset_builder(path, config_name, **kwargs)
    except Exception:  # noqa: BLE001 - reading it as one stream reports what is wrong
        return None
    files = (getattr(builder.config, "data_files", None) or {}).get(split)
    if not files or any("://" in str(f) for f in files):
        return None
    return [str(f) for f in files]


def _file_name(file: str, local_files: list[str] | None) -> str:
    """`file` as the recipe named it (its entry in the source's local files), for the report."""
    resolved = Path(file).resolve()
    return next((f for f in local_files or [] if Path(f).resolve() == resolved), file)


def _load(datasets, where: str, local_files: list[str] | None, path, config_name, split, streaming, kwargs):
    try:
        return datasets.load_dataset(path, config_name, split=split, streaming=streaming, **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot open this source"
        file = _failed_file(e, local_files)
        if file is None:
            raise ConfigError(
                f"{where}: datasets.load_dataset({path!r}, split={split!r}) failed: {_first_line(e)}. "
                "Check the source's path, split, data_files and dataset_config"
            ) from None
        raise ConfigError(_unreadable(where, file, e, 0)) from None


def _dataset_stream(
    ds, column: str, where: str, local_files, first: int, skip: int, file: str = ""
) -> Generator[Row, None, int]:
    """Rows of one loaded dataset from its row `skip` on, numbered from `first` (the source row of its
    first row); returns how many rows it has. A streamed one is read from its start even when skipping,
    since the next file's row numbers need its length."""
    index = 0
    if isinstance(ds, Sized) and skip:  # an Arrow dataset: jump to the row
        if skip >= len(ds):
            return len(ds)
        index, ds = skip, ds.select(range(skip, len(ds)))
    examples = iter(ds)
    while True:
        try:
            example = next(examples)
        except StopIteration:
            return index
        except Exception as e:  # noqa: BLE001 - pyarrow / pandas / csv parse errors of a bad row or file
            raise ConfigError(_unreadable(where, _failed_file(e, local_files), e, first + index)) from None
        if index >= skip:
            value = example.get(column, MISSING)
            fields = tuple(example) if value is MISSING else ()
            yield Row(first + index, index + 1, -1, value, file=file, fields=fields)
        index += 1


def _unreadable(where: str, file: str | None, e: BaseException, rows: int) -> str:
    return (
        f"{where}: datasets cannot read {file or 'its data'}"
        f"{f' (after {rows} rows of the source)' if rows else ''}: "
        f"{_first_line(e)}. A datasets builder parses many rows at once, so a bad row cannot be "
        "skipped: fix or remove it, or read local .jsonl files with format = 'jsonl', which skips "
        "and counts bad rows"
    )


def _first_line(e: BaseException) -> str:
    """`Type: first line of the message` of the innermost cause (the parser's own error)."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _failed_file(e: BaseException, local_files: list[str] | None) -> str | None:
    """The file to name: the source's only local file; with several, `datasets` logs which one failed
    ("Failed to load JSON from file ...") just above the error, and the message counts them."""
    if local_files and len(local_files) == 1:
        return local_files[0]
    return f"one of its {len(local_files)} data files" if local_files else None
