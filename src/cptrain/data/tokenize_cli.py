"""`cptrain tokenize RECIPE [key=value ...]`: write the memory-mapped token shards of a recipe's sources.

Sources whose shard is already up to date (same tokenizer, settings and input files) are left alone
unless --force is given. Train with `data.mode = "pretokenized"` afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from cptrain.configtools import ConfigError
from cptrain.data.tokenize import DocumentTokenizer

PROGRESS_SECONDS = 10.0  # at most one progress line this often while a source is tokenized


class Progress:
    """Documents and tokens tokenized so far, printed at most every `every` seconds to stderr.

    Fed once per tokenizer batch (hundreds of documents), so the clock is read rarely enough to cost
    nothing measurable."""

    def __init__(self, name: str, every: float | None = None):
        self.name, self.every = name, PROGRESS_SECONDS if every is None else every
        self.documents = self.tokens = 0
        self.start = self.last = time.perf_counter()

    def update(self, documents: int, tokens: int) -> None:
        self.documents += documents
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            seconds = max(now - self.start, 1e-9)
            print(
                f"{self.name}: {self.documents:,} documents, {self.tokens:,} tokens so far in {seconds:.0f}s "
                f"({self.documents / seconds:,.0f} documents/s, {self.tokens / seconds:,.0f} tokens/s)",
                file=sys.stderr,
                flush=True,
            )


class ProgressTokenizer(DocumentTokenizer):
    """A DocumentTokenizer that reports every batch it encodes to `progress` (when set)."""

    progress: Progress | None = None

    def encode(self, texts: list[str]) -> list:
        out = super().encode(texts)
        if self.progress is not None:
            self.progress.update(len(out), sum(len(t) for t in out))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cptrain tokenize", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="path to a recipe .toml")
    parser.add_argument(
        "overrides", nargs="*", help="key.sub=value overrides, e.g. data.cache_dir=/scratch/tok"
    )
    parser.add_argument("--force", action="store_true", help="rewrite shards that are up to date")
    ns = parser.parse_args(argv)

    from cptrain.data.checks import refuse_dedup_run_folder
    from cptrain.data.documents import skip_summary
    from cptrain.data.shards import cache_dir, inputs_fingerprint, read_meta, write_token_shard
    from cptrain.data.sources import resolve_source

    cfg, hf_tokenizer = load_recipe_tokenizer(ns.recipe, ns.overrides)
    data = cfg.data
    tokenizer = ProgressTokenizer(hf_tokenizer, data.add_bos, data.eos_token)
    for i, source in enumerate(data.sources):  # before any source is tokenized
        refuse_dedup_run_folder(source.path, f"data.sources[{i}].path")
    for i, source in enumerate(data.sources):
        src = resolve_source(source, f"data.sources[{i}]")
        meta = read_meta(data, src.name)
        if meta and not ns.force and meta["fingerprint"] == inputs_fingerprint(src, tokenizer.fingerprint):
            print(
                f"{src.name}: up to date in {cache_dir(data, src.name)} ({meta['stats']['tokens']:,} tokens)"
            )
            continue
        start = time.perf_counter()
        tokenizer.progress = Progress(src.name) if is_main_process() else None
        meta = write_token_shard(data, src, tokenizer)
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
    print('train from these shards with data.mode = "pretokenized"')
    return 0
