"""FlashAttention 4's varlen backward under grouped-query attention: the kernel's own GQA path against
k/v expanded to every query head.

    python3 benchmarks/kernels_varlen_gqa.py            # llama3.2-1b and llama3.1-8b heads, seq 8192

With fewer key/value heads than query heads the kernel adds each query head's d(k)/d(v) into fp32
buffers with atomic adds and converts them in a pass of its own (`accum`, what cptrain runs). `expand`
repeats k/v to the query heads, lets the kernel store d(k)/d(v) directly, and sums each group after; its
time here includes the repeat and the sum. (Measured on 1 x H200: `expand` is 3-13% slower, so cptrain
does not use it; results/2026-11-24-1xh200-kernels-varlen-gqa.md.) Per head shape and row kind (packed
documents as in kernels_attention.py, or one document): forward, both backwards, and how far the two
backwards' gradients are apart. Needs flash-attn-4 (benchmarks/gpu_flash4.sh).
Writes benchmarks/results/<date>-<device>-kernels-varlen-gqa.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import harness
import torch
from kernels_attention import HEADS, PACKED_DOCS, doc_ids, masked_flops


def flash_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    """The kernel's backward as cptrain's op calls it."""
    from cptrain.ops.varlen import _flash

    return _flash()._flash_attn_bwd(q, k, v, out, dout, lse, scale, True, cu_seqlens_q=cu_seqlens,
                                    cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen)


def expanded_gqa_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    """The backward on k/v repeated to q's heads (query head h reads key/value head h // group), then d(k),
    d(v) of each group summed."""
    group = q.shape[1] // k.shape[1]
    dq, dk, dv = flash_backward(dout, q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), out, lse,
                                cu_seqlens, max_seqlen, scale)
    t, hkv, d = k.shape
    return dq, dk.view(t, hkv, group, d).sum(2), dv.view(t, hkv, group, d).sum(2)


def measure(hq: int, hkv: int, d: int, docs: torch.Tensor, ns) -> dict:
    from cptrain.ops.varlen import cu_seqlens_from_documents, varlen_attention_fwd

    dev, s = docs.device, docs.shape[1]
    cu_host = cu_seqlens_from_documents(docs.cpu())
    cu, longest = cu_host.to(dev), int((cu_host[1:] - cu_host[:-1]).max())
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(s, h, d, device=dev, dtype=torch.bfloat16, generator=g) for h in (hq, hkv, hkv))
    dout = torch.randn_like(q)
    scale = 1 / math.sqrt(d)
    out, lse = varlen_attention_fwd(q, k, v, cu, longest, scale)
    args = (dout, q, k, v, out, lse, cu, longest, scale)
    def ms(fn):
        return harness.median(harness.cuda_event_ms(fn, ns.warmup, ns.repeats))

    fwd = ms(lambda: varlen_attention_fwd(q, k, v, cu, longest, scale))
    accum, expand = ms(lambda: flash_backward(*args)), ms(lambda: expanded_gqa_backward(*args))
    a, e = flash_backward(*args), expanded_gqa_backward(*args)
    rel = {n: ((x.float() - y.float()).norm() / y.float().norm()).item() for n, x, y in zip("qkv", e, a)}
    flops = masked_flops(docs, hq, d)
    return {"fwd_ms": fwd, "bwd_accum_ms": accum, "bwd_expand_ms": expand, "speedup": accum / expand,
            "fwd_tflops": flops / fwd / 1e9, "bwd_accum_tflops": 2.5 * flops / accum / 1e9,
            "bwd_expand_tflops": 2.5 * flops / expand / 1e9, "rel_diff": rel}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, nargs="+", default=[8192])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    ns = p.parse_args(argv)
    harness.require_cuda()
    from cptrain.ops.varlen import flash_available

    if not flash_available():
        sys.exit("flash-attn-4 is not importable here (or CPTRAIN_FLASH4=0): run benchmarks/gpu_flash4.sh first")
    info = harness.device_info()
    rows = []
    for seq in ns.seq_len:
        for shape, (hq, hkv, d) in HEADS.items():
            for kind in ("packed", "single"):
                row = {"shape": shape, "heads": f"{hq}/{hkv}x{d}", "seq": seq, "rows": kind}
                try:
                    row.update(measure(hq, hkv, d, doc_ids(kind, seq, torch.device("cuda")), ns), status="ok")
                except Exception as e:  # one shape's failure is a row, not the end of the table
                    row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                print(row, flush=True)
                rows.append(row)
    body = [[r["shape"], r["heads"], str(r["seq"]), r["rows"], harness.fmt(r.get("fwd_ms"), ".3f"),
             harness.fmt(r.get("bwd_accum_ms"), ".3f"), harness.fmt(r.get("bwd_expand_ms"), ".3f"),
             harness.fmt(r.get("speedup"), ".3f"), harness.fmt(r.get("bwd_accum_tflops"), ".0f"),
             harness.fmt(r.get("bwd_expand_tflops"), ".0f"),
             " / ".join(f"{x:.1e}" for x in r["rel_diff"].values()) if "rel_diff" in r else "-",
             r["status"].replace("|", "/")] for r in rows]
    md = harness.markdown_table(["shape", "Hq/Hkv x D", "seq", "rows", "fwd ms", "bwd accum ms", "bwd expand ms",
                                 "accum / expand", "accum TFLOP/s", "expand TFLOP/s",
                                 "rel. diff dq / dk / dv", "status"], body)
    notes = (f"\nOne row of each length, bf16, tokens-major [T, H, D], medians of {ns.repeats} CUDA-event-timed "
             f"calls after {ns.warmup}. Packed rows: documents of {PACKED_DOCS} tokens scaled to the row; the "
             "longest document's length is passed as max_seqlen, as the trainer does. `expand` includes the "
             "repeat of k/v and the sum of d(k)/d(v). TFLOP/s: 2.5 x the masked-in forward flops. rel. diff: "
             "|expand - accum| / |accum| per gradient.\n")
    command = harness.command_line(__file__, argv)
    harness.write_and_show("kernels-varlen-gqa", "FlashAttention 4 varlen backward: GQA accum vs expanded k/v",
                                  md, rows, info, command, notes, None, ns.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
