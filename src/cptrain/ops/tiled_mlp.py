"""Sequence-tiled MLP: the [tokens, ffn_dim] intermediates of a SwiGLU MLP are never live all at once.

The forward runs the MLP tile by tile under no_grad and keeps only its input. The backward
recomputes one tile at a time with autograd, takes that tile's gradients for the input and the
parameters, and frees the tile before the next. The MLP is per-token, so tiles are slices of the
flattened [batch * seq, dim] tokens and the result equals the untiled one up to summation order.

Design, and why:
- One autograd.Function whose extra inputs are the MLP's parameters, returning their gradients summed
  over the tiles. Autograd then accumulates each parameter's `.grad` once per backward, exactly like an
  untiled Linear: FSDP2's reduce-scatter, DDP buckets and post-accumulate-grad hooks see one gradient.
  (Calling backward per tile would instead fire those hooks once per tile.)
- The function re-reads the parameters through `fn` (the module's bound method) in the backward; under
  FSDP2 those are the same unsharded tensors the forward used, unsharded again for the backward.
- Activation checkpointing: the input is saved with save_for_backward, so a checkpoint around the block
  drops and recomputes it like any other saved tensor.
- torch.compile: the call is a graph break (`torch.compiler.disable`); its backward runs autograd itself.
- `fn` must be deterministic (no dropout): the backward recomputes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

_BYTES_PER_ELEMENT = 2  # bf16 activations
# gate and up outputs, their gated product and one gradient of that width are live together in backward
_LIVE_FFN_TENSORS = 4
_MIN_TILE_BUDGET_BYTES = 2**30
_MIN_TILE_TOKENS = 1024


@torch.compiler.disable
def tiled_mlp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num_tiles: int,
              params: list[torch.Tensor]) -> torch.Tensor:
    """fn(x) for x [..., dim], computed over `num_tiles` token tiles; gradients flow to x and `params`
    (the tensors `fn` reads, e.g. `list(mlp.parameters())`)."""
    if num_tiles <= 1:
        return fn(x)
    return _TiledMLP.apply(fn, num_tiles, x, *params)


def resolve_num_tiles(setting: str | int, seq_len: int, dim: int, ffn_dim: int, micro_batch_size: int) -> int:
    """Tile count for `model.tiled_mlp = "off" | "auto" | "N"`.

    auto: enough tiles that one tile's ffn-wide intermediates fit in max(1 GiB, one [tokens, dim]
    activation), so the MLP never dominates the block's memory; 1 when the untiled MLP already fits (short
    sequences); tiles of at least 1024 tokens to keep the matmuls efficient.
    """
    text = str(setting).strip().lower()
    if text == "off":
        return 1
    if text == "auto":
        tokens = seq_len * micro_batch_size
        intermediates = tokens * ffn_dim * _BYTES_PER_ELEMENT * _LIVE_FFN_TENSORS
        budget = max(tokens * dim * _BYTES_PER_ELEMENT, _MIN_TILE_BUDGET_BYTES)
        if intermediates <= budget:
            return 1
        return max(1, min(math.ceil(intermediates / budget), tokens // _MIN_TILE_TOKENS))
    try:
        tiles = int(text)
    except ValueError:
        tiles = 0
    if tiles < 1:
        raise ValueError(f"model.tiled_mlp must be 'off', 'auto' or a positive integer, got {setting!r}")
    return tiles


class _TiledMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, num_tiles: int, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.fn, ctx.num_tiles, ctx.params = fn, num_tiles, params
        kind = x.device.type
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        ctx.save_for_backward(x)
        tokens = x.reshape(-1, x.shape[-1])
        out = None
        start = 0
        for tile in tokens.tensor_split(num_tiles):
            y = fn(tile)
            if out is None:
                out = y.new_empty((tokens.shape[0], *y.shape[1:]))
            out[start : start + tile.shape[0]] = y
            start += tile.shape[0]
        return out.view(*x.shape[:-1], *out.shape[1:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        need_x = ctx.needs_input_grad[2]
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[3:]) if need]
        params = [ctx.params[i] for i in wanted]
        tokens = x.reshape(-1, x.shape[-1])
        grad_tokens = grad_out.reshape(tokens.shape[0], -1)
        grad_x = torch.empty_like(tokens) if need_x else None
        sums: list[torch.Tensor | None] = [None] * len(params)
        owned = [False] * len(params)  # tile 0's grad may alias autograd's buffers: add out of place once
        device_type, autocast_on, autocast_dtype = ctx.autocast
        start = 0
        tiles = zip(tokens.tensor_split(ctx.num_tiles), grad_tokens.tensor_split(ctx.num_tiles), strict=True)
        for tile, grad_tile in tiles:
            end = start + tile.shape[0]
            tile = tile.detach().requires_grad_(need_x)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                y = ctx.fn(tile)
            inputs = ([tile] if need_x else []) + params
            grads = list(torch.autograd.grad(y, inputs, grad_tile, allow_unused=True))
            if need_x:
                grad_x[start:end] = grads.pop(0)
            for i, g in enumerate(grads):
                if g is None:
                    continue
                if sums[i] is None:
                    sums[i] = g
                elif owned[i]:
                    sums[i].add_(g)
                else:
                    sums[i], owned[i] = sums[i] + g, True
            start = end
        param_grads: list[torch.Tensor | None] = [None] * len(ctx.params)
        for i, s in zip(wanted, sums, strict=True):
            param_grads[i] = s
        return None, None, grad_x.view_as(x) if need_x else None, *param_grads
