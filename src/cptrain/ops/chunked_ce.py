"""Fused linear + cross-entropy that never materialises the [tokens, vocab] logits.

The forward walks the tokens in chunks. For each chunk it computes the logits (one matmul), the
per-token loss, and at once the gradient of the loss with respect to those logits, which it
turns into the chunk's slice of d(hidden) and its share of d(weight) with two more matmuls; only
those two gradients outlive the chunk. The backward just scales them by the incoming gradient. The
matmul work is exactly the 6*T*H*V flops of an unfused forward + backward, and the extra memory is
one [chunk, V] buffer. Only the tokens are chunked: splitting the vocabulary too would cost a second pass
(MIN_TRITON_ROWS has the measurement), except across ranks (vocabulary parallel, below).

- CUDA with Triton: logits in the input dtype from cuBLAS, then one Triton pass over the chunk
  (ops/triton_ce.py) that leaves the logits gradient in place up to a per-row scale, which is applied to
  the gradient matmuls' [chunk, H] operands instead; in fp16, whose range cannot hold the unscaled values,
  two passes (log-sum-exp, then the gradient). fp32 arithmetic inside.
- Elsewhere (CPU, no Triton): the same loop in plain PyTorch, fp32 math.

Gradient accumulation: d(hidden) is complete per chunk (one matmul over the whole vocabulary);
d(weight) is summed over chunks in the weight's dtype, cuBLAS accumulating each chunk's product in
fp32. An fp32 accumulator for a bf16 weight would cost 4*V*H bytes (2 GiB for Llama 3 8B's head),
more than everything else here, so large chunks keep the number of bf16 roundings low instead.

Vocabulary parallel (`process_group`): each rank holds a contiguous [V/tp, H] slice of the weight's
rows (rank order; uneven slices allowed) and the same `hidden` and global `labels`. Per chunk the
ranks all-gather their local log-sum-exp and target logit (one small collective), so every rank gets
the same loss; d(hidden) is all-reduced once at the end so every rank gets the full gradient, and
each rank's d(weight) is that of its own slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

# the triton path keeps one [chunk, V] buffer in the input dtype; the torch path holds about four fp32 ones.
# 768 MiB: 3072-row chunks at V = 128256, 3-4% faster than the 2048 rows of 512 MiB (ce_chunk_rows.py), and
# the extra memory at T=128K, V=128K stays under issue 6's 1 GiB
_LOGITS_BUDGET_BYTES = 768 * 2**20
_TORCH_PATH_BYTES_PER_LOGIT = 16


@dataclass(frozen=True)
class _Options:
    ignore_index: int
    reduction: str
    z_loss: float
    softcap: float | None
    chunk_size: int
    process_group: Any
    use_triton: bool


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         ignore_index: int = -100, reduction: str = "sum", z_loss: float = 0.0,
                         softcap: float | None = None, chunk_size: int | None = None, process_group=None,
                         impl: str = "auto", weight_grad_to=None) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `labels` (already shifted), as an fp32 scalar.

    hidden [N, H], weight [V or V/tp, H], labels [N]. reduction "sum", or "mean" over the tokens whose
    label is not `ignore_index` (0 when there are none). z_loss adds z_loss * logsumexp^2 per token;
    softcap replaces logits by softcap * tanh(logits / softcap). impl: "auto" (Triton on CUDA when
    importable, else PyTorch), "torch" or "triton". Gradients flow to hidden and weight through autograd;
    the graph cannot be backpropagated twice. `weight_grad_to`: an ops.tied_grad.GradSlot that receives the
    weight's gradient instead of autograd (a tied embedding's lookup then adds its rows into it).
    A label outside [0, V) other than `ignore_index` is an error: raised on CPU, a device-side assert on
    CUDA (no host sync). Under autocast hidden and weight are cast to its dtype, as for `hidden @ weight.T`.
    """
    _check_placement(hidden, weight, labels)
    _check_shapes(hidden, weight, labels)
    _check_dtypes(hidden, weight, labels)
    device_type = hidden.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return _under_autocast(hidden, weight, labels, device_type, ignore_index=ignore_index,
                               reduction=reduction, z_loss=z_loss, softcap=softcap, chunk_size=chunk_size,
                               process_group=process_group, impl=impl, weight_grad_to=weight_grad_to)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"linear_cross_entropy: hidden is {hidden.dtype} but weight is {weight.dtype}; "
                         "cast one of them (under FSDP2 set the same param_dtype for the whole model)")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"linear_cross_entropy: reduction must be 'sum' or 'mean', got {reduction!r}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"linear_cross_entropy: softcap must be positive or None, got {softcap}")
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"linear_cross_entropy: impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    use_triton = impl == "triton" or (impl == "auto" and hidden.is_cuda and triton_available())
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0], hidden.element_size() if use_triton
                                        else _TORCH_PATH_BYTES_PER_LOGIT)
    if chunk_size < 1:
        raise ValueError(f"linear_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    opts = _Options(ignore_index, reduction, float(z_loss), softcap, chunk_size, process_group, use_triton)
    return _LinearCrossEntropy.apply(hidden.contiguous(), weight, labels.contiguous(), opts, weight_grad_to)


def _check_placement(*tensors: torch.Tensor) -> None:
    """A DTensor here is a still-sharded FSDP2 parameter (used outside the module's forward) or a TP
    layout; mm would fail on it with a message about mixing tensors. Labels left on the host would reach
    the Triton kernels as a host pointer."""
    for name, t in zip(("hidden", "weight", "labels"), tensors, strict=True):
        if isinstance(t, DTensor):
            raise ValueError(f"linear_cross_entropy: {name} is a DTensor ({t.placements}); pass plain tensors: "
                             "call it inside the FSDP2 module's forward, where the weight is unsharded, or pass "
                             "weight.full_tensor(); for vocabulary parallel pass the local slice "
                             "(to_local()) and process_group")
    if len({t.device for t in tensors}) != 1:
        raise ValueError("linear_cross_entropy: hidden, weight and labels must be on one device, got "
                         f"{[str(t.device) for t in tensors]}")


def _check_shapes(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> None:
    if (hidden.ndim != 2 or weight.ndim != 2 or labels.shape != hidden.shape[:1]
            or hidden.shape[1] != weight.shape[1]):
        raise ValueError(f"linear_cross_entropy: expected hidden [N, H], weight [V, H], labels [N]; got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(labels.shape)} (flatten "
                         "[batch, seq, H] hidden states and [batch, seq] labels first)")


def _check_dtypes(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> None:
    """Float labels would fail deep inside gather (torch) or be read as garbage ids (Triton)."""
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise ValueError(f"linear_cross_entropy: hidden and weight must be floating point, got {hidden.dtype} "
                         f"and {weight.dtype}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"linear_cross_entropy: labels must be int64 or int32 token ids, got {labels.dtype}")


def _under_autocast(hidden, weight, labels, device_type: str, **kwargs) -> torch.Tensor:
    """What `hidden @ weight.T` does under autocast: both matmul inputs in the autocast dtype (float64 left
    alone). The casts are recorded by autograd, so fp32 parameters get fp32 gradients; the kernels then
    run with autocast off, since it would retype their out= matmuls."""
    dtype = torch.get_autocast_dtype(device_type)
    hidden, weight = (t if t.dtype == torch.float64 else t.to(dtype) for t in (hidden, weight))
    with torch.autocast(device_type, enabled=False):
        return linear_cross_entropy(hidden, weight, labels, **kwargs)


# chunks have a multiple of this many rows (when they have more): the matmuls' row tiles on H100 are 256
# high (cuBLAS's nvjet 256x128 kernels), and a chunk of 1664 rows (V = 151936 at 128-row steps) left
# half of its last row of tiles idle in two of its three matmuls
ROW_MULTIPLE = 256

# row counts at which the chunk's three matmuls run well, largest first. Measured on H100
# (results/2026-11-24-1xh100-ce-chunk-rows.md, H in {2048, 4096}, V in {49152, 128256, 151936}): 2048, 2304,
# 3072 and 4096 rows run within 4% of the best count for every (H, V); 1792, 2816 and 3328 (7, 11, 13 steps)
# lose 5-8%, most of it in the d(hidden) matmul, whose output is only rows x H.
GOOD_ROWS = (4096, 3072, 2304, 2048, 1536, 1024, 768, 512, 256)


# the fewest rows a Triton-path chunk gets, past the budget if need be (a vocabulary above ~786K in bf16). Measured
# on H100 (results/2026-11-24-1xh100-ce-chunk-rows-large-vocab.md, V in {262144, 1048576}, H in {2048, 4096}):
# 256-row chunks run at 0.56-0.61 of the best count, 512 rows at 0.83-0.86. Splitting the vocabulary instead,
# to keep the buffer in budget, would run at most 0.75: d(weight) needs the row's whole log-sum-exp, so a split
# recomputes the logits in a second pass (8 instead of 6 T*H*V flops). So the chunk grows and the vocabulary is
# never split within a rank.
MIN_TRITON_ROWS = 512


def default_chunk_size(vocab_local: int, bytes_per_logit: int) -> int:
    """Rows per chunk: the largest of GOOD_ROWS whose logits buffers fit the budget; at least MIN_TRITON_ROWS on
    the Triton path (bf16 or fp32 logits, one buffer) and ROW_MULTIPLE on the torch path."""
    rows = _LOGITS_BUDGET_BYTES // (max(1, vocab_local) * bytes_per_logit)  # a TP rank's slice may be empty
    least = MIN_TRITON_ROWS if bytes_per_logit <= 4 else ROW_MULTIPLE
    return next((good for good in GOOD_ROWS if least <= good <= rows), least)


def _chunk_rows(n_tokens: int, chunk_size: int) -> int:
    """Rows per chunk: as few chunks of at most `chunk_size` as cover the tokens, of equal size rounded up to
    a multiple of ROW_MULTIPLE (8192 tokens with chunk_size 5376 run as 2 x 4096, not 5376 + a slower 2816),
    unless that size is not one of GOOD_ROWS and chunk_size is: then full chunks of chunk_size and a shorter
    last one (8192 tokens with 3072 run as 3072 + 3072 + 2048, not 3 x 2816)."""
    n_chunks = -(-n_tokens // chunk_size)
    rows = -(-n_tokens // max(1, n_chunks))
    if rows > ROW_MULTIPLE:
        rows = -(-rows // ROW_MULTIPLE) * ROW_MULTIPLE
        if rows not in GOOD_ROWS and chunk_size in GOOD_ROWS:
            rows = chunk_size
    return max(1, min(rows, chunk_size, n_tokens))


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, opts: _Options, weight_grad_to):
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        loss, grad_hidden, grad_weight = _loss_and_grads(hidden, weight, labels, opts, need_hidden,
                                                         need_weight)
        ctx.grads = (grad_hidden, grad_weight)
        ctx.use_triton, ctx.weight_grad_to = opts.use_triton, weight_grad_to
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward ran twice; its gradients are computed in the "
                               "forward and handed out once (do not use retain_graph through it)")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        # scale in place: the stored gradients are not needed again
        if ctx.use_triton:
            from cptrain.ops.triton_ce import scale_
        else:
            scale_ = torch.Tensor.mul_
        for grad in (grad_hidden, grad_weight):
            if grad is not None:
                scale_(grad, grad_loss)
        if ctx.weight_grad_to is not None:
            ctx.weight_grad_to.grad, grad_weight = grad_weight, None
        return grad_hidden, grad_weight, None, None, None


def _loss_and_grads(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, opts: _Options,
                    need_hidden: bool, need_weight: bool):
    n_tokens, vocab_local = hidden.shape[0], weight.shape[0]
    group = opts.process_group
    vocab_start, vocab_total, chunk_size = _layout(vocab_local, n_tokens, opts, hidden.device)
    valid = labels != opts.ignore_index
    _check_label_range(labels, valid, vocab_total, opts.ignore_index)
    n_valid = valid.sum()
    row_scale = valid.float()
    if opts.reduction == "mean":
        row_scale = row_scale / n_valid.clamp(min=1)
    need_grads = need_hidden or need_weight
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    # the first chunk writes d(weight) whole (no zero fill, no read of zeros); no chunk at all: zeros
    grad_weight = (torch.empty_like(weight) if n_tokens else torch.zeros_like(weight)) if need_weight else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    rows = _chunk_rows(n_tokens, chunk_size)
    buffer = (torch.empty((rows, vocab_local), dtype=hidden.dtype, device=hidden.device)
              if opts.use_triton else None)
    # with gradients one pass over each chunk's logits (ops/triton_ce.py), the gradient's per-row scale on the
    # [rows, H] sides; two (log-sum-exp, then the gradient) only in fp16, whose range cannot hold the unscaled
    # values (up to e^40, and the row's sum at the target)
    one_pass = need_grads and opts.use_triton and hidden.dtype != torch.float16

    for start in range(0, n_tokens, rows):
        end = min(start + rows, n_tokens)
        h, y, scale = hidden[start:end], labels[start:end], row_scale[start:end]
        if buffer is not None:
            logits = torch.mm(h, weight.t(), out=buffer[: end - start])
        else:
            logits = h @ weight.t()
        if one_pass:
            row_loss = _one_pass_grads(logits, h, y, scale, weight, vocab_start, opts,
                                       grad_hidden[start:end] if grad_hidden is not None else None,
                                       grad_weight, first=start == 0)
            total += torch.where(valid[start:end], row_loss, 0.0).sum()
            continue
        lse, target = _row_stats(logits, y, vocab_start, opts)
        if group is not None:
            lse, target = _combine_over_vocab(lse, target, group)
        total += torch.where(valid[start:end], _row_loss(lse, target, opts.z_loss), 0.0).sum()
        if not need_grads:
            continue
        coef = scale * _z_factor(lse, opts.z_loss) if opts.z_loss else scale
        grad_logits = _logits_grad(logits, y, lse, coef, scale, vocab_start, opts)
        if grad_hidden is not None:
            torch.mm(grad_logits, weight, out=grad_hidden[start:end])
        if grad_weight is not None:
            _add_weight_grad(grad_weight, grad_logits, h, first=start == 0)

    if group is not None and grad_hidden is not None:
        dist.all_reduce(grad_hidden, group=group)
    if opts.reduction == "mean":
        total = total / n_valid.clamp(min=1)
    return total, grad_hidden, grad_weight


def _one_pass_grads(logits, h, labels, scale, weight, vocab_start: int, opts: _Options, grad_hidden, grad_weight,
                    first: bool) -> torch.Tensor:
    """The chunk's per-row losses, its d(hidden) rows written into `grad_hidden` and its d(weight) added into
    `grad_weight` (written when `first`), from `shifted_exp_`'s unscaled gradient E and per-row scale s:
    d(hidden) = s * (E @ W), the product taken in fp32 before the scale; d(weight) += E^T @ (s * h).

    On a vocabulary slice the kernel cannot finish the row: s needs the whole row's log-sum-exp (one all-gather
    after the kernel), and the target's term, scale * (c * p_y - 1), is left out of E and added here in fp32
    as a rank-1 correction per row (t * W[y] into d(hidden), t * h into row y of d(weight)); a slice whose
    logits all lie far below the others' then gets s = 0 and the target's exact -scale, not 0 * inf."""
    from cptrain.ops.triton_ce import row_scale, shifted_exp_

    group = opts.process_group
    lse, target, s, shift = shifted_exp_(logits, labels, scale, vocab_start, opts.ignore_index, opts.softcap,
                                         opts.z_loss, whole_row=group is None)
    correction = None
    if group is not None:
        slice_target = target
        lse, target = _combine_over_vocab(lse, target, group)
        c = _z_factor(lse, opts.z_loss)
        s = scale * c * torch.exp(shift - lse)
        local, hit = _local_targets(labels, vocab_start, logits.shape[1], opts.ignore_index)
        t = scale * (c * torch.exp(slice_target - lse) - 1.0)
        if opts.softcap is not None:
            t = t * _cap_slope(slice_target, opts.softcap)
        correction = local, torch.where(hit, t, 0.0)
    if grad_hidden is not None:
        unscaled = (torch.mm(logits, weight, out_dtype=torch.float32) if logits.dtype != torch.float32
                    else torch.mm(logits, weight))
        if correction is None:
            row_scale(unscaled, s, grad_hidden)
        else:
            local, t = correction
            grad_hidden.copy_(unscaled.mul_(s[:, None]).addcmul_(t[:, None], weight[local]))
    if grad_weight is not None:
        _add_weight_grad(grad_weight, logits, row_scale(h, s, torch.empty_like(h)), first)
        if correction is not None:
            local, t = correction
            grad_weight.index_add_(0, local, (t[:, None] * h).to(grad_weight.dtype))  # t = 0 off the slice
    return _row_loss(lse, target, opts.z_loss)


def _row_loss(lse: torch.Tensor, target: torch.Tensor, z_loss: float) -> torch.Tensor:
    """Each row's cross-entropy, log-sum-exp minus the target's logit, plus z_loss * lse^2."""
    return lse - target + z_loss * lse.square() if z_loss else lse - target


def _z_factor(lse: torch.Tensor, z_loss: float) -> torch.Tensor:
    """d(lse + z_loss * lse^2) / d(lse): the factor on the softmax term of each row's logits gradient."""
    return 1.0 + 2.0 * z_loss * lse


def _add_weight_grad(grad_weight, grad_logits, h, first: bool) -> None:
    """d(weight) += grad_logits^T @ h; the first chunk writes it whole (no zero fill, no read of zeros)."""
    if first:
        torch.mm(grad_logits.t(), h, out=grad_weight)
    else:
        grad_weight.addmm_(grad_logits.t(), h)


def _row_stats(logits, labels, vocab_start: int, opts: _Options):
    if opts.use_triton:
        from cptrain.ops.triton_ce import row_stats

        return row_stats(logits, labels, vocab_start, opts.ignore_index, opts.softcap)
    z = _capped(logits.float(), opts.softcap)
    local, hit = _local_targets(labels, vocab_start, logits.shape[1], opts.ignore_index)
    target = z.gather(1, local.unsqueeze(1)).squeeze(1)
    return torch.logsumexp(z, dim=1), torch.where(hit, target, 0.0)


def _logits_grad(logits, labels, lse, coef, scale, vocab_start: int, opts: _Options) -> torch.Tensor:
    if opts.use_triton:
        from cptrain.ops.triton_ce import logits_grad_

        return logits_grad_(logits, labels, lse, coef, scale, vocab_start, opts.softcap)
    z = _capped(logits.float(), opts.softcap)
    grad = torch.exp(z - lse.unsqueeze(1)) * coef.unsqueeze(1)
    local, hit = _local_targets(labels, vocab_start, logits.shape[1], opts.ignore_index)
    grad.scatter_add_(1, local.unsqueeze(1), -torch.where(hit, scale, 0.0).unsqueeze(1))
    if opts.softcap is not None:
        grad *= _cap_slope(z, opts.softcap)
    return grad.to(logits.dtype)


def _capped(z: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return z if softcap is None else softcap * torch.tanh(z / softcap)


def _cap_slope(z: torch.Tensor, softcap: float) -> torch.Tensor:
    """d(capped)/d(logit) written with the capped value z: 1 - tanh^2 = 1 - (z / softcap)^2."""
    return 1.0 - (z / softcap).square()


def _local_targets(labels, vocab_start: int, vocab_local: int, ignore_index: int):
    """Column of each label in this vocabulary slice (clamped in range) and whether it lies there."""
    local = labels - vocab_start
    hit = (labels != ignore_index) & (local >= 0) & (local < vocab_local)
    return local.clamp(0, vocab_local - 1), hit


def _layout(vocab_local: int, n_tokens: int, opts: _Options, device: torch.device) -> tuple[int, int, int]:
    """(first vocabulary row of this rank's slice, whole vocabulary size, chunk size every rank uses).

    Under a process group the ranks must run the same chunks, since each chunk holds a collective: the
    default chunk size follows the local slice, and uneven slices can round to different sizes (slices of
    69905 and 69906 rows give 2048 and 1792 rows of bf16 logits), so all take the smallest. One all-gather
    of three integers and one host sync (the slice offsets needed it already; it once took one `.item()`
    per rank). Ranks given different tokens would pair up unrelated chunks: refused.
    """
    group = opts.process_group
    if group is None:
        return 0, vocab_local, opts.chunk_size
    mine = torch.tensor([vocab_local, n_tokens, opts.chunk_size], dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts).tolist()
    if len({row[1] for row in table}) != 1:
        raise ValueError("linear_cross_entropy: with a process_group every rank must pass the same hidden "
                         f"tokens and labels; token counts by rank: {[row[1] for row in table]}")
    sizes = [row[0] for row in table]
    return sum(sizes[: dist.get_rank(group)]), sum(sizes), min(row[2] for row in table)


def _check_label_range(labels: torch.Tensor, valid: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """A label outside [0, vocab) would silently count as a zero target logit (both paths clamp or mask
    it). On CUDA the check is device-side (`torch._assert_async`: no host sync, a device assert like
    F.cross_entropy's); elsewhere it raises with the offending value."""
    bad = valid & ((labels < 0) | (labels >= vocab))
    if labels.is_cuda:
        torch._assert_async(~bad.any(), "linear_cross_entropy: a label is outside [0, vocab_size) and is not "
                                        "ignore_index")
    elif labels.device.type != "meta" and bool(bad.any()):
        raise ValueError(f"linear_cross_entropy: labels must be in [0, {vocab}) (the vocabulary size) or equal "
                         f"ignore_index={ignore_index}; got {labels[bad][0].item()}")


def _combine_over_vocab(lse: torch.Tensor, target: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Global log-sum-exp and target logit from every rank's vocabulary slice (one all-gather)."""
    local = torch.stack([lse, target])
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    every = torch.stack(parts)
    return torch.logsumexp(every[:, 0], dim=0), every[:, 1].sum(dim=0)
