"""Attention fwd+bwd at training shapes: FlexAttention settings against cuDNN / flash SDPA.

    python3 benchmarks/kernels_attention.py        # llama3.2-1b and llama3.1-8b heads, seq 8192

Which backend, and which FlexAttention block sizes, cptrain should use for packed rows (document mask)
and for rows holding a single document (plain causal). Per head shape and row kind: FlexAttention with
the inductor defaults and with a few forward / backward block settings (`kernel_options`), and for
single-document rows SDPA restricted to cuDNN and to flash; for packed rows cptrain's hybrid path
(documents of 2048+ tokens as their own causal SDPA calls, FlexAttention for the rest). TFLOP/s counts the attention work actually
masked in (causal, per document), 4*S_doc^2/2*D*Hq forward and 2.5x that backward.
Writes benchmarks/results/<date>-<device>-kernels-attention.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

HEADS = {"llama3.2-1b": (32, 8, 64), "llama3.1-8b": (32, 8, 128)}
# document lengths of one packed row: a spread like the stdlib corpus (median ~1.7K tokens, long tail)
PACKED_DOCS = [3100, 410, 1720, 900, 2062]
FLEX_SETTINGS = {  # name -> kernel_options (None: inductor's defaults)
    "flex default": None,
    "fwd 128x64 w4 s3": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3},
    "fwd 128x128 w8 s2": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8, "fwd_num_stages": 2},
    "bwd 64/128 w8 s3": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                         "bwd_num_warps": 8, "bwd_num_stages": 3},
    "bwd 64/64 w4 s3": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
                        "bwd_num_warps": 4, "bwd_num_stages": 3},
    "bwd 32/128 w4 s3": {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 32,
                         "bwd_num_warps": 4, "bwd_num_stages": 3},
    "bwd 64/128 w8 s2": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                         "bwd_num_warps": 8, "bwd_num_stages": 2},
}


def doc_ids(kind: str, seq: int, device) -> torch.Tensor:
    if kind == "single":
        return torch.zeros(1, seq, dtype=torch.int32, device=device)
    lengths = [n * seq // sum(PACKED_DOCS) for n in PACKED_DOCS]
    lengths[-1] += seq - sum(lengths)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                   torch.tensor(lengths, device=device))[None].int()


def masked_flops(docs: torch.Tensor, hq: int, d: int) -> float:
    """Forward flops of causal attention within each document (2 matmuls of 2*S^2/2*D each)."""
    _, counts = torch.unique_consecutive(docs[0], return_counts=True)
    return float(sum(2 * 2 * (n * n / 2) * d * hq for n in counts.tolist()))


def time_fn(fn, q, k, v, grad, warmup: int, repeats: int) -> tuple[float, float]:
    """(median forward ms, median forward+backward ms)."""
    fwd, both = [], []
    for i in range(warmup + repeats):
        for t in (q, k, v):
            t.grad = None
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        e0.record()
        out = fn(q, k, v)
        e1.record()
        out.backward(grad)
        e2.record()
        torch.cuda.synchronize()
        if i >= warmup:
            fwd.append(e0.elapsed_time(e1))
            both.append(e0.elapsed_time(e2))
    return harness.median(fwd), harness.median(both)


def variants(docs: torch.Tensor, kind: str, gqa: bool, settings: str = "all"):
    if settings == "varlen":
        yield from varlen_variants(docs)
        return
    s = docs.shape[1]
    flat = docs[0]

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (flat[q_idx] == flat[kv_idx])

    block_mask = create_block_mask(mask_mod, 1, None, s, s, device=docs.device, _compile=True)
    compiled = torch.compile(flex_attention, dynamic=False)
    for name, opts in FLEX_SETTINGS.items():
        if settings == "default" and opts is not None:
            continue
        def run(q, k, v, opts=opts):
            return compiled(q, k, v, block_mask=block_mask, enable_gqa=gqa, kernel_options=opts)
        yield name, run, "bhsd"
    if kind == "packed":  # cptrain's hybrid path: long documents through cuDNN SDPA, FlexAttention the rest
        from cptrain.ops.attention import (
            flex_block_mask,
            hybrid_attention,
            long_document_spans,
            prefer_cudnn_sdpa,
        )

        prefer_cudnn_sdpa()
        spans = long_document_spans(docs)
        hybrid_mask = flex_block_mask(docs, spans)

        def run(q, k, v):
            return hybrid_attention(q, k, v, hybrid_mask, spans)
        yield f"hybrid ({len(spans)} long docs)", run, "bhsd"
    if kind == "single":
        for name, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
            def run(q, k, v, backend=backend):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            yield name, run, "bhsd"
    yield from varlen_variants(docs)


def varlen_variants(docs: torch.Tensor):
    """Documents as variable-length sequences, tokens-major layout [S, H, D]: cptrain's op (FlashAttention 4
    where installed) with and without the longest document's length, and PyTorch's own varlen_attn."""
    from cptrain.ops.varlen import cu_seqlens_from_documents, flash_available, varlen_attention

    cu_host = cu_seqlens_from_documents(docs.cpu())
    cu = cu_host.to(docs.device)
    longest = int((cu_host[1:] - cu_host[:-1]).max())
    if flash_available(docs.device):
        yield "varlen fa4", (lambda q, k, v: varlen_attention(q, k, v, cu)), "thd"
        yield "varlen fa4 (max len given)", (lambda q, k, v: varlen_attention(q, k, v, cu, longest)), "thd"
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return
    # causal through the window (-1, 0): torch 2.11's signature has no is_causal; GQA is native to the kernel
    yield "varlen torch (flash 2)", (lambda q, k, v: varlen_attn(q, k, v, cu, cu, longest, longest,
                                                                      window_size=(-1, 0))), "thd"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=300)
    p.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    p.add_argument("--settings", choices=("all", "default", "varlen"), default="all",
                   help="default: FlexAttention with inductor's defaults only (no kernel_options sweep); "
                        "varlen: the variable-length kernels only")
    ns = p.parse_args(argv)
    harness.require_cuda()
    info = harness.device_info()
    dev = torch.device("cuda")
    # every setting is its own compilation of the same function: keep them all instead of falling back
    torch._dynamo.config.cache_size_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 1024
    rows, start = [], time.monotonic()
    for shape, (hq, hkv, d) in HEADS.items():
        for kind in ("packed", "single"):
            docs = doc_ids(kind, ns.seq_len, dev)
            flops = masked_flops(docs, hq, d)
            g = torch.Generator(device=dev).manual_seed(0)
            q = torch.randn(1, hq, ns.seq_len, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
            k = torch.randn(1, hkv, ns.seq_len, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
            v = torch.randn(1, hkv, ns.seq_len, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
            grad = torch.randn_like(q)
            # the same values in the varlen kernels' tokens-major layout [S, H, D]
            thd = [t.detach()[0].transpose(0, 1).contiguous().requires_grad_() for t in (q, k, v)]
            thd_grad = grad[0].transpose(0, 1).contiguous()
            for name, fn, layout in variants(docs, kind, hq != hkv, ns.settings):
                row = {"shape": shape, "heads": f"{hq}/{hkv}x{d}", "rows": kind, "variant": name}
                if time.monotonic() - start > ns.budget_s:
                    rows.append({**row, "status": "skipped (time budget)"})
                    continue
                try:
                    args = (q, k, v, grad) if layout == "bhsd" else (*thd, thd_grad)
                    fwd_ms, both_ms = time_fn(fn, *args, ns.warmup, ns.repeats)
                    row.update(status="ok", fwd_ms=fwd_ms, bwd_ms=both_ms - fwd_ms,
                               fwd_tflops=flops / fwd_ms / 1e9, bwd_tflops=2.5 * flops / (both_ms - fwd_ms) / 1e9)
                except Exception as e:  # a setting the compiler rejects (shared memory, shape) is reported
                    row.update(status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                print(row, flush=True)
                rows.append(row)
    body = [[r["shape"], r["heads"], r["rows"], r["variant"],
             harness.fmt(r.get("fwd_ms"), ".2f"), harness.fmt(r.get("bwd_ms"), ".2f"),
             harness.fmt(r.get("fwd_tflops"), ".0f"), harness.fmt(r.get("bwd_tflops"), ".0f"),
             r["status"].replace("|", "/")] for r in rows]
    md = harness.markdown_table(["shape", "Hq/Hkv x D", "rows", "variant", "fwd ms", "bwd ms", "fwd TFLOP/s",
                                 "bwd TFLOP/s", "status"], body)
    notes = (f"\nBatch 1 x {ns.seq_len}, bf16, median of {ns.repeats} after {ns.warmup} warmup. Packed rows: "
             f"documents of {PACKED_DOCS} tokens scaled to the row. TFLOP/s over the masked-in work only.\n")
    command = harness.command_line(__file__, argv)
    harness.write_and_show("kernels-attention", "Attention fwd+bwd: FlexAttention settings vs SDPA",
                                  md, rows, info, command, notes, None, ns.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
