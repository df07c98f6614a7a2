"""A training step's matmuls alone, back to back: how long they take on this GPU with nothing else running.

    python3 benchmarks/step_gemms.py --preset llama3.1-8b      # ~30 s on one H200

The step of a preset at batch 1 x seq: per block the forward projections (q, k, v, o, gate, up, down:
x @ W^T), then, in reverse, each one's d(input) = dY @ W and d(weight) = dY^T @ X, the calls and
layouts autograd makes for nn.Linear; the lm_head's three at the fused CE's chunk size. No attention, no
pointwise, no optimizer. Timed back to back (the sustained rate), each kind alone for a short load (20
calls after idle: the rate before the clocks drop), and profiled once for the cuBLAS kernels picked. Against a profiled step's matmul time (profile_step.py, kernel family `gemm`)
this says whether the matmuls inside the step run as fast as they can alone, i.e. how much of the step
is matmul floor. Writes benchmarks/results/<date>-<device>-step-gemms.md and .json (and into $OUT).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import harness
import torch


def projections(args) -> list[tuple[str, int, int]]:
    """(name, in features, out features) of one block's linears."""
    h, kv = args.dim, args.n_kv_heads * args.head_size
    q = args.n_heads * args.head_size
    return [("q", h, q), ("k", h, kv), ("v", h, kv), ("o", q, h), ("gate", h, args.ffn_dim),
            ("up", h, args.ffn_dim), ("down", args.ffn_dim, h)]


def step_calls(args, tokens: int, chunk: int, dev) -> list[tuple[str, float, Callable[[], object]]]:
    """(label, flops, run once) of every matmul of one fwd+bwd step, in the order the step makes them."""
    g = torch.Generator(device=dev).manual_seed(0)
    bf = dict(device=dev, dtype=torch.bfloat16)
    mats = {}
    for name, fin, fout in projections(args):  # one weight/activation set per projection, reused per block
        mats[name] = (torch.randn(fout, fin, generator=g, **bf) * 0.02, torch.randn(tokens, fin, generator=g, **bf),
                      torch.randn(tokens, fout, generator=g, **bf))
    head_w = torch.randn(args.vocab_size, args.dim, generator=g, **bf) * 0.02
    head_x = torch.randn(tokens, args.dim, generator=g, **bf)
    head_dy = torch.randn(chunk, args.vocab_size, generator=g, **bf)
    head_dw = torch.empty_like(head_w)
    calls = []
    for _ in range(args.n_layers):
        for name, (w, x, _) in mats.items():
            calls.append((f"{name} fwd", 2 * x.numel() * w.shape[0], lambda w=w, x=x: torch.mm(x, w.t())))
    for i, start in enumerate(range(0, tokens, chunk)):  # fused CE: logits, d(hidden), d(weight) per chunk
        xc, dy = head_x[start:start + chunk], head_dy[:min(chunk, tokens - start)]
        f, rows = 2 * dy.shape[0] * args.dim * args.vocab_size, dy.shape[0]
        calls.append((f"lm_head fwd {rows}", f, lambda xc=xc: torch.mm(xc, head_w.t())))
        calls.append((f"lm_head d(hidden) {rows}", f, lambda dy=dy: torch.mm(dy, head_w)))
        calls.append((f"lm_head d(weight) {rows}", f, (lambda dy=dy, xc=xc: torch.mm(dy.t(), xc, out=head_dw)) if i == 0
                      else (lambda dy=dy, xc=xc: head_dw.addmm_(dy.t(), xc))))
    for _ in range(args.n_layers):
        for name, (w, x, dy) in reversed(mats.items()):
            f = 2 * x.numel() * w.shape[0]
            calls.append((f"{name} d(input)", f, lambda w=w, dy=dy: torch.mm(dy, w)))
            calls.append((f"{name} d(weight)", f, lambda x=x, dy=dy: torch.mm(dy.t(), x)))
    return calls


def back_to_back(calls, warmup: int, repeats: int) -> list[float]:
    """ms of the whole sequence, per repeat after `warmup`."""
    def run():
        for _, _, fn in calls:
            fn()
    return harness.cuda_event_ms(run, warmup, repeats)


