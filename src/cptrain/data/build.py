"""The two entry points the trainer calls: the training loader of one rank, and the held-out batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cptrain.data.checks import fingerprint, fingerprint_parts, resolve_sources
from cptrain.data.config import DataConfig
from cptrain.data.documents import TokenizedDocuments
from cptrain.data.loader import TrainLoader
from cptrain.data.mixture import Mixture
from cptrain.data.packing import make_batch, pack_documents
from cptrain.data.pipeline import ShardPipeline
from cptrain.data.sources import iter_documents, resolve_source
from cptrain.data.tokenize import DocumentTokenizer


def data_seed(cfg: DataConfig, seed: int | None) -> int:
    """data.seed alone, or combined with the run's seed when the trainer passes one."""
    return cfg.seed if seed is None else cfg.seed * 1_000_003 + seed


def build_train_loader(
    cfg: DataConfig,
    tokenizer,
    *,
    seq_len: int,
    micro_batch_size: int,
    dp_rank: int = 0,
    dp_size: int = 1,
    seed: int | None = None,
    micro_batches_per_step: int = 1,
    first_step: int = 0,
) -> TrainLoader:
    """An endless iterator of Batch dicts for rank `dp_rank` of `dp_size`; see loader.TrainLoader.

    `micro_batches_per_step` (gradient accumulation) turns micro-batch counts into optimizer steps for
    `data.stages`. `first_step` is the optimizer step of the first batch when the loader starts without
    a restored position (a run resumed without its data state starts its stream at the run's step, and
    its stages must follow that step); a position restored by `load_state_dict` brings its own. Every
    source is checked here, so bad paths and missing text fields fail before training starts.
    """
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank={dp_rank} is not in [0, dp_size={dp_size})")
    if first_step < 0:
        raise ValueError(f"first_step={first_step} is not a step (>= 0)")
    doc_tokenizer = DocumentTokenizer(tokenizer, cfg.add_bos, cfg.eos_token)
    seed = data_seed(cfg, seed)
    if cfg.mode == "pretokenized":
        from cptrain.data.shards import open_token_sources

        identities, open_sources = open_token_sources(cfg, doc_tokenizer, seed)
    else:
        resolved = resolve_sources(cfg)
        identities = [src.identity() for src in resolved]

        def open_sources(shard: int, shards: int) -> list:
            return [
                TokenizedDocuments(
                    src,
                    doc_tokenizer,
                    shard=shard,
                    shards=shards,
                    eval_fraction=cfg.eval_fraction,
                    seed=seed,
                    shuffle=cfg.shuffle_files,
                    batch_size=cfg.tokenize_batch_size,
                )
                for src in resolved
            ]

    def make_pipeline(shard: int, shards: int, worker: int, workers: int, first_step: int) -> ShardPipeline:
        return ShardPipeline(
            cfg,
            open_sources(shard, shards),
            seq_len,
            micro_batch_size,
            batch_offset=worker,
            batch_stride=workers,
            micro_batches_per_step=micro_batches_per_step,
            first_step=first_step,
        )

    parts = fingerprint_parts(cfg, identities, doc_tokenizer.fingerprint, seq_len, micro_batch_size)
    parts["seed"] = seed
    return TrainLoader(
        cfg,
        make_pipeline,
        dp_rank=dp_rank,
        dp_size=dp_size,
        parts=parts,
        fingerprint=fingerprint(parts),
        micro_batches_per_step=micro_batches_per_step,
        first_step=first_step,
    )


