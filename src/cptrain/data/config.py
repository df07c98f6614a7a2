"""The `[data]` section of a recipe: where text comes from and how it is mixed and packed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cptrain.configtools import ConfigError, closest, require

FORMATS = ("auto", "jsonl", "txt", "parquet", "datasets")


@dataclass
class SourceConfig:
    """One named text source with a mixture weight."""

    name: str = ""  # default: derived from the path; must be unique within [data]
    path: str = ""  # file, folder, glob, "builtin:python-stdlib", or a datasets builder / hub name
    format: str = "auto"  # auto (by file extension) | jsonl | txt | parquet | datasets
    text_field: str = "text"  # jsonl / parquet / datasets column holding the document text
    weight: float = 1.0  # share of the training tokens (normalized over the sources), not of documents
    separator: str = ""  # txt: split each file into documents at this string ("" = one doc per file)
    split: str = "train"  # datasets: which split to read
    data_files: list[str] = field(default_factory=list)  # datasets: files for local builders (json, csv...)
    dataset_config: str | None = None  # datasets: the builder config name, if it has several
    streaming: bool = True  # datasets: stream rows instead of building an Arrow cache first

    def validate(self, prefix: str) -> None:
        require(
            bool(self.path),
            f"{prefix}.path",
            self.path,
            "a file, folder, glob, builtin:python-stdlib, or (format='datasets') a dataset name",
        )
        require(
            self.format in FORMATS,
            f"{prefix}.format",
            self.format,
            f"one of {', '.join(FORMATS)}{closest(self.format, FORMATS)}",
        )
        require(self.weight >= 0, f"{prefix}.weight", self.weight, "a weight >= 0")
        if not self.name:
            self.name = _default_name(self.path)


def _default_name(path: str) -> str:
    stem = path.rstrip("/").replace("builtin:", "").split("/")[-1]
    for ext in (".gz", ".zst", ".jsonl", ".json", ".parquet", ".txt"):
        stem = stem.removesuffix(ext)
    return stem.replace("*", "") or "source"


@dataclass
class StageConfig:
    """From optimizer step `start_step` on, mix the sources with `weights` (source name -> weight)."""

    start_step: int = 0
    weights: dict = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        require(
            self.start_step >= 1,
            f"{prefix}.start_step",
            self.start_step,
            "an optimizer step >= 1 (step 0 uses the sources' own weights)",
        )
        for name, w in self.weights.items():
            ok = isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
            require(ok, f"{prefix}.weights.{name}", w, "a number >= 0")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    stages: list[StageConfig] = field(default_factory=list)  # optional mixture changes at given steps
    eval_fraction: float = 0.02  # held-out share of documents, chosen by a hash of the document name
    eval_max_documents: int = 64
    add_bos: Literal["auto"] | bool = "auto"  # auto: as the tokenizer does (Llama 3 yes, SmolLM2 / Qwen no)
    eos_token: str | None = None  # default: the tokenizer's eos token
    seed: int = 1234  # shuffles file order per epoch; the mixture itself is deterministic
    shuffle_files: bool = True
    num_workers: int = 0  # loader worker processes per rank (0: in the training process)
    tokenize_batch_size: int = 32  # documents per batched tokenizer call
    mode: Literal["stream", "pretokenized"] = "stream"  # pretokenized: read shards from `cptrain tokenize`
    cache_dir: str = "data_cache"  # where `cptrain tokenize` writes token shards
    on_resume_mismatch: Literal["error", "restart"] = "error"  # restart: drop the saved data position

    def validate(self, prefix: str) -> None:
        require(0.0 <= self.eval_fraction < 1.0, f"{prefix}.eval_fraction", self.eval_fraction, "0 <= x < 1")
        require(self.eval_max_documents >= 0, f"{prefix}.eval_max_documents", self.eval_max_documents, ">= 0")
        require(self.num_workers >= 0, f"{prefix}.num_workers", self.num_workers, ">= 0")
        require(
            self.tokenize_batch_size >= 1, f"{prefix}.tokenize_batch_size", self.tokenize_batch_size, ">= 1"
        )
        names = [s.name for s in self.sources]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(
                    f"{prefix}.sources[{i}].name = {name!r} is used twice; give each source "
                    f"a unique name (set {prefix}.sources[{i}].name)",
                    f"{prefix}.sources[{i}].name",
                )
        if self.sources:
            _check_weights([s.weight for s in self.sources], f"{prefix}.sources[*].weight")
        last = 0
        for i, stage in enumerate(self.stages):
            key = f"{prefix}.stages[{i}]"
            require(
                stage.start_step > last,
                f"{key}.start_step",
                stage.start_step,
                f"a step after the previous stage's ({last}); list stages in order",
            )
            last = stage.start_step
            for name in stage.weights:
                if name not in names:
                    raise ConfigError(
                        f"{key}.weights.{name}: no source is named {name!r}"
                        f"{closest(name, names)} (sources: {', '.join(names)})",
                        f"{key}.weights.{name}",
                    )
            _check_weights(self.stage_weights(i + 1), f"{key}.weights")

    def stage_weights(self, stage: int) -> list[float]:
        """Weights of every source in stage `stage` (0 = the sources' own weights); unnamed ones keep them."""
        if stage == 0:
            return [s.weight for s in self.sources]
        given = self.stages[stage - 1].weights
        return [float(given.get(s.name, s.weight)) for s in self.sources]


def _check_weights(weights: list[float], key: str) -> None:
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"{key} = {weights}: weights must be >= 0 and at least one must be > 0")
