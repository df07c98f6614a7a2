"""Does the AdamW step hide behind the next step's forward if it runs layer by layer on a side stream?

    python3 benchmarks/overlap_adamw.py                  # llama3.2-1b shape, T = 8192, bf16 weights and states
    python3 benchmarks/overlap_adamw.py --preset llama3.1-8b

The question before building it into the trainer: AdamW is memory-bound (~6 ms per step for the 1B on
H100, ~31 ms for the 8B on H200) and the forward is matmul-bound, so running block i's update on a
second stream while the main stream computes block i-1's forward could hide part of it. Block i's
forward must wait for block i's update only. Measured here with the model's real parameter shapes, one
TritonAdamW per block, and a forward made of each block's matmuls (x @ W^T for q, k, v, o, gate, up,
down at T tokens; no attention: it only makes the forward longer). Three timings (CUDA events, medians):
  forward alone, AdamW alone (all blocks), and the two overlapped.
If overlapped is close to the forward alone, the update is hidden; if close to the sum, it is not.
Writes benchmarks/results/<date>-<device>-overlap-adamw.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import harness
import torch
import torch.nn.functional as F

from cptrain.models.presets import PRESETS
from cptrain.ops.adamw import TritonAdamW


def block_params(preset: str, device: str) -> list[list[torch.Tensor]]:
    a = PRESETS[preset]
    h, nq, nkv, ffn = a.dim, a.n_heads * a.head_size, a.n_kv_heads * a.head_size, a.ffn_dim
    shapes = [(nq, h), (nkv, h), (nkv, h), (h, nq), (ffn, h), (ffn, h), (h, ffn)]
    blocks = []
    for _ in range(a.n_layers):
        ps = [torch.nn.Parameter(torch.randn(*s, device=device, dtype=torch.bfloat16) * 0.02) for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        blocks.append(ps)
    return blocks


def forward(x: torch.Tensor, ps: list[torch.Tensor]) -> torch.Tensor:
    wq, wk, wv, wo, wg, wu, wd = ps
    q, _, _ = F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)
    x = x + F.linear(q, wo)
    return x + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="llama3.2-1b")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    harness.require_cuda()
    info = harness.device_info()
    torch.manual_seed(0)
    blocks = block_params(args.preset, "cuda")
    opts = [TritonAdamW(ps, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1) for ps in blocks]
    x0 = torch.randn(args.tokens, PRESETS[args.preset].dim, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream(priority=0)
    main_stream = torch.cuda.current_stream()

    def fwd_only():
        x = x0
        with torch.no_grad():
            for ps in blocks:
                x = forward(x, ps)

    def adamw_only():
        for opt in opts:
            opt.step()

    def sequential():
        adamw_only()
        fwd_only()

    def overlapped():
        done = []
        side.wait_stream(main_stream)  # gradients are ready on the main stream
        with torch.cuda.stream(side):
            for opt in opts:
                opt.step()
                ev = torch.cuda.Event()
                ev.record(side)
                done.append(ev)
        x = x0
        with torch.no_grad():
            for ps, ev in zip(blocks, done):
                main_stream.wait_event(ev)
                x = forward(x, ps)
        main_stream.wait_stream(side)

    for fn in (fwd_only, adamw_only, sequential, overlapped):  # warm up: Triton compiles, cuBLAS picks
        fn()
    rows = []
    for name, fn in (("forward alone", fwd_only), ("AdamW alone", adamw_only), ("AdamW then forward", sequential),
                     ("overlapped (side stream, per block)", overlapped)):
        ms = timed(fn, args.repeats)
        rows.append({"variant": name, "ms": ms, "preset": args.preset, "tokens": args.tokens})
        print(rows[-1], flush=True)
    seq, ovl, adam = rows[2]["ms"], rows[3]["ms"], rows[1]["ms"]
    body = [[r["variant"], f"{r['ms']:.2f}"] for r in rows]
    notes = (f"{args.preset} blocks ({len(blocks)}), T = {args.tokens}, bf16 weights and AdamW states, one TritonAdamW "
             f"per block. Overlap hides {seq - ovl:.2f} ms of the {adam:.2f} ms AdamW step "
             f"({(seq - ovl) / adam * 100:.0f}%). Medians of {args.repeats} CUDA-event-timed repeats.")
    harness.write_results("overlap-adamw", "AdamW on a side stream behind the next forward",
                          harness.markdown_table(["variant", "ms"], body), rows, info,
                          shlex.join(["python3", *sys.argv]), notes)


if __name__ == "__main__":
    main()