def run_train_loader(cfg, tokenizer, *, dp_rank: int = 0, dp_size: int = 1, first_step: int = 0) -> TrainLoader:
    """The loader `cptrain run` gives rank `dp_rank` of `dp_size` for a whole recipe (a cptrain.config.Config):
    its seq_len, micro-batch, gradient accumulation and `train.seed`, which shuffles the stream with data.seed.
    `cptrain inspect-data` samples through this too, so what it shows is what that rank of a run reads."""
    return build_train_loader(
        cfg.data,
        tokenizer,
        seq_len=cfg.train.seq_len,
        micro_batch_size=cfg.train.micro_batch_size,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=cfg.train.seed,
        micro_batches_per_step=cfg.train.micro_batches_per_step(dp_size),
        first_step=first_step,
    )


def _eval_streams(cfg: DataConfig, doc_tokenizer: DocumentTokenizer) -> list[Iterator[np.ndarray]]:
    """Per source, its held-out documents' tokens in a fixed order (from raw files or token shards)."""
    if cfg.mode == "pretokenized":
        from cptrain.data.shards import TokenShard, cache_dir, check_cache

        streams = []
        for i, source in enumerate(cfg.sources):
            src = resolve_source(source, f"data.sources[{i}]")
            meta = check_cache(cfg, src, doc_tokenizer, f"data.sources[{i}]")
            streams.append(
                _shard_documents(TokenShard(cache_dir(cfg, src.name), meta["dtype"]), cfg.eval_fraction)
            )
        return streams
    return [
        (
            doc_tokenizer.encode([it.text])[0]
            for it in iter_documents(
                src,
                split="eval",
                shard=0,
                shards=1,
                eval_fraction=cfg.eval_fraction,
                seed=cfg.seed,
                shuffle=False,
                repeat=False,
            )
            if it.text is not None
        )
        for src in resolve_sources(cfg)
    ]


def _shard_documents(shard, eval_fraction: float) -> Iterator[np.ndarray]:
    for d in shard.split(eval_fraction, "eval"):
        yield shard.document(int(d))


def eval_documents(cfg: DataConfig, doc_tokenizer: DocumentTokenizer, max_tokens: int) -> list[np.ndarray]:
    """Held-out documents of all sources in a fixed order, mixed by weight, until `max_tokens`."""
    streams = _eval_streams(cfg, doc_tokenizer)
    weights = cfg.stage_weights(0)
    docs: list[np.ndarray] = []
    taken = [0] * len(streams)
    total = 0
    while total < max_tokens and len(docs) < cfg.eval_max_documents and any(w > 0 for w in weights):
        s = Mixture([weights], [0], taken=list(taken)).choose()
        tokens = next(streams[s], None)
        if tokens is None:  # this source has no more held-out documents
            weights = [0.0 if i == s else w for i, w in enumerate(weights)]
            continue
        taken[s] += len(tokens)
        docs.append(tokens)
        total += len(tokens)
    return docs


def build_eval_batches(
    cfg: DataConfig, tokenizer, *, seq_len: int, micro_batch_size: int, max_batches: int
) -> list[dict[str, torch.Tensor]]:
    """Up to `max_batches` packed batches of held-out documents; the same list on every call and rank."""
    if cfg.eval_fraction <= 0 or max_batches <= 0:
        return []
    doc_tokenizer = DocumentTokenizer(tokenizer, cfg.add_bos, cfg.eos_token)
    docs = eval_documents(cfg, doc_tokenizer, max_batches * micro_batch_size * seq_len + 1)
    tokens, pieces = pack_documents(docs, seq_len, doc_tokenizer.eos_id)
    tokens, pieces = tokens[: max_batches * micro_batch_size], pieces[: max_batches * micro_batch_size]
    short = -len(tokens) % micro_batch_size
    if short:  # fill the last batch with all-padding rows (their labels are all ignored)
        tokens = np.concatenate([tokens, np.full((short, seq_len + 1), doc_tokenizer.eos_id, np.int64)])
        pieces = np.concatenate([pieces, np.full((short, seq_len + 1), -1, np.int32)])
    return [
        make_batch(tokens[i : i + micro_batch_size], pieces[i : i + micro_batch_size])
        for i in range(0, len(tokens), micro_batch_size)
    ]
