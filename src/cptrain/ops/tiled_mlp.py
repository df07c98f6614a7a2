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
  drops and recomputes it like any other saved tensor. A checkpoint's recompute would also rerun the
  whole tiled forward, although the backward only needs the input: 3 matmul units thrown away. When the
  caller knows nothing recomputed after the MLP reads its output (`recompute_output=False`: cptrain's
  Block, whose MLP output only meets the residual add, under `activation_checkpointing = "full"`), the
  fast path's forward called inside a backward pass (that is, by a checkpoint's recompute) saves its
  tensors and returns an uninitialised output instead of computing it.
- torch.compile: the call is a graph break (`torch.compiler.disable`); its backward runs autograd itself.
- `fn` must be deterministic (no dropout): the backward recomputes it.

Fast path: when `fn` is cptrain's own `MLP.swiglu` over three plain bias-free Linears (no TP, FP8 or hooks
on them, no autocast), the backward is written out by hand: it
recomputes only the gate and up projections (2 of the forward's 3 matmuls) and accumulates the weight
gradients with addmm, so a tiled MLP costs 11 matmul units against the untiled 9 instead of 12. The
elementwise SwiGLU forward and backward are one fused in-place pass each (ops/swiglu.py): a tile holds
three [tile, ffn] tensors at its peak, and the pass over them costs 9 tensor-sized transfers where eager
PyTorch's silu/mul and their gradients cost 19. Weights kept in fp32 for the optimizer (one rank without
FSDP2, whose cptrain `Linear`s cast them where used) are cast to the activations' dtype once per forward
and once per backward, not once per tile, and their gradients are summed over the tiles in fp32 (on CUDA
by addmm into the fp32 buffer); the generic path would cast per tile and add each tile's gradient.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import nn

from cptrain.ops.swiglu import swiglu_backward_, swiglu_forward_

_BYTES_PER_ELEMENT = 2  # bf16 activations
# the backward's gate and up outputs and the hidden gradient (overwritten in place by ops/swiglu.py)
_LIVE_FFN_TENSORS = 3
_UNTILED_MAX_BYTES = 2**30
_MIN_TILE_BUDGET_BYTES = 128 * 2**20
_MIN_TILE_TOKENS = 1024
_TILE_ALIGN = 128


@torch.compiler.disable
def tiled_mlp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num_tiles: int,
              params: list[torch.Tensor], fast_path: bool = True, recompute_output: bool = True) -> torch.Tensor:
    """fn(x) for x [..., dim], computed over `num_tiles` token tiles; gradients flow to x and `params`
    (the tensors `fn` reads, e.g. `list(mlp.parameters())`). fast_path=False forces the generic path.
    recompute_output=False: when an activation checkpoint's recompute calls this inside the backward, the
    output's values are never read (the caller guarantees it), so the fast path skips computing them."""
    num_tiles = _tile_count(num_tiles)
    if num_tiles == 1:
        return fn(x)
    weights = _plain_swiglu_weights(fn, params, x) if fast_path else None
    if weights is not None:
        skip = not recompute_output and torch._C._current_graph_task_id() != -1
        return _TiledSwiGLU.apply(x, num_tiles, skip, *weights)
    return _TiledMLP.apply(fn, num_tiles, x, *params)


def _tile_count(num_tiles) -> int:
    """A zero, negative or fractional count is a caller's bug; running untiled would hide it."""
    try:
        count = operator.index(num_tiles)
    except TypeError:
        count = 0
    if count < 1:
        raise ValueError(f"tiled_mlp: num_tiles must be a positive integer (1: untiled), got {num_tiles!r}")
    return count


