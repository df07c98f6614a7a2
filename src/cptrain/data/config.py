"""The `[data]` section of a recipe: where text comes from and how it is mixed and packed."""

from __future__ import annotations

from dataclasses import dataclass, field

from cptrain.configtools import require


@dataclass
class SourceConfig:
    """One named text source with a mixture weight."""

    name: str = ""
    path: str = ""  # file, folder, glob, or "builtin:python-stdlib"
    format: str = "auto"  # auto | jsonl | txt
    text_field: str = "text"
    weight: float = 1.0

    def validate(self, prefix: str) -> None:
        require(bool(self.path), f"{prefix}.path", self.path, "a file, folder, glob or builtin:python-stdlib")
        require(self.weight >= 0, f"{prefix}.weight", self.weight, "a weight >= 0")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    eval_fraction: float = 0.02  # held-out share of documents, chosen by a hash of the document name
    eval_max_documents: int = 64
    add_bos: bool = False
    eos_token: str | None = None  # default: the tokenizer's eos token
    seed: int = 1234

    def validate(self, prefix: str) -> None:
        require(0.0 <= self.eval_fraction < 1.0, f"{prefix}.eval_fraction", self.eval_fraction, "0 <= x < 1")
