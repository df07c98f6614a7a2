"""A training step's matmuls alone, back to back: how long they take on this GPU with nothing else running.

    python3 benchmarks/step_gemms.py --preset llama3.1-8b      # ~30 s on one H200

The step of a preset at batch 1 x seq: per block the forward projections (q, k, v, o, gate, up, down:
x @ W^T), then, in reverse, each one's d(input) = dY @ W and d(weight) = dY^T @ X, the calls and
layouts autograd makes for nn.Linear; the lm_head's three at the fused CE's chunk size. No attention, no
pointwise, no optimizer. Against a profiled step's matmul time (profile_step.py, kernel family `gemm`)
this says whether the matmuls inside the step run as fast as they can alone, i.e. how much of the step
is matmul floor. Writes benchmarks/results/<date>-<device>-step-gemms.md and .json (and into $OUT).
"""

from __future__ import annotations

import argparse
import shlex
import sys
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


def step_matmuls(args, tokens: int, chunk: int, dev) -> tuple[Callable[[], None], float]:
    """(run once, flops): every matmul of one fwd+bwd step, in the order the step makes them."""
    g = torch.Generator(device=dev).manual_seed(0)
    bf = dict(device=dev, dtype=torch.bfloat16)
    mats = {}
    for name, fin, fout in projections(args):  # one weight/activation set per projection, reused per block
        w = torch.randn(fout, fin, generator=g, **bf) * 0.02
        x = torch.randn(tokens, fin, generator=g, **bf)
        dy = torch.randn(tokens, fout, generator=g, **bf)
        mats[name] = (w, x, dy)
    head_w = torch.randn(args.vocab_size, args.dim, generator=g, **bf) * 0.02
    head_x = torch.randn(tokens, args.dim, generator=g, **bf)
    head_dy = torch.randn(chunk, args.vocab_size, generator=g, **bf)
    head_dw = torch.empty_like(head_w)
    flops = 6 * tokens * (args.n_layers * sum(fin * fout for _, fin, fout in projections(args))
                          + args.dim * args.vocab_size)

    def once():
        for _ in range(args.n_layers):
            for w, x, _ in mats.values():
                torch.mm(x, w.t())
        for i, start in enumerate(range(0, tokens, chunk)):  # fused CE: logits, d(hidden), d(weight) per chunk
            xc = head_x[start:start + chunk]
            torch.mm(xc, head_w.t())
            torch.mm(head_dy[:len(xc)], head_w)
            if i == 0:
                torch.mm(head_dy[:len(xc)].t(), xc, out=head_dw)
            else:
                head_dw.addmm_(head_dy[:len(xc)].t(), xc)
        for _ in range(args.n_layers):
            for w, x, dy in reversed(mats.values()):
                torch.mm(dy, w)
                torch.mm(dy.t(), x)

    return once, flops


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
        once, flops = step_matmuls(args, ns.seq_len, chunk, dev)
        times = []
        for i in range(ns.warmup + ns.repeats):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            once()
            e1.record()
            torch.cuda.synchronize()
            if i >= ns.warmup:
                times.append(e0.elapsed_time(e1))
        ms = harness.median(times)
        row = {"preset": preset, "seq_len": ns.seq_len, "ce_chunk_rows": chunk, "ms": ms, "min_ms": min(times),
               "max_ms": max(times), "tflops": flops / ms / 1e9, "flops": flops, "times_ms": times}
        print(row, flush=True)
        rows.append(row)
        torch.cuda.empty_cache()
    body = [[r["preset"], str(r["seq_len"]), str(r["ce_chunk_rows"]), f"{r['ms']:.1f}",
             f"{r['min_ms']:.1f}-{r['max_ms']:.1f}", f"{r['tflops']:.0f}"] for r in rows]
    md = harness.markdown_table(["preset", "seq", "CE chunk rows", "matmuls ms (median)", "range ms", "TFLOP/s"],
                                body)
    notes = (f"\nOne step's matmuls (batch 1), bf16, back to back; median of {ns.repeats} CUDA-event-timed steps after "
             f"{ns.warmup}. TFLOP/s: 6 x tokens x (linear weights of the blocks + lm_head), the matmul part of "
             "cptrain.flops.\n")
    command = shlex.join(["python3", "benchmarks/step_gemms.py", *(sys.argv[1:] if argv is None else argv)])
    paths = harness.write_results("step-gemms", "A step's matmuls alone, back to back", md, rows, info, command,
                                  notes, None, ns.results_dir)
    print("\n" + md + notes + "\nwrote " + ", ".join(str(x) for x in paths), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
