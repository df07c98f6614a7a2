"""Where the fused CE's time goes above its matmul floor: clocks, matmul shapes, or its own passes?

    python3 benchmarks/ce_floor.py                      # six shapes of kernels_ce.py's grid, ~1 min on H100
    python3 benchmarks/ce_floor.py --shapes 8192x2048x49152,32768x4096x151936
    python3 benchmarks/ce_floor.py --z-loss 1e-4        # ours with a z-loss term (the floor is the same)

kernels_ce.py's floor is 6*T*H*V flops at the rate of one 8192^3 bf16 torch.mm, best of 10, timed right
after a short warmup: a burst. The CE calls it is compared with run for 6-800 ms back to back. Per shape this
times, each as kernels_ce.py times a variant (CUDA events around one call, median of --repeats after one
warmup call):
- ours: cptrain.ops.chunked_ce forward + backward;
- mm only: the same chunks' three matmuls (logits, d hidden, d weight accumulated in place) and nothing else,
  the floor of a design that runs cuBLAS on [chunk, V] logits;
- 8192^3 x n: as many 8192^3 torch.mm back to back as make 6*T*H*V flops, the matmul rate sustained for
  about as long as the floor;
and the device time of ours as the profiler's kernel durations summed (idle gaps left out: at the start of a
call the device waits for the host to launch the small label-check and setup kernels).
Writes benchmarks/results/<date>-<device>-ce-floor.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import harness
import torch
from kernels_ce import call_s, ce_case, measure_matmul_tflops

from cptrain.ops.chunked_ce import _chunk_rows, default_chunk_size, linear_cross_entropy

SHAPES = "8192x2048x49152,8192x2048x128256,8192x4096x128256,32768x4096x151936,131072x2048x151936,131072x4096x128256"


def measure(tokens: int, hidden: int, vocab: int, repeats: int, z_loss: float = 0.0) -> dict:
    h, w, y, _ = ce_case(tokens, hidden, vocab)
    flops = 6 * tokens * hidden * vocab

    def ours():
        h.grad = w.grad = None
        linear_cross_entropy(h, w, y, reduction="mean", z_loss=z_loss).backward()

    rows = _chunk_rows(tokens, default_chunk_size(vocab, 2))
    buf = torch.empty(rows, vocab, device="cuda", dtype=torch.bfloat16)
    d_h, d_w = torch.empty_like(h), torch.empty_like(w)
    hd, wd = h.detach(), w.detach()

    def mm_only():
        for start in range(0, tokens, rows):
            end = min(start + rows, tokens)
            logits = torch.mm(hd[start:end], wd.t(), out=buf[: end - start])
            torch.mm(logits, wd, out=d_h[start:end])
            if start == 0:
                torch.mm(logits.t(), hd[start:end], out=d_w)
            else:
                d_w.addmm_(logits.t(), hd[start:end])

    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    count = max(1, round(flops / (2 * n**3)))

    def sustained():
        for _ in range(count):
            torch.mm(a, b)

    def timed(fn) -> float:  # no GPU wait first: the "ours device" column shows what the host's launches cost
        return call_s(fn, repeats, wait_first=False)

    out = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "chunk_rows": rows, "flops": flops,
           "ours_s": timed(ours), "mm_only_s": timed(mm_only),
           "sustained_s": timed(sustained) * flops / (count * 2 * n**3)}
    out["ours_device_s"] = sum(harness.kernel_ms(ours, repeats).values()) / 1e3
    out["mm_only_tflops"] = flops / out["mm_only_s"] / 1e12
    out["sustained_tflops"] = flops / out["sustained_s"] / 1e12
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=SHAPES, help="TxHxV,... (tokens x hidden x vocab)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--z-loss", type=float, default=0.0, help="ours' z-loss coefficient (default: none)")
    ns = ap.parse_args()
    harness.require_cuda()
    shapes = [tuple(map(int, s.split("x"))) for s in ns.shapes.split(",")]
    burst = measure_matmul_tflops()  # kernels_ce.py's floor rate
    print(f"burst 8192^3 rate: {burst:.0f} TFLOP/s", flush=True)
    results = []
    for tokens, hidden, vocab in shapes:
        r = measure(tokens, hidden, vocab, ns.repeats, ns.z_loss)
        torch.cuda.empty_cache()  # the shape's tensors went with measure()
        r["burst_floor_s"] = r["flops"] / (burst * 1e12)
        results.append(r)
        print(r, flush=True)
    body = [[str(r["tokens"]), str(r["hidden"]), str(r["vocab"]), str(r["chunk_rows"]),
             f"{r['burst_floor_s'] * 1e3:.1f}", f"{r['sustained_s'] * 1e3:.1f} ({r['sustained_tflops']:.0f})",
             f"{r['mm_only_s'] * 1e3:.1f} ({r['mm_only_tflops']:.0f})", f"{r['ours_s'] * 1e3:.1f}",
             f"{r['ours_device_s'] * 1e3:.1f}", f"{r['ours_s'] / r['burst_floor_s']:.3f}",
             f"{r['ours_s'] / r['sustained_s']:.3f}", f"{r['ours_s'] / r['mm_only_s']:.3f}"] for r in results]
    header = ["T", "H", "V", "chunk rows", "floor ms (burst)", "8192^3 x n ms (TFLOP/s)", "mm only ms (TFLOP/s)",
              "ours ms", "ours device ms", "ours / burst floor", "ours / sustained", "ours / mm only"]
    table = harness.markdown_table(header, body)
    notes = (f"Burst rate (kernels_ce.py's floor): {burst:.0f} TFLOP/s, the best single 8192^3 torch.mm of 10. "
             "'8192^3 x n': 6*T*H*V flops of 8192^3 matmuls back to back, one call timed as the CE is; 'mm only': "
             "ours' three matmuls per chunk without its Triton passes; 'ours device': the profiler's kernel time "
             f"summed (no idle gaps). Median of {ns.repeats} calls after one warmup call."
             + (f" Ours with z_loss={ns.z_loss:g}." if ns.z_loss else ""))
    print(table + "\n" + notes)
    command = "python3 benchmarks/ce_floor.py " + shlex.join(sys.argv[1:])
    harness.write_results("ce-floor", "Fused CE against its matmul floor: burst rate, sustained rate, matmuls only",
                          table, results, harness.device_info(), command.strip(), notes)


if __name__ == "__main__":
    main()
