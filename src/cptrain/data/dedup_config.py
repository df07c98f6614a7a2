"""`cptrain dedup` configuration: typed sections read from TOML plus `--section.key value` flags.

Every key carries a one-line help text in its field metadata; `cptrain dedup --help` is generated
from these dataclasses, so the flags and the TOML keys are always the same list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cptrain.configtools import ConfigError, apply_overrides, from_dict, load_toml, override_for, require
from cptrain.data.dedup_lsh import DEFAULT_BANDS, DEFAULT_ROWS, choose_bands_rows


def _key(default, help: str, **kw):
    if callable(default):
        return field(default_factory=default, metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class InputConfig:
    paths: list[str] = _key(  # noqa: RUF009 - _key returns a dataclasses.field
        list, "files, folders (read recursively) or globs of jsonl[.gz|.zst] / parquet files"
    )
    format: Literal["auto", "jsonl", "parquet"] = _key("auto", "auto picks by file extension")
    text_field: str = _key("text", "field holding the document text")
    id_field: str = _key(
        "id",
        "field holding a document id (default id: <file>:N, N the 1-based line number in a jsonl file "
        "or the 0-based row index in a parquet file)",
    )

    def validate(self, prefix: str) -> None:
        require(len(self.paths) > 0, f"{prefix}.paths", self.paths, "at least one file, folder or glob")
        require(bool(self.text_field), f"{prefix}.text_field", self.text_field, "a field name")


@dataclass
class OutputConfig:
    dir: str = _key("", "run folder: data/ (the shards to train on), removed/, report.md, work/, logs/")
    format: Literal["jsonl.gz", "parquet"] = _key("jsonl.gz", "format of the shards in <dir>/data")
    shard_mb: int = _key(
        0, "start a new shard after this many MB of uncompressed text (0: one shard per task)"
    )
    keep_removed: bool = _key(True, "write removed documents to <dir>/removed/<stage>/ for auditing")

    def validate(self, prefix: str) -> None:
        require(bool(self.dir), f"{prefix}.dir", self.dir, "a folder for the results, e.g. data/dedup")
        require(self.shard_mb >= 0, f"{prefix}.shard_mb", self.shard_mb, ">= 0 (0: one shard per task)")


@dataclass
class ExactConfig:
    enabled: bool = _key(True, "drop documents whose normalized text is identical to an earlier one")
    normalize: Literal["whitespace", "none", "simplify"] = _key(
        "whitespace", "whitespace: NFKC + collapse whitespace; simplify: also lowercase, drop punctuation"
    )


@dataclass
class MinhashConfig:
    enabled: bool = _key(True, "drop near-duplicates found by MinHash LSH")
    threshold: float | None = _key(
        None,
        "Jaccard similarity that counts as near-duplicate (default 0.8); "
        "picks bands x rows unless those are set",
    )
    bands: int | None = _key(None, f"LSH bands (default {DEFAULT_BANDS}; set with rows)")
    rows: int | None = _key(None, f"hashes per band (default {DEFAULT_ROWS}; set with bands)")
    ngram: int = _key(5, "shingle size in words")
    seed: int = _key(1, "seed of the hash permutations (keep it fixed across runs)")
    hash_bits: Literal[32, 64] = _key(64, "signature precision; 32 halves disk and memory")

    def validate(self, prefix: str) -> None:
        require(self.ngram >= 1, f"{prefix}.ngram", self.ngram, "a shingle size >= 1 word")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError(
                f"{prefix}.bands and {prefix}.rows go together: set both or neither "
                f"(got bands={self.bands!r}, rows={self.rows!r})",
                f"{prefix}.bands" if self.bands is not None else f"{prefix}.rows",  # the one that was set
            )
        if self.bands is not None:
            require(
                self.threshold is None,
                f"{prefix}.threshold",
                self.threshold,
                f"leave it unset when {prefix}.bands and {prefix}.rows are given (they fix the threshold)",
            )
            require(self.bands >= 1, f"{prefix}.bands", self.bands, "an integer >= 1")
            require(self.rows >= 1, f"{prefix}.rows", self.rows, "an integer >= 1")
            require(
                self.bands * self.rows <= 1024,
                f"{prefix}.bands",
                self.bands,
                "bands * rows <= 1024 hashes per document",
            )
        if self.threshold is not None:
            require(0.0 < self.threshold < 1.0, f"{prefix}.threshold", self.threshold, "a Jaccard in (0, 1)")

    def bands_rows(self) -> tuple[int, int]:
        """The LSH layout actually used: explicit, derived from `threshold`, or the tuned default."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        if self.threshold is not None:
            return choose_bands_rows(self.threshold)
        return DEFAULT_BANDS, DEFAULT_ROWS


