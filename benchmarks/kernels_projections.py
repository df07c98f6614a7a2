"""Separate vs fused input projections of a decoder block: does one matmul over [q; k; v] (and one over
[gate; up]) beat three (two) smaller ones, forward + backward, as the compiled block runs them?

    python3 benchmarks/kernels_projections.py            # llama3.2-1b and llama3.1-8b shapes, T = 8192

Each variant is one torch.compile'd function of the block's normed input x [T, H] and bf16 weights:
  attn: q, k, v = x W_q^T, x W_k^T, x W_v^T  (separate) or one x W_qkv^T split into views (fused)
  mlp:  h = silu(x W_g^T) * (x W_u^T)         (separate) or one x W_gu^T split into halves (fused)
then backward from fixed random output gradients: weight gradients and d(x), which the separate form
sums over the projections (d(x) = dq W_q + dk W_k + dv W_v) and the fused form gets from one matmul.
Timed as device time: the profiler's kernel durations summed over the repeats, per fwd+bwd (the host's
launch speed left out, as in the model, where the host runs far ahead of the device). Nothing else of the block runs.
Writes benchmarks/results/<date>-<device>-kernels-projections.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import harness
import torch
import torch.nn.functional as F

from cptrain.models.presets import PRESETS


def attn_separate(x, wq, wk, wv):
    return F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)


def attn_fused(x, wqkv, sizes):
    return torch.split(F.linear(x, wqkv), sizes, dim=-1)


def mlp_separate(x, wg, wu):
    return F.silu(F.linear(x, wg)) * F.linear(x, wu)


def mlp_fused(x, wgu):
    g, u = F.linear(x, wgu).chunk(2, dim=-1)
    return F.silu(g) * u


def time_variant(fn, inputs, params, grads, warmup: int, repeats: int) -> tuple[float, dict[str, float]]:
    """Device time of one fwd+bwd (ms, summed kernel durations from the profiler: the host's launch speed
    does not count, as in the model where the host runs far ahead) and the ms of each kernel name."""
    def once():
        for t in (*params, inputs[0]):
            t.grad = None
        out = fn(*inputs)
        torch.autograd.backward(out if isinstance(out, (tuple, list)) else (out,), grads)

    for _ in range(warmup):
        once()
    torch.cuda.synchronize()
    kernels = harness.kernel_ms(once, repeats)
    return sum(kernels.values()), kernels


def run_shape(preset: str, tokens: int, warmup: int, repeats: int) -> list[dict]:
    a = PRESETS[preset]
    h, hd = a.dim, a.head_size
    nq, nkv, ffn = a.n_heads * hd, a.n_kv_heads * hd, a.ffn_dim
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)

    def param(*shape):
        return (torch.randn(*shape, device=dev, dtype=dt) * 0.02).requires_grad_()

    x = torch.randn(tokens, h, device=dev, dtype=dt, requires_grad=True)
    wq, wk, wv, wg, wu = param(nq, h), param(nkv, h), param(nkv, h), param(ffn, h), param(ffn, h)
    wqkv = torch.cat([wq, wk, wv]).detach().requires_grad_()
    wgu = torch.cat([wg, wu]).detach().requires_grad_()
    g_qkv = [torch.randn(tokens, n, device=dev, dtype=dt) * 1e-3 for n in (nq, nkv, nkv)]
    g_h = [torch.randn(tokens, ffn, device=dev, dtype=dt) * 1e-3]
    sizes = [nq, nkv, nkv]
    variants = [
        ("attn q/k/v", "separate", torch.compile(attn_separate), (x, wq, wk, wv), (wq, wk, wv), g_qkv),
        ("attn q/k/v", "fused", torch.compile(lambda x, w: attn_fused(x, w, sizes)), (x, wqkv), (wqkv,), g_qkv),
        ("mlp gate/up", "separate", torch.compile(mlp_separate), (x, wg, wu), (wg, wu), g_h),
        ("mlp gate/up", "fused", torch.compile(mlp_fused), (x, wgu), (wgu,), g_h),
    ]
    rows = []
    for part, form, fn, inputs, params, grads in variants:
        ms, kernels = time_variant(fn, inputs, params, grads, warmup, repeats)
        flops = 6 * tokens * h * sum(p.shape[0] for p in params)
        rows.append({"preset": preset, "tokens": tokens, "part": part, "form": form, "ms": ms,
                     "tflops": flops / ms / 1e9, "kernels_ms": kernels})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="llama3.2-1b,llama3.1-8b")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    harness.require_cuda()
    info = harness.device_info()
    rows = []
    for preset in args.presets.split(","):
        rows += run_shape(preset, args.tokens, args.warmup, args.repeats)
    body = []
    for r in rows:
        sep = next(s for s in rows if s["preset"] == r["preset"] and s["part"] == r["part"] and s["form"] == "separate")
        body.append([r["preset"], str(r["tokens"]), r["part"], r["form"], f"{r['ms']:.3f}", f"{r['tflops']:.0f}",
                     f"{sep['ms'] / r['ms']:.3f}x"])
    header = ["shape", "T", "part", "form", "device ms (fwd+bwd)", "TFLOP/s", "speed vs separate"]
    notes = ("One block's input projections only (no attention, no norm), bf16, torch.compile'd, fwd + bwd from "
             "fixed output gradients; device time (summed kernel durations) per fwd+bwd, mean over the repeats; per-kernel times in the JSON. TFLOP/s counts the 6 x T x H x N matmul flops.")
    harness.write_results("kernels-projections", "Separate vs fused input projections",
                          harness.markdown_table(header, body), rows, info, shlex.join(["python3", *sys.argv]),
                          notes)


if __name__ == "__main__":
    main()
