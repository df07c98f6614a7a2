"""RMSNorm forward and forward + backward: cptrain's Triton kernels (ops/rmsnorm.py) against the same eager math
under torch.compile (what inductor makes of decoder.RMSNorm), at training shapes, bf16, one GPU.

    python3 benchmarks/kernels_rmsnorm.py                      # tokens 8192 and 32768, dims 2048 and 4096

Two patterns, as the decoder block uses them: `norm` (y = norm(x)) and `add+norm` ((h, y) = (x + d,
norm(x + d)), whose backward also adds h's incoming gradient). The backward of each starts from random
output gradients. GB/s counts the bytes a single pass must move (reads + writes of the [tokens, dim]
tensors). Writes benchmarks/results/<date>-<device>-kernels-rmsnorm.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import harness
import torch

from cptrain.ops import rmsnorm


def _compiled():
    def norm(x, w):
        return rmsnorm.reference(x, w, 1e-5)

    def add_norm(x, d, w):
        h = x + d
        return h, rmsnorm.reference(h, w, 1e-5)

    return torch.compile(norm), torch.compile(add_norm)


def _ours():
    return (lambda x, w: rmsnorm.rms_norm(x, w, 1e-5),
            lambda x, d, w: rmsnorm.add_rms_norm(x, d, w, 1e-5))


def _time_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure(tokens: int, dim: int, impls: dict, repeats: int) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    d = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    w = (torch.rand(dim, device="cuda", generator=gen) + 0.5).bfloat16().requires_grad_()
    gy, gh = torch.randn_like(x), torch.randn_like(x)
    tensor = tokens * dim * 2
    rows = []
    for name, (norm, add_norm) in impls.items():
        cases = {
            "norm": (lambda: norm(x, w), lambda out: torch.autograd.backward([out], [gy]), 2, 3),
            "add+norm": (lambda: add_norm(x, d, w), lambda out: torch.autograd.backward(list(out), [gh, gy]), 4, 4),
        }
        for pattern, (fwd, bwd, fwd_tensors, bwd_tensors) in cases.items():
            with torch.no_grad():
                fwd_ms = _time_ms(fwd, repeats)

            def step():
                x.grad = d.grad = w.grad = None
                bwd(fwd())
            total_ms = _time_ms(step, repeats)
            rows.append({"tokens": tokens, "dim": dim, "impl": name, "pattern": pattern, "fwd_ms": fwd_ms,
                         "fwd_bwd_ms": total_ms, "fwd_gbps": fwd_tensors * tensor / fwd_ms / 1e6,
                         "fwd_bwd_gbps": (fwd_tensors + bwd_tensors) * tensor / total_ms / 1e6})
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="8192,32768")
    p.add_argument("--dims", default="2048,4096")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    command = shlex.join(["python3", "benchmarks/kernels_rmsnorm.py", *sys.argv[1:]])
    impls = {"torch.compile": _compiled(), "ours (Triton)": _ours()}
    rows = []
    for tokens in map(int, args.tokens.split(",")):
        for dim in map(int, args.dims.split(",")):
            rows += measure(tokens, dim, impls, args.repeats)
    body = [[str(r["tokens"]), str(r["dim"]), r["pattern"], r["impl"], f"{r['fwd_ms']:.3f}", f"{r['fwd_gbps']:.0f}",
             f"{r['fwd_bwd_ms']:.3f}", f"{r['fwd_bwd_gbps']:.0f}"] for r in rows]
    table = harness.markdown_table(["tokens", "dim", "pattern", "impl", "fwd ms", "fwd GB/s", "fwd+bwd ms",
                                    "fwd+bwd GB/s"], body)
    notes = ("GB/s: tensor-sized transfers a single pass must make (norm: fwd reads x, writes y; bwd reads x, dy, "
             "writes dx. add+norm: fwd reads x, d, writes h, y; bwd reads h, dy, dh, writes dx) over the "
             "median time of CUDA-event-timed calls; the weight and the per-row statistics are left out.")
    harness.write_results("kernels-rmsnorm", "RMSNorm: Triton kernels against torch.compile", table, rows,
                          harness.device_info(), command, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
