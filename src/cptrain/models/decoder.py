"""One decoder for the Llama family: Llama 2/3.x, Mistral, Qwen2/2.5 (qkv bias), Qwen3 (qk-norm), SmolLM.

Layers only: no process groups, no parallelism. Parameter names follow Hugging Face's (minus the
`model.` prefix) so import/export is a rename, not a reshuffle. Build on the meta device, apply
parallelism from outside, then `to_empty()` and `init_weights()`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cptrain.models.presets import ModelArgs
from cptrain.models.rope import apply_rope, rope_cos_sin, rope_frequencies
from cptrain.ops.attention import attention, flex_block_mask, hybrid_attention
from cptrain.ops.tied_grad import GradSlot, lookup_sharing_grad
from cptrain.ops.varlen import cu_seqlens_from_documents, flash_supports, varlen_attention

IGNORE_INDEX = -100


def varlen_max_bucket(cu_seqlens: torch.Tensor) -> int:
    """The longest sequence of host offsets, rounded up to a power of two (at least 128): an upper bound is
    all the kernel needs, and few distinct values keep compiled graphs from specializing on each one."""
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 1
    return max(128, 1 << (longest - 1).bit_length())


class Linear(nn.Linear):
    """nn.Linear computing in its input's dtype. Weights kept in fp32 for the optimizer (one rank, no FSDP)
    are cast where they are used; under FSDP2 they already come in the compute dtype and the cast is a no-op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 like HF, multiply by the weight in the input dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        hd = args.head_size
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, hd
        self.q_proj = Linear(args.dim, args.n_heads * hd, bias=args.qkv_bias)
        self.k_proj = Linear(args.dim, args.n_kv_heads * hd, bias=args.qkv_bias)
        self.v_proj = Linear(args.dim, args.n_kv_heads * hd, bias=args.qkv_bias)
        self.o_proj = Linear(args.n_heads * hd, args.dim, bias=False)
        self.q_norm = RMSNorm(hd, args.norm_eps) if args.qk_norm else None
        self.k_norm = RMSNorm(hd, args.norm_eps) if args.qk_norm else None
        self.backend = "auto"
        # set by Decoder.hidden_states for each batch: the long documents the hybrid path computes apart
        self.long_spans: list[tuple[int, int, int]] = []
        self.hybrid = False

    @torch.compiler.disable
    def _hybrid_attention(self, q, k, v, block_mask):
        # a graph break: the spans are read here, at run time, so they never become compile guards
        return hybrid_attention(q, k, v, block_mask, self.long_spans)

    def forward(self, x, cos, sin, document_ids=None, block_mask=None, varlen=None):
        b, s, _ = x.shape
        # -1 instead of the head count keeps this correct when TP shards the projections
        q = self.q_proj(x).view(b, s, -1, self.head_dim)
        k = self.k_proj(x).view(b, s, -1, self.head_dim)
        v = self.v_proj(x).view(b, s, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if varlen is not None:  # documents as sequences of the flat tokens: [B*S, H, D], no transposes
            cu_seqlens, max_seqlen = varlen
            q, k = apply_rope(q, cos, sin, seq_dim=1), apply_rope(k, cos, sin, seq_dim=1)
            out = varlen_attention(q.reshape(b * s, -1, self.head_dim), k.reshape(b * s, -1, self.head_dim),
                                   v.reshape(b * s, -1, self.head_dim), cu_seqlens, max_seqlen)
            return self.o_proj(out.view(b, s, -1))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.hybrid and block_mask is not None:
            out = self._hybrid_attention(q, k, v, block_mask)
        else:
            out = attention(q, k, v, document_ids, backend=self.backend, block_mask=block_mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = Linear(args.dim, args.ffn_dim, bias=False)
        self.up_proj = Linear(args.dim, args.ffn_dim, bias=False)
        self.down_proj = Linear(args.ffn_dim, args.dim, bias=False)
        self.num_tiles = 1  # >1: sequence-tiled forward/backward (ops/tiled_mlp.py)
        # False: an activation checkpoint's recompute never reads this MLP's output (set by parallelize for
        # Block, where only the residual add follows), so the tiled forward skips it there
        self.recompute_output = True

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_tiles > 1:
            from cptrain.ops.tiled_mlp import tiled_mlp

            return tiled_mlp(self.swiglu, x, self.num_tiles, list(self.parameters()),
                             recompute_output=self.recompute_output)
        return self.swiglu(x)


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, document_ids=None, block_mask=None, varlen=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, document_ids, block_mask, varlen)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        args.check()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        # a ModuleDict keyed by index keeps names stable when pipeline stages drop layers
        self.layers = nn.ModuleDict({str(i): Block(args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        inv_freq, self.rope_attn_factor = rope_frequencies(args.head_size, args.rope_theta, args.rope_scaling,
                                                           args.max_seq_len)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.loss_impl = "naive"  # naive | fused_chunked
        self.attention_backend = "auto"
        self._hybrid_set = False  # some Attention holds long-document spans from the last forward
        # activations' dtype; None: the embedding's. Set from outside when parameters stay fp32 (parallelize)
        self.compute_dtype: torch.dtype | None = None

    def set_attention_backend(self, backend: str) -> None:
        self.attention_backend = backend
        for block in self.layers.values():
            block.self_attn.backend = backend

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the RoPE buffer, which `to_empty()` leaves uninitialised. Call before loading weights."""
        inv_freq, _ = rope_frequencies(self.args.head_size, self.args.rope_theta, self.args.rope_scaling,
                                       self.args.max_seq_len)
        self.inv_freq.copy_(inv_freq.to(self.inv_freq.device))

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init of every parameter (and the buffers)."""
        self.init_buffers()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def hidden_states(self, input_ids, position_ids=None, document_ids=None, long_spans=None, cu_seqlens=None,
                      max_seqlen=0, tied_grad: GradSlot | None = None):
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).expand(b, s)
        if tied_grad is not None:  # the LM head's loss leaves its weight gradient there for the lookup to add to
            x = lookup_sharing_grad(input_ids, self.embed_tokens.weight, tied_grad)
        else:
            x = self.embed_tokens(input_ids)
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        cos, sin = rope_cos_sin(self.inv_freq, position_ids, self.rope_attn_factor, x.dtype)
        if self.uses_varlen(x.device):
            varlen = self._varlen_args(b, s, document_ids, cu_seqlens, max_seqlen, x.device)
            for block in self.layers.values():
                x = block(x, cos, sin, varlen=varlen)
            return self.norm(x)
        block_mask = None
        spans = long_spans if document_ids is not None and long_spans and self._uses_hybrid(x) else []
        if document_ids is not None and self._uses_flex(x):
            block_mask = flex_block_mask(document_ids, spans)
        if spans or self._hybrid_set:  # no walk over the modules per step while the hybrid path is unused
            for module in self.modules():
                if isinstance(module, Attention):
                    module.long_spans, module.hybrid = spans, bool(spans)
            self._hybrid_set = bool(spans)
        for block in self.layers.values():
            x = block(x, cos, sin, document_ids, block_mask)
        return self.norm(x)

    def _shares_tied_grad(self) -> bool:
        """The fused loss and the lookup of a tied embedding write one gradient tensor (ops/tied_grad.py):
        when the loss takes the weight as it is (same dtype as activations: no cast node between) and it is
        a plain tensor (TP's DTensor shards go through their own ops)."""
        w = self.embed_tokens.weight
        return (self.loss_impl == "fused_chunked" and self.lm_head.weight is w and w.requires_grad
                and torch.is_grad_enabled() and not hasattr(w, "placements")
                and w.dtype == (self.compute_dtype or w.dtype))

    def uses_varlen(self, device: torch.device) -> bool:
        """Attention runs on documents as variable-length sequences (ops/varlen.py): backend `varlen`, or
        `auto` on a GPU where FlashAttention 4 is installed and activations are bf16/fp16 (faster than
        FlexAttention on packed rows and than cuDNN on single-document rows, benchmarks/kernels_attention.py).
        The trainer asks the same question to decide what to send: offsets or document ids."""
        if self.attention_backend == "varlen":
            return True
        return self.attention_backend == "auto" and self._flash_runs(device)

    def _flash_runs(self, device: torch.device) -> bool:
        return flash_supports(device, self.compute_dtype or self.embed_tokens.weight.dtype, self.args.head_size)

    def attention_path(self, device: torch.device) -> str:
        """What attention runs on `device`, in words, for logs and benchmark tables."""
        if self.uses_varlen(device):
            kernel = "FlashAttention 4" if self._flash_runs(device) else "reference math"
            return f"varlen ({kernel}): each document its own causal sequence"
        if self.attention_backend == "auto" and device.type == "cuda":
            return "auto: causal SDPA (cuDNN) for single-document rows, FlexAttention for packed rows"
        if self.attention_backend == "auto":
            return "auto: SDPA with a document mask"
        return self.attention_backend

    @staticmethod
    def _varlen_args(b, s, document_ids, cu_seqlens, max_seqlen, device):
        if cu_seqlens is None:  # callers without host offsets (evaluation, tests): found here, one host sync
            if document_ids is None:
                cu_seqlens = torch.arange(0, (b + 1) * s, s, dtype=torch.int32)
            else:
                cu_seqlens = cu_seqlens_from_documents(document_ids)
            max_seqlen = varlen_max_bucket(cu_seqlens)
        cu_seqlens = cu_seqlens.to(device, non_blocking=True)
        # the count of documents changes every batch: one symbolic size instead of a recompile per count
        torch._dynamo.maybe_mark_dynamic(cu_seqlens, 0)
        return cu_seqlens, max_seqlen

    def _uses_flex(self, x: torch.Tensor) -> bool:
        return self.attention_backend in ("flex", "hybrid") or (self.attention_backend == "auto" and x.is_cuda)

    def _uses_hybrid(self, x: torch.Tensor) -> bool:
        return self.attention_backend == "hybrid" or (self.attention_backend == "auto" and x.is_cuda)

    def forward(self, input_ids, position_ids=None, document_ids=None, labels=None, long_spans=None,
                cu_seqlens=None, max_seqlen=0):
        """Logits [B, S, V] without labels; with labels (already shifted: labels[t] follows token t),
        the summed cross-entropy over tokens whose label is not IGNORE_INDEX (fp32 scalar).
        `long_spans`: (row, start, end) of the rows' long documents (ops.attention.long_document_spans), which
        the hybrid attention path (backend auto on CUDA, or hybrid) runs as separate causal SDPA calls.
        `cu_seqlens` / `max_seqlen`: the rows' document offsets (ops.varlen.cu_seqlens_from_documents, host) and
        `varlen_max_bucket` of them, for the varlen path; found from `document_ids` when not given."""
        slot = GradSlot() if labels is not None and self._shares_tied_grad() else None
        h = self.hidden_states(input_ids, position_ids, document_ids, long_spans, cu_seqlens, max_seqlen, slot)
        if labels is None:
            return self.lm_head(h)
        if self.loss_impl == "fused_chunked":
            from cptrain.ops.chunked_ce import linear_cross_entropy

            return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight.to(h.dtype), labels.flatten(),
                                        ignore_index=IGNORE_INDEX, reduction="sum", weight_grad_to=slot)
        logits = self.lm_head(h).float()
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
