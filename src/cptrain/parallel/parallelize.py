"""Apply parallelism and memory policies to a meta-device decoder, in one fixed order.

Order matters: activation checkpointing wraps each block, then each block is compiled, then FSDP2
shards each block and finally the root (so embeddings, final norm and lm_head share one group and
tied weights stay tied). Call on the meta-device model, before `to_empty()` and weight loading.

One rank (`fsdp="auto"` and a 1-rank mesh): no FSDP2. There is nothing to shard or reduce, yet FSDP2
would still copy every parameter into a bf16 buffer twice a step (forward, and again for backward) and
every gradient through fp32 reduce buffers. Instead the parameters stay fp32 (the optimizer's master
weights) and each layer casts its weight to `param_dtype` where it uses it (`decoder.Linear`, RMSNorm);
gradients come back through the cast as fp32. Same arithmetic as FSDP2's mixed precision on one rank:
bf16 weights and activations in forward and backward, fp32 gradients, fp32 optimizer.
"""

from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from cptrain.models.decoder import Decoder

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


# what the wrappers applied here put into parameter names: checkpoint_wrapper's module attribute (its
# state_dict hooks drop it there, not in named_parameters) and torch.compile's OptimizedModule (kept in both)
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def native_name(name: str) -> str:
    """A parameter or state-dict name of the parallelized model as the plain Decoder names it."""
    for token in WRAPPER_PREFIXES:
        name = name.replace(token, "")
    return name


def param_dtype_for(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[setting]


def uses_fsdp(mesh, fsdp: str) -> bool:
    """FSDP2 wraps the model unless fsdp='auto' and the data-parallel mesh has a single rank."""
    return fsdp == "always" or mesh.size() > 1


def parallelize(model: Decoder, mesh, *, param_dtype: torch.dtype, reduce_dtype: torch.dtype,
                activation_checkpointing: str = "none", compile_blocks: bool = False,
                fsdp: str = "auto", reshard_after_forward: bool = True) -> Decoder:
    # activations run in param_dtype either way; fp32 parameters (no FSDP) are cast where used
    model.compute_dtype = param_dtype
    # 1. activation checkpointing: recompute each block in backward
    if activation_checkpointing == "full":
        for key, block in list(model.layers.items()):
            # the MLP ends the block (only the residual add follows, which saves nothing): a recompute never
            # reads its output, so a tiled MLP skips computing it there (ops/tiled_mlp.py)
            block.mlp.recompute_output = False
            model.layers[key] = checkpoint_wrapper(block, preserve_rng_state=False)
    # 2. per-block compile: identical blocks share one compiled graph. The final norm too: left eager, its
    # fp32 forward and backward are ~15 kernels over [tokens, dim] (0.6 ms of a llama3.2-1b step at 8K tokens
    # on H100, benchmarks/results/*-profile-q1-norm.md)
    if compile_blocks:
        for key, block in list(model.layers.items()):
            model.layers[key] = torch.compile(block, fullgraph=False)
        model.norm = torch.compile(model.norm, fullgraph=True)
    if not uses_fsdp(mesh, fsdp):
        return model
    # 3. FSDP2: one group per block, the rest in the root group
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    n = len(model.layers)
    for i, block in enumerate(model.layers.values()):
        # the last block's parameters are needed again right away in backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and i < n - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model
