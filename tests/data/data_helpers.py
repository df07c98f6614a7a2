"""Small real data files and ways to read a loader's token stream back into documents."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import torch

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "chi",
    "psi",
    "omega",
]


def doc_text(source: str, i: int, words: int = 12) -> str:
    """A unique, varied document: its own number plus a pseudo-random run of words."""
    body = " ".join(WORDS[(i * 7 + k * k) % len(WORDS)] for k in range(words + (i * 13) % 17))
    return f"{source} document {i}: {body}."


def write_jsonl(path: Path, texts: list, field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for t in texts:
            f.write(json.dumps({field: t}) + "\n")
    return path


def datasets_source(builder: str, files: list[str], **kw) -> dict:
    """A `format = "datasets"` source named "hf" reading local `files` with the `builder` (json, parquet)."""
    return {"name": "hf", "format": "datasets", "path": builder, "data_files": files, **kw}


def input_stream(batches: list[dict]) -> torch.Tensor:
    """The token stream the rows were cut from (rows overlap by one token, so inputs tile it)."""
    return torch.cat([row for b in batches for row in b["input_ids"]])


def split_documents(stream: torch.Tensor, eos_id: int) -> list[tuple[int, ...]]:
    """Complete documents (EOS-terminated) in a token stream; a cut-off first or last one is dropped."""
    ends = (stream == eos_id).nonzero().flatten().tolist()
    docs, start = [], 0
    for end in ends:
        docs.append(tuple(stream[start : end + 1].tolist()))
        start = end + 1
    return docs


def encode_doc(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])


def data_config(sources: list[dict], **kw):
    """A validated DataConfig from plain dicts, as a recipe would give."""
    from cptrain.configtools import from_dict
    from cptrain.data.config import DataConfig

    return from_dict(DataConfig, {"sources": sources, **kw}, "data")


def two_sources(tmp_path: Path, short_docs: int = 300, long_docs: int = 100) -> tuple[Path, Path, list, list]:
    """A source of short documents and one of documents ~6x longer, so token and document shares differ."""
    short = [doc_text("short", i, words=10) for i in range(short_docs)]
    long = [doc_text("long", i, words=90) for i in range(long_docs)]
    return (
        write_jsonl(tmp_path / "short.jsonl", short),
        write_jsonl(tmp_path / "long.jsonl", long),
        short,
        long,
    )


def docs_by_source(
    stream_docs: list[tuple], tokenizer, sources: dict[str, list[str]]
) -> dict[str, list[tuple]]:
    """Assign each decoded document of a stream to the source whose text it encodes."""
    owner = {encode_doc(tokenizer, t): name for name, texts in sources.items() for t in texts}
    out: dict[str, list[tuple]] = {name: [] for name in sources}
    for d in stream_docs:
        out[owner[d]].append(d)
    return out


def stdlib_halves(tmp_path_factory) -> tuple[Path, Path]:
    """Two folders of stdlib files as .txt; split at blank lines, so documents are short and many."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:8]
    roots = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("txt")
    for i, f in enumerate(files):
        shutil.copy(f, roots[i % 2] / (f.stem + ".txt"))
    return roots


def halves_config(halves: tuple[Path, Path], stages: list[dict], **kw):
    """Sources `a` and `txt` (the two `stdlib_halves`), no held-out split, the given `data.stages`."""
    a, txt = halves
    sources = [
        {"name": "a", "path": str(a), "separator": "\n\n"},
        {"name": "txt", "path": str(txt), "separator": "\n\n"},
    ]
    return data_config(sources, stages=stages, eval_fraction=0.0, **kw)
