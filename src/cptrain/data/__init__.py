"""Data pipeline: sources -> held-out split -> shards -> tokenize -> mixture -> document-masked packing.

The trainer needs two calls: `build_train_loader` (an endless, resumable iterator of batches for one
data-parallel rank) and `build_eval_batches` (a fixed list of held-out batches).
"""

from cptrain.data.build import build_eval_batches, build_train_loader
from cptrain.data.sources import DataError

__all__ = ["DataError", "build_eval_batches", "build_train_loader"]