def _plain_swiglu_weights(fn, params: list[torch.Tensor], x: torch.Tensor):
    """(gate, up, down) weights when `fn` is cptrain's MLP.swiglu over plain bias-free Linears, else None."""
    from cptrain.models.decoder import MLP, Linear

    mlp = getattr(fn, "__self__", None)
    if not isinstance(mlp, MLP) or getattr(fn, "__func__", None) is not MLP.swiglu:
        return None
    layers = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    # anything that changes what a Linear computes (TP, FP8 swaps, hooks, autocast) takes the generic path.
    # Weights of another dtype only in cptrain's Linear, which casts them to the input's dtype where used
    if any(type(m) not in (nn.Linear, Linear) or m.bias is not None or m._forward_hooks or m._forward_pre_hooks
           or type(m.weight) not in (nn.Parameter, torch.Tensor) or not m.weight.is_floating_point()
           or (m.weight.dtype != x.dtype and type(m) is not Linear) for m in layers):
        return None
    if torch.is_autocast_enabled(x.device.type) or nn.modules.module._global_forward_hooks \
            or nn.modules.module._global_forward_pre_hooks:
        return None
    weights = [m.weight for m in layers]
    if len(params) != 3 or {id(p) for p in params} != {id(w) for w in weights}:
        return None
    return weights


