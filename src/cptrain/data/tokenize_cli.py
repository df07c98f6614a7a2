"""`cptrain tokenize RECIPE [key=value ...]`: write the memory-mapped token shards of a recipe's sources.

Sources whose shard is already up to date (same tokenizer, settings and input files) are left alone
unless --force is given. Train with `data.mode = "pretokenized"` afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from cptrain.configtools import ConfigError, blocked_folder
from cptrain.data.tokenize import DocumentTokenizer
from cptrain.metrics import format_eta

PROGRESS_SECONDS = 10.0  # at most one progress line this often while a source is tokenized


class Progress:
    """Documents and tokens tokenized so far, printed at most every `every` seconds to stderr; given the
    source's estimated text bytes (`total_bytes`), also the share done and the time left.

    Fed once per tokenizer batch (hundreds of documents), so the clock is read rarely enough to cost
    nothing measurable."""

    def __init__(self, name: str, every: float | None = None, total_bytes: float | None = None):
        self.name, self.every = name, PROGRESS_SECONDS if every is None else every
        self.total_bytes = total_bytes
        self.documents = self.tokens = self.bytes = 0
        self.start = self.last = time.perf_counter()

    def update(self, documents: int, tokens: int, text_bytes: int = 0) -> None:
        self.documents += documents
        self.tokens += tokens
        self.bytes += text_bytes
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            seconds = max(now - self.start, 1e-9)
            left = ""
            if self.total_bytes and self.bytes:
                share = min(self.bytes / self.total_bytes, 0.99)  # an estimate: never 100% before the end
                left = f"; ~{share:.0%} of its text, ~{format_eta(seconds * (1 - share) / share)} left"
            print(
                f"{self.name}: {self.documents:,} documents, {self.tokens:,} tokens so far in {seconds:.0f}s "
                f"({self.documents / seconds:,.0f} documents/s, {self.tokens / seconds:,.0f} tokens/s){left}",
                file=sys.stderr,
                flush=True,
            )


class ProgressTokenizer(DocumentTokenizer):
    """A DocumentTokenizer that reports every batch it encodes to `progress` (when set)."""

    progress: Progress | None = None

    def encode(self, texts: list[str]) -> list:
        out = super().encode(texts)
        if self.progress is not None:
            text_bytes = sum(len(t.encode("utf-8")) for t in texts) if self.progress.total_bytes else 0
            self.progress.update(len(out), sum(len(t) for t in out), text_bytes)
        return out


def is_main_process() -> bool:
    """Rank 0, or not launched by torchrun / srun: the one process that prints progress."""
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    return int(rank) == 0


def load_recipe_tokenizer(recipe: str, overrides: list[str]):
    """(Config, the HF tokenizer the run would use: model.tokenizer, else model.path)."""
    from cptrain.config import load_config
    from cptrain.models.hf import load_tokenizer

    cfg = load_config(recipe, overrides)
    source = cfg.model.tokenizer_source
    if source is None:  # config validation normally catches this first
        raise ConfigError(
            f"{recipe}: set model.tokenizer or model.path; the data pipeline needs the model's tokenizer "
            "(an HF directory, .gguf file or builtin:smollm2-135m)"
        )
    return cfg, load_tokenizer(source)


def _check_cache_dir(cache: Path) -> None:
    """data.cache_dir must be a folder this process can write, or one it can create: checked before any
    source is tokenized (it was a NotADirectoryError or PermissionError traceback at the first shard)."""
    blocked = blocked_folder(cache)
    if blocked and blocked[1] == "file":
        raise ConfigError(f"data.cache_dir = '{cache}': {blocked[0]} is a file; give a folder for the token shards")
    if blocked:
        raise ConfigError(f"data.cache_dir = '{cache}': {blocked[0]} is not writable (permission denied); give a "
                          "folder you can write to")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cptrain tokenize", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="path to a recipe .toml")
    parser.add_argument(  # default=[]: else argparse names it as required when the recipe is missing
        "overrides", nargs="*", default=[], help="key.sub=value overrides, e.g. data.cache_dir=/scratch/tok"
    )
    parser.add_argument("--force", action="store_true", help="rewrite shards that are up to date")
    ns = parser.parse_args(argv)

    from cptrain.data.checks import resolve_sources
    from cptrain.data.shards import cache_dir

    cfg, hf_tokenizer = load_recipe_tokenizer(ns.recipe, ns.overrides)
    data = cfg.data
    tokenizer = ProgressTokenizer(hf_tokenizer, data.add_bos, data.eos_token)
    # before any source is tokenized, the checks a run makes (a dedup run folder; a source without usable text:
    # a wrong text_field wrote an empty shard over a good one) and a writable cache_dir
    sources = resolve_sources(data)
    _check_cache_dir(Path(data.cache_dir).expanduser().resolve())
    finished: list[str] = []
    try:
        for src in sources:
            _tokenize_source(data, src, tokenizer, ns.force)
            finished.append(src.name)
    except KeyboardInterrupt:  # Ctrl-C: one line, no half-written shard left behind; finished sources stay
        current = cache_dir(data, sources[len(finished)].name)
        shutil.rmtree(current.with_name(current.name + ".tmp"), ignore_errors=True)
        kept = f"{', '.join(finished)} finished" if finished else "no source finished"
        print(f"cptrain tokenize: interrupted while tokenizing {sources[len(finished)].name} ({current} is as it "
              f"was); {kept}; the same command goes on from there (up-to-date sources are skipped)",
              file=sys.stderr, flush=True)
        return 130
    print('train from these shards with data.mode = "pretokenized"')
    return 0


def _tokenize_source(data, src, tokenizer: ProgressTokenizer, force: bool) -> None:
    """Write one source's token shard, unless it is up to date; print what was written."""
    from cptrain.data.documents import skip_summary
    from cptrain.data.inspect import source_text_bytes
    from cptrain.data.shards import cache_dir, inputs_fingerprint, read_meta, write_token_shard

    meta = read_meta(data, src.name)
    if meta and not force and meta["fingerprint"] == inputs_fingerprint(src, tokenizer.fingerprint):
        print(f"{src.name}: up to date in {cache_dir(data, src.name)} ({meta['stats']['tokens']:,} tokens)")
        return
    start = time.perf_counter()
    if is_main_process():  # the share done is measured against the source's text bytes (no estimate for datasets)
        total = source_text_bytes(src) if src.cfg.format != "datasets" else None
        tokenizer.progress = Progress(src.name, total_bytes=total)
    try:
        meta = write_token_shard(data, src, tokenizer)
    finally:
        tokenizer.progress = None
    stats, seconds = meta["stats"], time.perf_counter() - start
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(stats["skipped"].items())) or "none"
    print(
        f"{src.name}: {stats['documents']:,} documents, {stats['tokens']:,} tokens in {seconds:.1f}s "
        f"({stats['tokens'] / max(seconds, 1e-9):,.0f} tokens/s); skipped: {skipped} "
        f"-> {cache_dir(data, src.name)}"
    )
    for line in skip_summary(stats):  # one line per kind; meta.json names the files one by one
        print(
            f"{src.name}: warning: {line} (see {cache_dir(data, src.name) / 'meta.json'})",
            file=sys.stderr,
        )
