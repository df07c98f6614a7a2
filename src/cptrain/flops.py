"""The one FLOP count cptrain uses for MFU, in the trainer, the benchmarks and the reports.

Convention (model FLOPs, not hardware FLOPs; bf16 dense peak):

    training_flops = 6 * N * tokens + 3 * attention_forward_flops

- N counts every weight a token's matmuls touch: all parameters except the input embedding table.
  The lm_head projection IS counted (dim * vocab), tied to the embedding or not, because its matmul
  runs either way (torchtitan and PaLM count it too). Norm weights are counted; they are tiny.
- 6 = 2 FLOPs per multiply-add x (1 forward + 2 backward).
- Attention score and value matmuls, per document of length L, per layer, forward:
  2 matmuls (Q K^T and P V) x 2 FLOPs per multiply-add x L^2/2 causal query-key pairs
  x n_heads x head_dim  =  2 * L^2 * n_heads * head_dim.  Backward is twice that, hence x3.
  Documents are the real ones attention is restricted to: a document-masked packed row of 8192
  tokens holding docs of 1000 and 7192 tokens counts 1000^2 + 7192^2, not 8192^2. A peer that runs
  plain causal attention over the whole row does the full 8192^2 work: pass [8192] for it.
- Recomputation under activation checkpointing is NOT counted (MFU, not HFU), so checkpointing
  lowers MFU. Softmax, norms, RoPE, activations and the loss are not counted.
"""

from __future__ import annotations

from cptrain.models.presets import ModelArgs, count_parameters

# Dense (no sparsity) BF16 tensor-core peaks from the vendor data sheets, FLOP/s per GPU.
# Checked in order: the first substring found in the device name wins.
_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (HBM3), the default H100
    ("H200", 989e12),  # H200 SXM and GH200 have the H100 SXM's tensor cores
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
)


def flop_params(args: ModelArgs) -> int:
    """N in 6*N*tokens: all parameters but the input embedding; the lm_head counts even when tied."""
    counts = count_parameters(args)
    return counts["non_embedding"] + args.vocab_size * args.dim


def attention_forward_flops(args: ModelArgs, doc_lengths: list[int]) -> float:
    """Forward FLOPs of the causal score and value matmuls, all layers, summed over documents."""
    pairs = sum(length * length / 2 for length in doc_lengths)
    return 2 * 2 * pairs * args.n_heads * args.head_size * args.n_layers


def training_flops(args: ModelArgs, doc_lengths: list[int]) -> float:
    """FLOPs of one forward + backward over documents of these lengths (tokens = their sum)."""
    tokens = sum(doc_lengths)
    return 6.0 * flop_params(args) * tokens + 3.0 * attention_forward_flops(args, doc_lengths)


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """training_flops per token for rows of one seq_len-long document each (plain causal attention)."""
    return training_flops(args, [seq_len]) / seq_len


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense BF16 peak FLOP/s of one GPU, from its name (torch.cuda.get_device_name); None if unknown."""
    name = device_name.upper()
    for key, peak in _PEAK_BF16:
        if key in name:
            return peak
    return None


def mfu(flops: float, seconds: float, device_name: str, n_gpus: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1]: `flops` done by `n_gpus` GPUs in `seconds`, over their peak."""
    peak = peak_bf16_flops(device_name)
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * n_gpus)
