"""How the fused CE's speed depends on its chunk's row count, per hidden size and vocabulary.

    python3 benchmarks/ce_chunk_rows.py                      # 2 x 3 (H, V) pairs x 13 row counts, ~2 min on H100
    python3 benchmarks/ce_chunk_rows.py --hidden 2048 --vocab 151936 --rows 1536,1792,2048

Per (H, V) and row count R, one call of cptrain.ops.chunked_ce forward + backward over k*R tokens (k chunks of
exactly R rows, about --tokens in all), timed as kernels_ce.py times a variant (CUDA events, behind a ~50 ms
GPU wait, median of --repeats after one warmup call), reported as TFLOP/s of its 6*T*H*V matmul flops. Beside
it, the d(hidden) matmul of one chunk alone ([R, V] @ [V, H]): its output is only R x H, so its tile count,
against the GPU's SM count, is where row counts differ most.
Writes benchmarks/results/<date>-<device>-ce-chunk-rows.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import harness
import torch
from kernels_ce import _time_ms, call_s, ce_case

from cptrain.ops.chunked_ce import linear_cross_entropy

ROWS = "1024,1280,1536,1792,2048,2304,2560,2816,3072,3328,3584,3840,4096"


def measure(hidden: int, vocab: int, rows: int, tokens: int, repeats: int) -> dict:
    chunks = max(1, round(tokens / rows))
    t = chunks * rows
    h, w, y, gen = ce_case(t, hidden, vocab)

    def ours():
        h.grad = w.grad = None
        linear_cross_entropy(h, w, y, reduction="mean", chunk_size=rows).backward()

    seconds = call_s(ours, repeats)
    logits = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16, generator=gen)
    d_h = torch.empty(rows, hidden, device="cuda", dtype=torch.bfloat16)
    wd = w.detach()
    d_hidden_ms = _time_ms(lambda: torch.mm(logits, wd, out=d_h), repeats=10)
    flops = 6 * t * hidden * vocab
    return {"hidden": hidden, "vocab": vocab, "rows": rows, "tokens": t, "chunks": chunks, "seconds": seconds,
            "tflops": flops / seconds / 1e12, "d_hidden_ms": d_hidden_ms,
            "d_hidden_tflops": 2 * rows * hidden * vocab / d_hidden_ms / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="2048,4096")
    ap.add_argument("--vocab", default="49152,128256,151936")
    ap.add_argument("--rows", default=ROWS)
    ap.add_argument("--tokens", type=int, default=32768, help="about this many tokens per call")
    ap.add_argument("--repeats", type=int, default=3)
    ns = ap.parse_args()
    harness.require_cuda()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    results = []
    for hidden in map(int, ns.hidden.split(",")):
        for vocab in map(int, ns.vocab.split(",")):
            for rows in map(int, ns.rows.split(",")):
                r = measure(hidden, vocab, rows, ns.tokens, ns.repeats)
                torch.cuda.empty_cache()
                results.append(r)
                print(r, flush=True)
    best = {}
    for r in results:
        key = (r["hidden"], r["vocab"])
        best[key] = max(best.get(key, 0.0), r["tflops"])
    body = [[str(r["hidden"]), str(r["vocab"]), str(r["rows"]), str(r["chunks"]), f"{r['seconds'] * 1e3:.1f}",
             f"{r['tflops']:.0f}", f"{r['tflops'] / best[(r['hidden'], r['vocab'])]:.3f}",
             f"{r['d_hidden_ms']:.3f}", f"{r['d_hidden_tflops']:.0f}",
             f"{r['rows'] * r['vocab'] * 2 / 2**20:.0f}"] for r in results]
    header = ["H", "V", "rows", "chunks", "CE fwd+bwd ms", "TFLOP/s", "of best rows", "d_hidden ms",
              "d_hidden TFLOP/s", "logits MiB"]
    table = harness.markdown_table(header, body)
    notes = (f"GPU SMs: {sms}. Each CE call runs `chunks` chunks of exactly `rows` rows; TFLOP/s counts 6*T*H*V. "
             f"'of best rows': the call's rate against the best row count for that (H, V). d_hidden: one chunk's "
             f"[rows, V] @ [V, H] matmul alone, mean of 10 back to back. Median of {ns.repeats} calls after one "
             "warmup call, each behind a ~50 ms GPU wait.")
    print(table + "\n" + notes)
    command = "python3 benchmarks/ce_chunk_rows.py " + shlex.join(sys.argv[1:])
    harness.write_results("ce-chunk-rows", "Fused CE speed against its chunk's row count", table, results,
                          harness.device_info(), command.strip(), notes)


if __name__ == "__main__":
    main()
