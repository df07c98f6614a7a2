"""Tiled vs untiled SwiGLU MLP, forward + backward of one layer in bf16: peak memory and time.

    python3 benchmarks/kernels_tiled_mlp.py            # T in {128K, 512K} x {llama3.2-1b, llama3.1-8b} MLPs

Variants per shape: untiled (cptrain's MLP as is), tiled with the `model.tiled_mlp = "auto"` tile count,
tiled with a few fixed counts, auto-tiled through the generic path (autograd recompute of the whole
MLP; the default is the hand-written SwiGLU backward), and untiled / auto-tiled under activation
checkpointing ("+ckpt", the setting long sequences train in, where untiled also recomputes its
forward). Tiled "+ckpt" is the trainer's setting (`recompute_output=False`: the checkpoint's recompute
skips the tiled forward, whose output it never reads); "+ckpt recompute" reruns that forward as a
checkpoint otherwise would. "activation" memory is the peak during fwd+bwd minus what existed before
(weights, the input and the incoming gradient); it includes the output, the input gradient and the
weight gradients, which every variant makes. An untiled run that does not fit is reported as OOM.
Writes benchmarks/results/<date>-<device>-kernels-tiled-mlp.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import time

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import harness
import torch
from torch.utils.checkpoint import checkpoint

from cptrain.models.decoder import MLP
from cptrain.models.presets import ModelArgs
from cptrain.ops.tiled_mlp import resolve_num_tiles, tiled_mlp

GIB = 2**30
SHAPES = {"llama3.2-1b": (2048, 8192), "llama3.1-8b": (4096, 14336)}


def run_variant(mlp: MLP, x: torch.Tensor, grad: torch.Tensor, variant: dict, warmup: int,
                repeats: int) -> dict:
    num_tiles, ckpt = variant["tiles"], variant["ckpt"]
    mlp.num_tiles = num_tiles
    mlp.recompute_output = not variant.get("skip", False)
    layer = mlp
    if variant["path"] == "generic":
        def layer(t):
            return tiled_mlp(mlp.swiglu, t, num_tiles, list(mlp.parameters()), fast_path=False)
    forward = (lambda t: checkpoint(layer, t, use_reentrant=False)) if ckpt else layer
    times: list[float] = []
    peak = 0
    try:
        for i in range(warmup + repeats):
            mlp.zero_grad(set_to_none=True)
            x.grad = None
            gc.collect()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(x).backward(grad)
            end.record()
            end.synchronize()
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
            if i >= warmup:
                times.append(start.elapsed_time(end) / 1e3)
    except torch.OutOfMemoryError:
        return {**variant, "status": "OOM"}
    finally:
        mlp.zero_grad(set_to_none=True)
        x.grad = None
        gc.collect()
        torch.cuda.empty_cache()
    times.sort()
    return {**variant, "status": "ok", "seconds": times[len(times) // 2], "activation_gib": peak / GIB,
            "total_peak_gib": (peak + base) / GIB}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="131072,524288")
    p.add_argument("--models", default=",".join(SHAPES))
    p.add_argument("--tiles", default="8,32", help="fixed tile counts run besides untiled and auto")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=150.0, help="stop starting new shapes after this")
    args = p.parse_args()
    harness.require_cuda()
    command = shlex.join(["python3", *sys.argv])
    info = harness.device_info()
    t_start = time.perf_counter()
    rows = []
    for model in args.models.split(","):
        dim, ffn = SHAPES[model]
        for tokens in map(int, args.tokens.split(",")):
            auto = resolve_num_tiles("auto", tokens, dim, ffn, 1)
            fixed = sorted({int(t) for t in args.tiles.split(",")} - {1, auto})
            plan = [(1, False, "swiglu"), (auto, False, "swiglu"), (auto, False, "generic")]
            plan += [(n, False, "swiglu") for n in fixed] + [(1, True, "swiglu"), (auto, True, "swiglu")]
            variants = [{"tiles": n, "ckpt": c, "path": path} for n, c, path in plan]
            variants.append({"tiles": auto, "ckpt": True, "path": "swiglu", "skip": True})
            row = {"model": model, "tokens": tokens, "dim": dim, "ffn_dim": ffn, "auto_tiles": auto,
                   "variants": []}
            rows.append(row)
            if time.perf_counter() - t_start > args.budget_s:
                row["variants"] = [{**v, "status": "skipped (time budget)"} for v in variants]
                continue
            torch.manual_seed(0)
            mlp = MLP(ModelArgs(dim=dim, ffn_dim=ffn)).to(device="cuda", dtype=torch.bfloat16)
            for param in mlp.parameters():
                torch.nn.init.normal_(param, std=0.02)
            x = torch.randn(1, tokens, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            grad = torch.randn_like(x) * 1e-3
            for variant in variants:
                result = run_variant(mlp, x, grad, variant, args.warmup, args.repeats)
                row["variants"].append(result)
                print(f"{model} T={tokens}: {result}", flush=True)
            del mlp, x, grad
            torch.cuda.empty_cache()
            write(rows, info, command)  # after every shape: a killed run keeps its rows
    write(rows, info, command)


def write(rows: list[dict], info: dict, command: str) -> None:
    header = ["MLP (dim/ffn)", "T", "tiles", "time ms", "vs untiled", "activation GiB", "vs untiled"]
    body = []
    for row in rows:
        for v in row["variants"]:
            # compare like with like: checkpointed variants against untiled under checkpointing
            untiled = next((u for u in row["variants"] if u["tiles"] == 1 and u["ckpt"] == v["ckpt"]), {})
            label = "untiled" if v["tiles"] == 1 else f"{v['tiles']}"
            label += " (auto)" if v["tiles"] == row["auto_tiles"] and v["tiles"] > 1 else ""
            label += " generic" if v["path"] == "generic" and v["tiles"] > 1 else ""
            label += (" +ckpt" if v.get("skip") or v["tiles"] == 1 else " +ckpt recompute") if v["ckpt"] else ""
            ok, base_ok = v.get("status") == "ok", untiled.get("status") == "ok"
            body.append([f"{row['model']} ({row['dim']}/{row['ffn_dim']})", str(row["tokens"]), label,
                         f"{v['seconds'] * 1e3:.1f}" if ok else v.get("status", "-"),
                         f"{v['seconds'] / untiled['seconds']:.2f}x" if ok and base_ok else "-",
                         f"{v['activation_gib']:.2f}" if ok else "-",
                         f"{v['activation_gib'] / untiled['activation_gib']:.3f}" if ok and base_ok else "-"])
    notes = ("One MLP layer, batch 1, bf16 weights and activations, fwd + bwd, median of the timed repeats. "
             "activation = peak allocated during fwd+bwd minus weights, input and incoming gradient. "
             "Goals (issue 6): tiled peak <= 1/8 of untiled, time <= 1.10x untiled.")
    harness.write_results("kernels-tiled-mlp", "Tiled MLP vs untiled", harness.markdown_table(header, body),
                          rows, info, command, notes=notes)


if __name__ == "__main__":
    main()