def split_tiles(tokens: torch.Tensor, num_tiles: int) -> list[torch.Tensor]:
    """Row slices of [n, dim] `tokens`, at most `num_tiles` of them. Tiles of 1024+ rows are rounded up to
    a multiple of 128 rows (the last tile takes the rest): cuBLAS runs much slower on odd row counts (on
    H100, 48 tiles of 2730-2731 rows took 1.05x the time of 32 tiles of 4096)."""
    n = tokens.shape[0]
    size = -(-n // num_tiles)
    if size >= _MIN_TILE_TOKENS:
        size = -(-size // _TILE_ALIGN) * _TILE_ALIGN
    return list(tokens.split(size))


def resolve_num_tiles(setting: str | int, seq_len: int, dim: int, ffn_dim: int, micro_batch_size: int) -> int:
    """Tile count for `model.tiled_mlp = "off" | "auto" | "N"`.

    auto: 1 when the untiled intermediates take at most 1 GiB (short sequences: tiling would only cost
    time). Otherwise enough tiles that one tile's ffn-wide intermediates fit in a quarter of one
    [tokens, dim] activation (at least 128 MiB): the MLP then adds little beyond its input, output and
    their gradients, which exist anyway (with the 4-8x wider ffn, the MLP's peak falls below 1/8 of the
    untiled one). Tiles keep at least 1024 tokens so their matmuls stay efficient.
    """
    text = str(setting).strip().lower()
    if text == "off":
        return 1
    if text == "auto":
        tokens = seq_len * micro_batch_size
        intermediates = tokens * ffn_dim * _BYTES_PER_ELEMENT * _LIVE_FFN_TENSORS
        if intermediates <= _UNTILED_MAX_BYTES:
            return 1
        budget = max(tokens * dim * _BYTES_PER_ELEMENT // 4, _MIN_TILE_BUDGET_BYTES)
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
        out = flat = None  # allocated once the first tile shows the output width; returned unviewed
        start = 0
        for tile in split_tiles(tokens, num_tiles):
            y = fn(tile)
            if out is None:
                out = y.new_empty((*x.shape[:-1], y.shape[-1]))
                flat = out.view(-1, y.shape[-1])
            flat[start : start + tile.shape[0]] = y
            start += tile.shape[0]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        need_x = ctx.needs_input_grad[2]
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[3:]) if need]
        params = [ctx.params[i] for i in wanted]
        tokens = x.reshape(-1, x.shape[-1])
        grad_tokens = grad_out.reshape(tokens.shape[0], grad_out.shape[-1])  # not -1: 0 tokens is allowed
        grad_x = torch.empty_like(tokens) if need_x else None
        sums: list[torch.Tensor | None] = [None] * len(params)
        owned = [False] * len(params)  # tile 0's grad may alias autograd's buffers: add out of place once
        device_type, autocast_on, autocast_dtype = ctx.autocast
        start = 0
        tiles = zip(split_tiles(tokens, ctx.num_tiles), split_tiles(grad_tokens, ctx.num_tiles), strict=True)
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


class _TiledSwiGLU(torch.autograd.Function):
    """down(silu(x @ gate.T) * (x @ up.T)) tile by tile, with the backward written out by hand."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_tiles: int, skip: bool, gate: torch.Tensor, up: torch.Tensor,
                down: torch.Tensor) -> torch.Tensor:
        ctx.num_tiles = num_tiles
        ctx.save_for_backward(x, gate, up, down)
        out = x.new_empty((*x.shape[:-1], down.shape[0]))  # not a view: FSDP2 hooks the returned tensor
        if skip:  # a checkpoint's recompute whose output nobody reads: only the saved tensors matter
            return out
        gate, up, down = (w.to(x.dtype) for w in (gate, up, down))  # fp32 master weights: one cast each
        tokens = x.reshape(-1, x.shape[-1])
        flat = out.view(-1, down.shape[0])
        start = 0
        for tile in split_tiles(tokens, num_tiles):
            end = start + tile.shape[0]
            hidden = swiglu_forward_(tile @ gate.t(), tile @ up.t())
            torch.mm(hidden, down.t(), out=flat[start:end])
            start = end
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, *weights = ctx.saved_tensors
        need_x, _, _, need_gate, need_up, need_down = ctx.needs_input_grad
        tokens = x.reshape(-1, x.shape[-1])
        grad_tokens = grad_out.reshape(tokens.shape[0], grad_out.shape[-1])  # not -1: 0 tokens is allowed
        grad_x = torch.empty_like(tokens) if need_x else None
        # weight grads, in the weights' own dtype, are summed over tiles by addmm (fp32 inside each product);
        # beta=0 on the first tile makes the uninitialised buffers safe. fp32 buffers of bf16 products start
        # at zero and take every tile's product (_accumulate)
        grad_gate, grad_up, grad_down = (
            None if not need else torch.empty_like(w) if w.dtype == x.dtype else torch.zeros_like(w)
            for w, need in zip(weights, (need_gate, need_up, need_down), strict=True))
        gate, up, down = (w.to(x.dtype) for w in weights)
        start = 0
        tiles = zip(split_tiles(tokens, ctx.num_tiles), split_tiles(grad_tokens, ctx.num_tiles), strict=True)
        for i, (tile, grad_tile) in enumerate(tiles):
            end, beta = start + tile.shape[0], 0 if i == 0 else 1
            # one fused pass turns (g, u, d(hidden)) into (d(g), d(u), hidden) in place: 3 live tensors per tile
            grad_g, grad_u, hidden = swiglu_backward_(tile @ gate.t(), tile @ up.t(), grad_tile @ down)
            if grad_down is not None:
                _accumulate(grad_down, grad_tile.t(), hidden, beta)
            del hidden
            if grad_gate is not None:
                _accumulate(grad_gate, grad_g.t(), tile, beta)
            if grad_up is not None:
                _accumulate(grad_up, grad_u.t(), tile, beta)
            if grad_x is not None:
                torch.mm(grad_g, gate, out=grad_x[start:end])
                grad_x[start:end].addmm_(grad_u, up)
            start = end
        return (grad_x.view_as(x) if need_x else None), None, None, grad_gate, grad_up, grad_down


_MIXED_ADDMM: list[bool] = []  # [] untried; [True] if addmm with out_dtype works here, [False] if not


def _accumulate(buf: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: int) -> None:
    """buf = beta * buf + a @ b. A buffer of the inputs' dtype takes addmm as is. An fp32 buffer (zeroed by
    the caller) of bf16 inputs takes addmm with out_dtype where the backend has it (CUDA: the product is
    added in fp32, no bf16 rounding per tile), else the product is added in a second pass."""
    if buf.dtype == a.dtype:
        torch.addmm(buf, a, b, beta=beta, out=buf)
        return
    low_precision = a.dtype in (torch.bfloat16, torch.float16)
    if buf.is_cuda and buf.dtype == torch.float32 and low_precision and _MIXED_ADDMM != [False]:
        try:
            torch.addmm(buf, a, b, out_dtype=buf.dtype, out=buf)
            if not _MIXED_ADDMM:
                _MIXED_ADDMM.append(True)
            return
        except RuntimeError:
            if _MIXED_ADDMM:  # it worked before: this failure is something else
                raise
            _MIXED_ADDMM.append(False)
    buf.add_(torch.mm(a, b).to(buf.dtype))
