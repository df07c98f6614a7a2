"""`cptrain inspect-data RECIPE [key=value ...]`: what the loader will feed the model, before training.

Reads a sample of the batches one rank of a run would train on (--rank of --ranks; default rank 0 of 1:
the stream `cptrain run` reads, with the run's train.seed and data.num_workers) and prints the mixture
table (target vs realized token shares: a document counts whole once picked, and a short sample of long
documents is off by up to one document per loader worker, see mixture.py), token counts (exact for token
shards, estimated from the sources' text bytes when streaming), skipped rows, packing efficiency, the
held-out set and one decoded row with its document boundaries marked. Micro-batches map to optimizer
steps (and so to `data.stages`) with the run's gradient accumulation: train.global_batch_size /
(train.micro_batch_size x ranks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cptrain.configtools import ConfigError

SAMPLE_FILES = 8  # files per source and format whose text bytes are measured (spread over the list)
SAMPLE_BYTES = 1 << 20  # on-disk bytes read from each of them at most: a large source costs a few reads
CHUNK = 1 << 12  # read size: what the zstd block count above can be off by


def _file_start(path: Path, fmt: str) -> tuple[bytes, int, bool]:
    """The first bytes of a jsonl file once decompressed, the on-disk bytes they came from, and whether
    that is the whole file. Reads at most SAMPLE_BYTES; a damaged stream ends the sample there.

    zstd hands out a block (up to 128 KiB) only once all of it has arrived: the on-disk count stops at
    the last chunk that gave output, so the block still in the works counts on neither side."""
    from cptrain.data.readers import decompress_frames

    size = path.stat().st_size
    out, disk, used = [], 0, 0
    with path.open("rb") as f:

        def chunks():
            nonlocal disk
            while disk < min(size, SAMPLE_BYTES) and (chunk := f.read(min(CHUNK, SAMPLE_BYTES - disk))):
                disk += len(chunk)
                yield chunk

        pieces = ((c, False) for c in chunks()) if fmt == "jsonl" else decompress_frames(chunks(), fmt)
        try:
            for data, _ in pieces:
                out.append(data)
                used = disk if data else used
        except Exception:  # noqa: BLE001 - zlib.error, ZstdError: what came before still counts
            return b"".join(out), used, False
    if disk >= size:
        return b"".join(out), disk, True
    return b"".join(out), used, False


def _text_bytes(path: Path, fmt: str, text_field: str) -> tuple[int, float]:
    """(on-disk bytes measured, UTF-8 bytes of document text they hold) for one file.

        Compressed files hold several times their size in text, and jsonl lines and parquet files also
        hold other fields: on-disk size alone would be far off. Parquet's footer says how big the text
        column is uncompressed (less the 4-byte length of each value); jsonl lines are parsed from the
        file's start and the text share of those lines is scaled to the part decompressed. A damaged file
    gives what could be read (the sample's skip counts report the damage)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq  # the sample has read parquet already: pyarrow is there

        try:
            meta = pq.ParquetFile(path).metadata
        except Exception:  # noqa: BLE001 - a damaged file (the sample reports it): measure the others
            return 0, 0.0
        text = 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                col = group.column(c)
                if col.path_in_schema == text_field:
                    text += max(0, col.total_uncompressed_size - 4 * col.num_values)
        return path.stat().st_size, float(text)
    from cptrain.data.readers import row_text

    data, disk, whole = _file_start(path, fmt)
    lines = data.split(b"\n")
    if not whole:
        lines = lines[:-1]  # cut off by the sample
    raw = sum(len(line) + 1 for line in lines)
    texts = (row_text(line, fmt, text_field)[0] for line in lines if line.strip())
    text = sum(len(t.encode("utf-8")) for t in texts if t is not None)
    if whole:
        return disk, float(text)
    if not raw:  # not one whole line in the sample: a line that long is nearly all text
        return disk, float(len(data))
    return disk, text * len(data) / raw


def source_text_bytes(src) -> float:
    """UTF-8 bytes of document text in a whole source: text files as they are; other formats are their
    on-disk size x the text bytes per on-disk byte of up to SAMPLE_FILES of their files."""
    by_format: dict[str, list[str]] = {}
    for rel, fmt in src.files:
        by_format.setdefault(fmt, []).append(rel)
    total = 0.0
    for fmt, rels in by_format.items():
        size = sum(src.path_of(rel).stat().st_size for rel in rels)
        if fmt == "txt":
            total += size
            continue
        every = -(-len(rels) // SAMPLE_FILES)
        measured = [_text_bytes(src.path_of(rel), fmt, src.cfg.text_field) for rel in rels[::every]]
        disk, text = sum(m[0] for m in measured), sum(m[1] for m in measured)
        total += size * text / disk if disk else size
    return total


def _estimate_tokens(cfg, report: dict) -> dict[str, str]:
    """Whole-source token counts: exact from token shards, else text bytes x the sample's tokens/byte."""
    from cptrain.data.shards import read_meta
    from cptrain.data.sources import resolve_source

    out = {}
    for i, source in enumerate(cfg.sources):
        if cfg.mode == "pretokenized":
            meta = read_meta(cfg, source.name)
            out[source.name] = f"{meta['stats']['tokens']:,}" if meta else "?"
            continue
        if source.format == "datasets":
            out[source.name] = "?"
            continue
        src = resolve_source(source, f"data.sources[{i}]")
        text_bytes = source_text_bytes(src)
        sample = report["sources"][source.name]
        ratio = sample.get("tokens_per_byte")  # tokens per byte of document text, as the stats count it
        out[source.name] = f"~{text_bytes * ratio:,.0f}" if ratio else f"? (~{text_bytes:,.0f} text bytes)"
    return out


def sample_row_text(batch: dict[str, torch.Tensor], decode, row: int = 0) -> str:
    """One input row decoded piece by piece, a marked line at every document boundary."""
    ids, docs = batch["input_ids"][row], batch["document_ids"][row]
    parts, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or docs[t] != docs[start]:
            label = "padding" if docs[start] < 0 else f"document {int(docs[start])}"
            parts.append(f"\n----- {label}: {t - start} tokens -----\n{decode(ids[start:t].tolist())}")
            start = t
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while a large source is sampled or measured: one line, not a traceback
        print("cptrain inspect-data: interrupted; it writes nothing, so nothing is left half done", file=sys.stderr,
              flush=True)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="cptrain inspect-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="path to a recipe .toml")
    # default=[]: else argparse names it as required when the recipe is missing
    parser.add_argument("overrides", nargs="*", default=[], help="key.sub=value overrides")
    parser.add_argument("--batches", type=int, default=16, help="micro-batches to sample, 1 or more (default 16)")
    parser.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="data-parallel ranks of the run (default 1); with train.global_batch_size they set the gradient "
        "accumulation, which decides the micro-batch where each of data.stages begins",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=0,
        help="which of the --ranks ranks to sample (default 0): each rank reads its own share of the documents",
    )
    parser.add_argument("--json", action="store_true", help="print the data report as JSON instead")
    ns = parser.parse_args(argv)

    from cptrain.data import build_eval_batches, run_train_loader
    from cptrain.data.tokenize import DocumentTokenizer
    from cptrain.data.tokenize_cli import load_recipe_tokenizer

    cfg, tokenizer = load_recipe_tokenizer(ns.recipe, ns.overrides)
    data = cfg.data
    seq, mbs = cfg.train.seq_len, cfg.train.micro_batch_size
    if ns.batches < 1:  # it sampled one micro-batch without a word
        raise ConfigError(f"inspect-data: --batches = {ns.batches} must be >= 1")
    if ns.ranks < 1:
        raise ConfigError(f"inspect-data: --ranks = {ns.ranks} must be >= 1")
    if not 0 <= ns.rank < ns.ranks:
        raise ConfigError(f"inspect-data: --rank = {ns.rank} is not one of the {ns.ranks} rank(s) (0 to {ns.ranks - 1})")
    accum = cfg.train.micro_batches_per_step(ns.ranks)
    # the run's own loader for this rank (its train.seed, data.num_workers and rank share the documents out)
    loader = run_train_loader(cfg, tokenizer, dp_rank=ns.rank, dp_size=ns.ranks)
    try:
        batches = [next(loader) for _ in range(ns.batches)]
        report = loader.report()
    finally:
        loader.close()
    for s in report["sources"].values():
        s["tokens_per_byte"] = s["tokens"] / s["bytes"] if s.get("bytes") else None
    if ns.json:
        print(json.dumps(report, indent=1))
        return 0
    evals = build_eval_batches(
        data, tokenizer, seq_len=seq, micro_batch_size=mbs, max_batches=cfg.eval.max_batches
    )
    totals = _estimate_tokens(data, report)
    print(
        f"{ns.recipe}: {len(data.sources)} sources, mode={data.mode}, seq_len={seq}, "
        f"micro_batch_size={mbs}; sampled {len(batches)} micro-batches ({len(batches) * mbs * seq:,} tokens) "
        f"of rank {ns.rank} of {ns.ranks}"
    )
    print(
        f"{accum} micro-batches per optimizer step on each of {ns.ranks} rank(s): the sample covers steps "
        f"0-{(len(batches) - 1) // accum}"
        + (" (the other ranks read other documents: --rank R shows rank R's)" if ns.ranks > 1 else "")
    )
    print(
        f"\n{'source':<20} {'weight':>7} {'target':>7} {'sample':>7} {'docs':>7} {'tokens':>10} "
        f"{'whole source':>16} skipped"
    )
    stage0 = report["stages"][0]
    for source in data.sources:
        s = report["sources"][source.name]
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(s["skipped"].items())) or "-"
        print(
            f"{source.name:<20} {source.weight:>7.3g} {stage0['target_shares'][source.name]:>7.1%} "
            f"{stage0['realized_shares'][source.name]:>7.1%} {s['documents']:>7,} {s['tokens']:>10,} "
            f"{totals[source.name]:>16} {skipped}"
        )
    for i, stage in enumerate(data.stages, start=1):
        mix = report["stages"][i]
        shares = ", ".join(
            f"{n}: {v:.1%}" + (f" (sample {mix['realized_shares'][n]:.1%})" if mix["tokens"] else "")
            for n, v in mix["target_shares"].items()
        )
        print(f"stage {i} from step {stage.start_step}: {shares}")
    p = report["packing"]
    print(
        f"\npacking: {p['rows']:,} rows, {p['real_token_fraction']:.2%} real tokens (no padding), "
        f"{p['supervised_fraction']:.2%} of positions have a label (the rest sit at document ends)"
    )
    held = sum(int((b["document_ids"] >= 0).sum()) for b in evals)
    print(f"held-out: {len(evals)} batches, {held:,} real tokens (data.eval_fraction={data.eval_fraction})")
    for file_problems in (s["problem_files"] for s in report["sources"].values()):
        for file, kinds in list(file_problems.items())[:10]:
            for reason, v in kinds.items():
                print(f"  skipped {v['count']} x {reason} in {file} (first at line {v['first_line']})")
    decoder = DocumentTokenizer(tokenizer, data.add_bos, data.eos_token)
    print("\nfirst row of the first batch (document boundaries marked):")
    print(sample_row_text(batches[0], decoder.decode))
    return 0