def per_label(calls) -> dict[str, dict]:
    """Each kind of matmul: calls per step, flops per call, its ms per call inside one back-to-back pass
    (events between calls), and alone (`burst_ms`: 20 calls of that kind after 0.3 s idle, median of the
    last 10)."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(len(calls) + 1)]
    events[0].record()
    for (_, _, fn), e in zip(calls, events[1:]):
        fn()
        e.record()
    torch.cuda.synchronize()
    out = {}
    for (label, f, fn), e0, e1 in zip(calls, events, events[1:]):
        r = out.setdefault(label, {"calls": 0, "flops": f, "in_pass_ms": 0.0, "fn": fn})
        r["calls"] += 1
        r["in_pass_ms"] += e0.elapsed_time(e1)
    for r in out.values():
        r["in_pass_ms"] /= r["calls"]
        # alone: 20 calls after idle, the median of the last 10 (clocks ramped up, no long load on the power limit)
        time.sleep(0.3)
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(21)]
        ev[0].record()
        for e in ev[1:]:
            r["fn"]()
            e.record()
        torch.cuda.synchronize()
        r["burst_ms"] = harness.median([a.elapsed_time(b) for a, b in zip(ev[10:], ev[11:])])
        del r["fn"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["llama3.1-8b"])
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    ns = p.parse_args(argv)
    harness.require_cuda()
    from cptrain.models.presets import PRESETS
    from cptrain.ops.chunked_ce import _chunk_rows, default_chunk_size

    info, dev, rows = harness.device_info(), torch.device("cuda"), []
    for preset in ns.preset:
        args = PRESETS[preset]
        chunk = _chunk_rows(ns.seq_len, default_chunk_size(args.vocab_size, 2))
        calls = step_calls(args, ns.seq_len, chunk, dev)
        flops = sum(f for _, f, _ in calls)
        times = back_to_back(calls, ns.warmup, ns.repeats)
        kinds = per_label(calls)
        kernels = harness.kernel_stats(lambda c=calls: [fn() for _, _, fn in c], 1)
        burst = sum(k["calls"] * k["burst_ms"] for k in kinds.values())
        ms = harness.median(times)
        row = {"preset": preset, "seq_len": ns.seq_len, "ce_chunk_rows": chunk, "ms": ms, "min_ms": min(times),
               "max_ms": max(times), "tflops": flops / ms / 1e9, "flops": flops, "times_ms": times,
               "burst_ms": burst, "burst_tflops": flops / burst / 1e9, "kinds": kinds, "kernels": kernels}
        print({k: v for k, v in row.items() if k not in ("kinds", "kernels")}, flush=True)
        rows.append(row)
        del calls
        torch.cuda.empty_cache()
    body = [[r["preset"], str(r["seq_len"]), str(r["ce_chunk_rows"]), f"{r['ms']:.1f}",
             f"{r['min_ms']:.1f}-{r['max_ms']:.1f}", f"{r['tflops']:.0f}", f"{r['burst_ms']:.1f}",
             f"{r['burst_tflops']:.0f}"] for r in rows]
    md = harness.markdown_table(["preset", "seq", "CE chunk rows", "back to back ms (median)", "range ms", "TFLOP/s",
                                 "sum of bursts ms", "burst TFLOP/s"], body)
    kinds = [[r["preset"], label, str(k["calls"]), f"{k['burst_ms']:.3f}", f"{k['flops'] / k['burst_ms'] / 1e9:.0f}",
              f"{k['in_pass_ms']:.3f}", f"{k['flops'] / k['in_pass_ms'] / 1e9:.0f}"]
             for r in rows for label, k in r["kinds"].items()]
    md += "\n\n" + harness.markdown_table(["preset", "matmul", "calls/step", "alone ms", "alone TFLOP/s",
                                           "in the pass ms", "in the pass TFLOP/s"], kinds)
    md += "\n\n" + harness.markdown_table(["preset", "kernel (one profiled pass)", "calls", "ms"], [
        [r["preset"], f"`{name}`", f"{k['calls']:.0f}", f"{k['ms']:.2f}"] for r in rows
        for name, k in r["kernels"].items()])
    notes = (f"\nOne step's matmuls (batch 1), bf16, back to back; median of {ns.repeats} CUDA-event-timed passes after "
             f"{ns.warmup}. TFLOP/s: 6 x tokens x (linear weights of the blocks + lm_head), the matmul part of "
             "cptrain.flops. Sum of bursts: each kind of matmul alone (20 calls of it after 0.3 s idle, median of the last "
             "10), times its calls per step: the step's matmuls at the rate of short loads. Second "
             "table: per kind, alone and inside one more back-to-back pass (CUDA events between calls).\n")
    command = harness.command_line(__file__, argv)
    harness.write_and_show("step-gemms", "A step's matmuls alone, back to back", md, rows, info, command,
                                  notes, None, ns.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
