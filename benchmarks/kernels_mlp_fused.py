"""A SwiGLU MLP forward + backward: cuBLAS matmuls with inductor's pointwise kernels (what the compiled
block runs now) against quack's GEMMs whose epilogue computes silu(g) * u (forward) and its derivative
(backward), so the [T, ffn] pointwise passes over memory go away.

    python3 benchmarks/kernels_mlp_fused.py          # llama3.2-1b and llama3.1-8b MLP shapes, T = 8192

quack-kernels (Tri Dao's CuTe DSL kernels, a dependency of flash-attn-4) is only on the GPU machine
after `gpu_flash4.sh install`. Variants, each fwd+bwd from a fixed output gradient, bf16:
  compiled:     torch.compile(down(silu(x W_g^T) * (x W_u^T)))       separate gate/up weights (the model now)
  quack:        quack.mlp.mlp_func(x, W_gu, W_d, "swiglu", concat_layout=True), W_gu = [W_g; W_u] one tensor
  quack-tuned:  the same with quack's autotuner (tuned=True)
  quack+cat:    quack with W_gu = cat(W_g, W_u) made on every call (separate parameters kept)
Device time (summed kernel durations, as the model's host runs ahead of the device) and wall time per
fwd+bwd, and each output's and gradient's error against an fp32 reference.
`--parts linears` times the block's other projections (q, k/v, o) and the fused gate/up and down ones
alone: torch's F.linear (cuBLAS) against quack.linear.linear_func (tuned): is quack's GEMM faster as such?
QUACK_CACHE_AUTOTUNING=1 keeps the autotuner's picks on disk for the next process.
Writes benchmarks/results/<date>-<device>-kernels-mlp-fused.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import harness
import torch
import torch.nn.functional as F

from cptrain.models.presets import PRESETS


def mlp_separate(x, wg, wu, wd):
    return F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def time_variant(once, warmup: int, repeats: int) -> tuple[float, float, dict[str, float]]:
    for _ in range(warmup):
        once()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        once()
    end.record()
    torch.cuda.synchronize()
    wall = start.elapsed_time(end) / repeats
    kernels = harness.kernel_ms(once, repeats)
    return sum(kernels.values()), wall, kernels


def run_shape(preset: str, tokens: int, warmup: int, repeats: int, impls: list[str]) -> list[dict]:
    from quack.mlp import mlp_func

    a = PRESETS[preset]
    h, ffn = a.dim, a.ffn_dim
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(tokens, h, device=dev, dtype=dt, requires_grad=True)
    wg, wu = (torch.randn(ffn, h, device=dev, dtype=dt) * h ** -0.5 for _ in range(2))
    wd = torch.randn(h, ffn, device=dev, dtype=dt) * ffn ** -0.5
    wg, wu, wd = (w.requires_grad_() for w in (wg, wu, wd))
    wgu = torch.cat([wg, wu]).detach().requires_grad_()
    dy = torch.randn(tokens, h, device=dev, dtype=dt)

    # fp32 reference of y and the gradients of x, W_g, W_u, W_d
    ref = [t.detach().float().requires_grad_() for t in (x, wg, wu, wd)]
    y_ref = mlp_separate(*ref)
    y_ref.backward(dy.float())
    refs = {"y": y_ref.detach(), "dx": ref[0].grad, "dwg": ref[1].grad, "dwu": ref[2].grad, "dwd": ref[3].grad}

    compiled = torch.compile(mlp_separate)
    calls = {
        "compiled": lambda: compiled(x, wg, wu, wd),
        "quack": lambda: mlp_func(x, wgu, wd, "swiglu", concat_layout=True, tuned=False),
        "quack-tuned": lambda: mlp_func(x, wgu, wd, "swiglu", concat_layout=True, tuned=True),
        "quack+cat": lambda: mlp_func(x, torch.cat([wg, wu]), wd, "swiglu", concat_layout=True, tuned=False),
    }
    rows = []
    for name in impls:
        fwd = calls[name]

        def once(fwd=fwd):
            for t in (x, wg, wu, wd, wgu):
                t.grad = None
            y = fwd()
            y.backward(dy)
            return y

        try:
            y = once()
            grads = {"dx": x.grad, "dwd": wd.grad}
            if name in ("quack", "quack-tuned"):
                grads["dwg"], grads["dwu"] = wgu.grad[:ffn], wgu.grad[ffn:]
            else:
                grads["dwg"], grads["dwu"] = wg.grad, wu.grad
            errs = {"y": rel_err(y, refs["y"]), **{k: rel_err(v, refs[k]) for k, v in grads.items()}}
            device_ms, wall_ms, kernels = time_variant(once, warmup, repeats)
            row = {"status": "ok", "device_ms": device_ms, "wall_ms": wall_ms, "errors": errs, "kernels_ms": kernels}
        except Exception as e:  # noqa: BLE001 - one failed variant is one row, not the table
            row = {"status": f"failed: {type(e).__name__}: {str(e)[:300]}"}
        row.update(preset=preset, tokens=tokens, impl=name, tflops=None)
        if row["status"] == "ok":
            row["tflops"] = 6 * tokens * h * 3 * ffn / row["device_ms"] / 1e9
        rows.append(row)
        print({k: v for k, v in row.items() if k != "kernels_ms"}, flush=True)
    return rows


def run_linears(preset: str, tokens: int, warmup: int, repeats: int, impls: list[str]) -> list[dict]:
    from quack.linear import linear_func

    a = PRESETS[preset]
    h, nq, nkv, ffn = a.dim, a.n_heads * a.head_size, a.n_kv_heads * a.head_size, a.ffn_dim
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    rows = []
    for part, k, n in (("q", h, nq), ("k/v", h, nkv), ("o", nq, h), ("gate_up", h, 2 * ffn), ("down", ffn, h)):
        x = torch.randn(tokens, k, device=dev, dtype=dt, requires_grad=True)
        w = (torch.randn(n, k, device=dev, dtype=dt) * k ** -0.5).requires_grad_()
        dy = torch.randn(tokens, n, device=dev, dtype=dt)
        calls = {"torch": lambda x=x, w=w: F.linear(x, w),
                 "quack-tuned": lambda x=x, w=w: linear_func(x, w, tuned=True),
                 "quack": lambda x=x, w=w: linear_func(x, w, tuned=False)}
        for name in impls:
            if name not in calls:
                continue

            def once(fwd=calls[name], x=x, w=w, dy=dy):
                x.grad = w.grad = None
                fwd().backward(dy)

            try:
                device_ms, wall_ms, kernels = time_variant(once, warmup, repeats)
                row = {"status": "ok", "device_ms": device_ms, "wall_ms": wall_ms, "kernels_ms": kernels,
                       "tflops": 6 * tokens * k * n / device_ms / 1e9}
            except Exception as e:  # noqa: BLE001
                row = {"status": f"failed: {type(e).__name__}: {str(e)[:300]}"}
            row.update(preset=preset, tokens=tokens, impl=f"linear {part} {name}")
            rows.append(row)
            print({k2: v for k2, v in row.items() if k2 != "kernels_ms"}, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="llama3.2-1b,llama3.1-8b")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--impls", default="compiled,quack,quack-tuned,quack+cat")
    p.add_argument("--parts", default="mlp", help="mlp, linears or both (comma-separated)")
    p.add_argument("--tag", default="", help="suffix of the results' name")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    harness.require_cuda()
    info = harness.device_info()
    rows = []
    for preset in args.presets.split(","):
        if "mlp" in args.parts:
            rows += run_shape(preset, args.tokens, args.warmup, args.repeats, args.impls.split(","))
        if "linears" in args.parts:
            rows += run_linears(preset, args.tokens, args.warmup, args.repeats, args.impls.split(","))
    body = []
    for r in rows:
        base_impl = "compiled" if not r["impl"].startswith("linear") else r["impl"].rsplit(" ", 1)[0] + " torch"
        base = next((s for s in rows if s["preset"] == r["preset"] and s["impl"] == base_impl
                     and s["status"] == "ok"), None)
        if r["status"] != "ok":
            body.append([r["preset"], str(r["tokens"]), r["impl"], "-", "-", "-", "-", "-", r["status"]])
            continue
        errs = ", ".join(f"{k} {v:.1e}" for k, v in r.get("errors", {}).items()) or "-"
        speed = f"{base['device_ms'] / r['device_ms']:.3f}x" if base else "-"  # vs compiled / vs torch
        body.append([r["preset"], str(r["tokens"]), r["impl"], f"{r['device_ms']:.3f}", f"{r['wall_ms']:.3f}",
                     f"{r['tflops']:.0f}", speed, errs, "ok"])
    header = ["shape", "T", "impl", "device ms", "wall ms", "TFLOP/s (device)", "vs compiled (mlp) or torch (linear)", "rel. error vs fp32",
              "status"]
    notes = ("One MLP (gate, up, silu(g) * u, down), bf16, fwd + bwd from a fixed output gradient; device time is the "
             "summed kernel durations per fwd+bwd (mean over the repeats), wall time from CUDA events over the same "
             "repeats; TFLOP/s counts 6 x T x H x 3 x ffn. Errors: ||a - ref|| / ||ref|| against an fp32 run of the "
             "same inputs. Per-kernel times in the JSON.")
    harness.write_results("kernels-mlp-fused" + (f"-{args.tag}" if args.tag else ""), "SwiGLU MLP: cuBLAS + inductor against quack's fused-epilogue GEMMs",
                          harness.markdown_table(header, body), rows, info, shlex.join(["python3", *sys.argv]),
                          notes)


if __name__ == "__main__":
    main()
