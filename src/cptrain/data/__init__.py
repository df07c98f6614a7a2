"""Data pipeline: sources -> held-out split -> shards -> tokenize -> mixture -> document-masked packing.

The trainer needs two calls: `build_train_loader` (an endless, resumable iterator of batches for one
data-parallel rank) and `build_eval_batches` (a fixed list of held-out batches).
"""

__all__ = ["DataError", "build_eval_batches", "build_train_loader", "run_train_loader"]


def __getattr__(name: str):
    # lazy: dedup workers import cptrain.data.* and should not pay for torch and the tokenizer stack
    if name in ("build_eval_batches", "build_train_loader", "run_train_loader"):
        from cptrain.data import build

        return getattr(build, name)
    if name == "DataError":
        from cptrain.data.sources import DataError

        return DataError
    raise AttributeError(name)
