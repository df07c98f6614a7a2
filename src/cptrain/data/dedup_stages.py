"""The dedup run as an ordered list of datatrove pipelines ("stages"), independent of the executor.

    filter        read inputs -> length / Gopher / C4 filters -> work/filtered  (+ exact signatures)
    exact-find    one task: sorted exact signatures -> duplicate ids
    exact-dedup   drop exact duplicates -> work/exact_deduped               (+ MinHash signatures)
    minhash-buckets  one task per band: documents sharing a band -> duplicate pairs
    minhash-cluster  one task: pairs -> clusters -> ids to remove (one document kept per cluster)
    near-dedup    drop near duplicates -> <dir>/data                         (the shards to train on)
    report        one task: <dir>/report.md and report.json

Stages whose dedup is disabled are left out; the last text stage writes <dir>/data. A task's rank is
its shard id in every text stage, which is what datatrove's dedup filters rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cptrain.data.dedup_config import DedupConfig


@dataclass
class Stage:
    name: str
    pipeline: list
    tasks: int


@dataclass
class RunLayout:
    """Folders of one dedup run, all under output.dir."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def removed(self) -> Path:
        return self.root / "removed"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def input_list(self) -> Path:
        return self.work / "input_files.txt"

    def stage_logs(self, index: int, name: str) -> Path:
        return self.logs / f"{index}-{name}"


def _removed_writer(cfg: DedupConfig, layout: RunLayout, what: str):
    if not cfg.output.keep_removed:
        return None
    from datatrove.pipeline.writers import JsonlWriter

    from cptrain.data.dedup_steps import output_row

    return JsonlWriter(str(layout.removed / what), output_filename="${rank}.jsonl.gz", adapter=output_row)


def _shard_writer(folder: Path):
    from datatrove.pipeline.writers import JsonlWriter

    # intermediate shards: uncompressed (read once more, then deletable), one file per rank
    return JsonlWriter(str(folder), output_filename="${rank}.jsonl", compression=None)


def _output_writer(cfg: DedupConfig, layout: RunLayout):
    from cptrain.data.dedup_steps import output_row, parquet_row

    max_bytes = cfg.output.shard_mb * 2**20 if cfg.output.shard_mb else -1
    if cfg.output.format == "parquet":
        import pyarrow as pa
        from datatrove.pipeline.writers import ParquetWriter

        schema = pa.schema([("text", pa.string()), ("id", pa.string()), ("metadata", pa.string())])
        return ParquetWriter(
            str(layout.data),
            output_filename="${rank}.parquet",
            adapter=parquet_row,
            schema=schema,
            max_file_size=max_bytes if max_bytes > 0 else 5 * 2**30,
        )
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(
        str(layout.data),
        output_filename="${rank}.jsonl.gz",
        compression="gzip",
        adapter=output_row,
        max_file_size=max_bytes,
    )


def _filters(cfg: DedupConfig, layout: RunLayout, tokenizer) -> list:
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    from cptrain.data.dedup_steps import LengthFilter

    f = cfg.filters
    steps = []
    if f.min_chars or f.max_chars:
        steps.append(LengthFilter(f.min_chars, f.max_chars, _removed_writer(cfg, layout, "filters/length")))
    if f.gopher_repetition:
        steps.append(
            GopherRepetitionFilter(
                exclusion_writer=_removed_writer(cfg, layout, "filters/gopher_repetition"), language=tokenizer
            )
        )
    if f.gopher_quality:
        steps.append(
            GopherQualityFilter(
                exclusion_writer=_removed_writer(cfg, layout, "filters/gopher_quality"), language=tokenizer
            )
        )
    if f.c4:
        steps.append(
            C4QualityFilter(exclusion_writer=_removed_writer(cfg, layout, "filters/c4"), language=tokenizer)
        )
    return steps


def minhash_settings(cfg: DedupConfig):
    """datatrove's MinhashConfig for this run (bands x rows resolved from the threshold if needed)."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig as DatatroveMinhash
    from datatrove.utils.hashing import HashConfig

    bands, rows = cfg.minhash.bands_rows()
    return DatatroveMinhash(
        n_grams=cfg.minhash.ngram,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=cfg.minhash.seed,
        hash_config=HashConfig(precision=cfg.minhash.hash_bits),
    )


def build_stages(cfg: DedupConfig, layout: RunLayout, tasks: int) -> list[Stage]:
    """All stages of the run, in dependency order; `tasks` is the shard count of the text stages."""
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )

    from cptrain.data.dedup_report import ReportStep
    from cptrain.data.dedup_steps import CONTENT_GETTERS, CorpusReader, ShardReader, Tally
    from cptrain.data.dedup_tokenizer import word_tokenizer

    work = layout.work
    tokenizer = word_tokenizer(cfg.word_tokenizer, cfg.language)
    stages: list[Stage] = []
    text_name = "filter"
    text_steps = [
        CorpusReader(
            str(layout.input_list),
            cfg.input.format,
            cfg.input.text_field,
            cfg.input.id_field,
            str(work / "damaged_inputs"),
            str(work / "unread_rows"),
        ),
        Tally("read"),
        *_filters(cfg, layout, tokenizer),
        Tally("kept by filters"),
    ]
    if cfg.exact.enabled:
        exact = ExactDedupConfig(content_getter=CONTENT_GETTERS[cfg.exact.normalize])
        stages.append(
            Stage(
                text_name,
                [
                    *text_steps,
                    _shard_writer(work / "filtered"),
                    ExactDedupSignature(str(work / "exact_sigs"), exact),
                ],
                tasks,
            )
        )
        stages.append(
            Stage(
                "exact-find", [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), exact)], 1
            )
        )
        text_name = "exact-dedup"
        text_steps = [
            ShardReader(str(work / "filtered")),
            Tally("before exact dedup"),
            ExactDedupFilter(str(work / "exact_dups"), exact, _removed_writer(cfg, layout, "exact")),
            Tally("after exact dedup"),
        ]
    if cfg.minhash.enabled:
        mh = minhash_settings(cfg)
        shard = work / ("exact_deduped" if cfg.exact.enabled else "filtered")
        stages.append(
            Stage(
                text_name,
                [
                    *text_steps,
                    _shard_writer(shard),
                    MinhashDedupSignature(str(work / "minhash_sigs"), mh, language=tokenizer),
                ],
                tasks,
            )
        )
        stages.append(
            Stage(
                "minhash-buckets",
                [MinhashDedupBuckets(str(work / "minhash_sigs"), str(work / "minhash_buckets"), config=mh)],
                mh.num_buckets,
            )
        )
        stages.append(
            Stage(
                "minhash-cluster",
                [
                    MinhashDedupCluster(
                        str(work / "minhash_buckets"),
                        str(work / "minhash_clusters"),
                        config=mh,
                        save_cluster_id=True,
                    )
                ],
                1,
            )
        )
        text_name = "near-dedup"
        text_steps = [
            ShardReader(str(shard)),
            Tally("before near dedup"),
            MinhashDedupFilter(
                str(work / "minhash_clusters"), exclusion_writer=_removed_writer(cfg, layout, "near")
            ),
            Tally("after near dedup"),
        ]
    stages.append(Stage(text_name, [*text_steps, _output_writer(cfg, layout)], tasks))
    stages.append(Stage("report", [ReportStep(str(layout.root))], 1))
    return stages