@dataclass
class FiltersConfig:
    min_chars: int = _key(0, "drop documents shorter than this many characters (0: off)")
    max_chars: int = _key(0, "drop documents longer than this many characters (0: off)")
    gopher_repetition: bool = _key(
        False, "datatrove GopherRepetitionFilter (repeated lines, paragraphs, n-grams)"
    )
    gopher_quality: bool = _key(False, "datatrove GopherQualityFilter (word counts, symbols, stop words)")
    c4: bool = _key(
        False, "datatrove C4QualityFilter (drops lines without terminal punctuation, code, boilerplate)"
    )

    def validate(self, prefix: str) -> None:
        require(self.min_chars >= 0, f"{prefix}.min_chars", self.min_chars, ">= 0 (0: off)")
        require(self.max_chars >= 0, f"{prefix}.max_chars", self.max_chars, ">= 0 (0: off)")
        require(
            self.max_chars == 0 or self.max_chars > self.min_chars,
            f"{prefix}.max_chars",
            self.max_chars,
            f"0 (off) or more than {prefix}.min_chars = {self.min_chars}",
        )


@dataclass
class ExecutorConfig:
    kind: Literal["local", "slurm"] = _key(
        "local", "local: processes on this machine; slurm: sbatch array jobs"
    )
    tasks: int = _key(0, "shards the corpus is split into (0: local = workers, slurm = one per input file)")
    workers: int = _key(0, "tasks running at once (0: local = CPU count, slurm = no limit)")

    def validate(self, prefix: str) -> None:
        require(self.tasks >= 0, f"{prefix}.tasks", self.tasks, ">= 0 (0: automatic)")
        require(self.workers >= 0, f"{prefix}.workers", self.workers, ">= 0 (0: automatic)")


_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{2}){0,2}$")


@dataclass
class SlurmConfig:
    partition: str = _key("", "partition (empty: the cluster's default partition)")
    time: str = _key("04:00:00", "time limit per task, [D-]HH:MM:SS")
    cpus_per_task: int = _key(1, "CPUs per task")
    mem_per_cpu_gb: int = _key(2, "memory per CPU in GB")
    tasks_per_job: int = _key(
        1, "datatrove tasks run one after another in one array job (fewer, longer jobs)"
    )
    qos: str = _key("", "quality of service (empty: cluster default)")
    job_name: str = _key("cptrain-dedup", "prefix of the job names; each stage appends its name")
    env_command: str = _key("", "shell line that activates the environment (empty: this Python's venv)")
    # dict[str, Any], not a bare dict: the config reader checks a parameterized dict is a table
    # (a bare one took `account=proj` as a string), and --help shows it as one
    sbatch_args: dict[str, Any] = _key(  # noqa: RUF009 - _key returns a dataclasses.field
        dict, 'extra #SBATCH options as a table, e.g. {account = "proj"}'
    )
    wait: bool = _key(True, "block until all stages finished and print the report (false: submit and exit)")

    def validate(self, prefix: str) -> None:
        require(
            bool(_SLURM_TIME.match(self.time)), f"{prefix}.time", self.time, "[D-]HH:MM:SS, e.g. 04:00:00"
        )
        require(self.cpus_per_task >= 1, f"{prefix}.cpus_per_task", self.cpus_per_task, ">= 1")
        require(self.mem_per_cpu_gb >= 1, f"{prefix}.mem_per_cpu_gb", self.mem_per_cpu_gb, ">= 1")
        require(self.tasks_per_job >= 1, f"{prefix}.tasks_per_job", self.tasks_per_job, ">= 1")
        require(bool(self.job_name), f"{prefix}.job_name", self.job_name, "a non-empty name")


@dataclass
class DedupConfig:
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    exact: ExactConfig = field(default_factory=ExactConfig)
    minhash: MinhashConfig = field(default_factory=MinhashConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    language: str = _key(
        "en", 'language code of the text, for datatrove\'s word tokenizer (word_tokenizer = "datatrove")'
    )
    word_tokenizer: Literal["fast", "datatrove"] = _key(
        "fast",
        "fast: regex words (space-separated languages, ~100x faster); datatrove: its tokenizer for "
        "`language` (spaCy for en; needed for zh, ja, th, ...)",
    )

    def validate(self, prefix: str) -> None:
        # sections missing from the file were built from defaults without validation: check them too
        for name in ("input", "output", "filters", "minhash", "executor", "slurm"):
            getattr(self, name).validate(name)
        require(bool(self.language), "language", self.language, "a language code such as 'en'")


def load_dedup_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> DedupConfig:
    """Read the TOML file (optional), apply `section.key=value` overrides, validate; errors name the key
    and whether the file or a command-line flag (an override here) set it."""
    raw = load_toml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides, DedupConfig)
    try:
        return from_dict(DedupConfig, raw)
    except ConfigError as e:
        override = override_for(e.key, overrides)
        if override is not None:
            where = f"command-line flag --{override.split('=', 1)[0].strip()}: "
        else:
            where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}", e.key) from None
