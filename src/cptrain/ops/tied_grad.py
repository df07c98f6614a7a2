"""One gradient buffer for a tied embedding: the LM head's and the lookup's gradients land in the same tensor.

With `lm_head.weight is embed_tokens.weight`, autograd computes two [V, H] gradients (the fused
cross-entropy's, and the lookup's: a zero-filled [V, H] with the used rows scattered in) and adds them:
for llama3.2-1b in bf16 that is a 0.5 GB fill and a 1.5 GB add per step (0.7 ms on an H100). Here the
cross-entropy leaves its (already scaled) weight gradient in a `GradSlot` instead of returning it, and the
lookup's backward, which autograd runs last (the lookup is the first op of the forward), adds its rows
into that tensor in place (ops/add_rows.py: duplicates summed in fp32, in a fixed order) and returns it as
the weight's one gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cptrain.ops.add_rows import add_rows_


class GradSlot:
    """Holds the LM head's weight gradient between the cross-entropy's backward and the lookup's."""

    __slots__ = ("grad",)

    def __init__(self):
        self.grad: torch.Tensor | None = None


class _LookupSharingGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, slot: GradSlot):
        ctx.save_for_backward(ids)
        ctx.slot, ctx.weight_meta = slot, (weight.shape, weight.dtype, weight.device)
        return F.embedding(ids, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (ids,) = ctx.saved_tensors
        grad, ctx.slot.grad = ctx.slot.grad, None
        shape, dtype, device = ctx.weight_meta
        if grad is None:  # the head's gradient never came (its loss was not part of this backward)
            grad = torch.zeros(shape, dtype=dtype, device=device)
        add_rows_(grad, ids, grad_out.reshape(-1, shape[1]))
        return None, grad, None


def lookup_sharing_grad(ids: torch.Tensor, weight: torch.Tensor, slot: GradSlot) -> torch.Tensor:
    """`F.embedding(ids, weight)` whose weight gradient is `slot.grad` (if set when its backward runs) plus
    the lookup's own rows."""
    return _LookupSharingGrad.apply(ids, weight, slot)
