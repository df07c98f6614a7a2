"""One AdamW step over a model's parameters: TritonAdamW (ops/adamw.py) vs torch's fused and foreach AdamW.

    python3 benchmarks/kernels_adamw.py                     # llama3.2-1b (Q1's optimizer step), bf16 and fp32
    python3 benchmarks/kernels_adamw.py --models llama3.1-8b --shards 2   # one rank's half, FSDP2 on 2 GPUs

The parameters are the preset's real tensors (cptrain's groups: decay / no decay, tied embedding once);
gradients are random, `grad_scale` is set as the trainer's folded clip sets it. Each variant's time is the
median over CUDA-event-timed steps; "GB/s" is the bytes a step must move (read parameter, gradient and
both moments, write parameter and moments) over that time, against the GPU's memory bandwidth.
Block size / warps / unrolled iterations variants of the Triton kernel pick its defaults.
Writes benchmarks/results/<date>-<device>-kernels-adamw.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import harness
import torch

from cptrain.config import OptimConfig
from cptrain.models.decoder import Decoder
from cptrain.models.presets import get_preset
from cptrain.ops import adamw, grad_norm
from cptrain.ops.grad_norm import GradNorm
from cptrain.optim import folds_clip_and_skip, param_groups

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def shard_params(model: str, dtype: torch.dtype, shards: int, flat: bool = False) -> tuple[list[dict], int]:
    """The preset's parameter groups as 1/shards-sized flat tensors of each parameter (an FSDP2 rank's
    local shards), on the GPU in `dtype`; and the element count. `flat`: all of them as one tensor."""
    with torch.device("meta"):
        meta = Decoder(get_preset(model))
    groups = param_groups(meta, OptimConfig())
    if flat:
        groups = [{**groups[0], "params": [torch.empty(sum(p.numel() for g in groups for p in g["params"]),
                                                       device="meta")]}]
    out, total = [], 0
    for g in groups:
        tensors = []
        for p in g["params"]:
            n = -(-p.numel() // shards)
            t = torch.nn.Parameter(torch.randn(n, device="cuda", dtype=dtype) * 0.02)
            t.grad = torch.randn_like(t) * 1e-3
            tensors.append(t)
            total += n
        out.append({**g, "params": tensors})
    return out, total


def cuda_seconds(fn, warmup: int, repeats: int) -> float:
    """Median seconds of `fn()` between CUDA events, after `warmup` untimed calls."""
    return harness.median(harness.cuda_event_ms(fn, warmup, repeats)) / 1e3


def time_variant(groups: list[dict], make, warmup: int, repeats: int) -> float:
    opt = make(groups)
    scale = torch.tensor(1.5, device="cuda")
    if folds_clip_and_skip(opt):  # as the trainer does: the clip divisor read on the device
        opt.grad_scale = scale
    seconds = cuda_seconds(opt.step, warmup, repeats)
    del opt
    torch.cuda.empty_cache()
    return seconds


def time_norms(groups: list[dict], warmup: int, repeats: int,
               configs: list[tuple[int, int, int]]) -> dict[str, float]:
    """The gradient norm the trainer takes before each step: torch's foreach norm and GradNorm at its
    defaults and at each BLOCK/warps/iters of `configs` (each checked to agree with torch)."""
    grads = [p.grad for g in groups for p in g["params"]]
    timed = {"grad norm: torch foreach": cuda_seconds(lambda: torch.nn.utils.get_total_norm(grads, foreach=True),
                                                      warmup, repeats)}
    torch_norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    defaults = (grad_norm.BLOCK, grad_norm.NUM_WARPS, grad_norm.ITERS)
    for i, (block, warps, iters) in enumerate([defaults, *configs]):
        grad_norm.BLOCK, grad_norm.NUM_WARPS, grad_norm.ITERS = block, warps, iters
        norm = GradNorm()
        value = norm(grads)
        # torch returns the norm in the gradients' dtype (bf16: 3 significant digits), GradNorm in fp32
        if abs(float(torch_norm) - float(value)) > torch.finfo(torch_norm.dtype).eps * abs(float(torch_norm)):
            raise SystemExit(f"grad norms differ: torch {float(torch_norm)} vs triton {float(value)}")
        name = "grad norm: triton" + ("" if i == 0 else f" BLOCK={block} warps={warps} iters={iters}")
        timed[name] = cuda_seconds(lambda: norm(grads), warmup, repeats)  # noqa: B023 (called at once)
    grad_norm.BLOCK, grad_norm.NUM_WARPS, grad_norm.ITERS = defaults
    return timed


def time_streams(numel: int, dtype: torch.dtype, warmup: int, repeats: int) -> dict[str, tuple[float, int]]:
    """Reference streams over `numel` elements (seconds, bytes moved): what this GPU's memory does for a
    copy (1 read, 1 write) and for a 3-read, 1-write elementwise op."""
    a, b, c = (torch.randn(numel, device="cuda", dtype=dtype) for _ in range(3))
    out = torch.empty_like(a)
    size = dtype.itemsize * numel
    rows = {"stream: copy (1R 1W)": (lambda: out.copy_(a), 2 * size),
            "stream: addcmul (3R 1W)": (lambda: torch.addcmul(a, b, c, out=out), 4 * size)}
    return {name: (cuda_seconds(fn, warmup, repeats), nbytes) for name, (fn, nbytes) in rows.items()}


def variants(configs: list[tuple[int, int, int]]):
    hyper = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    yield "torch fused", {}, lambda g: torch.optim.AdamW(g, fused=True, **hyper)
    yield "torch foreach", {}, lambda g: torch.optim.AdamW(g, foreach=True, **hyper)
    for block, warps, iters, flags in configs:
        extra = "".join(f" {name.lower()}" for name, letter in FLAGS if letter in flags)
        yield f"triton BLOCK={block} warps={warps} iters={iters}{extra}", \
            {"BLOCK": block, "NUM_WARPS": warps, "ITERS": iters,
             **{name: letter in flags for name, letter in FLAGS}}, lambda g: adamw.TritonAdamW(g, **hyper)


FLAGS = (("PREFETCH", "p"),)  # kernel switches, as letters after BLOCK/warps/iters


def parse_config(text: str) -> tuple[int, int, int, str]:
    """'BLOCK/warps/iters' with an optional '/letters' of FLAGS, e.g. '1024/4/4/ph'."""
    parts = text.split("/")
    if len(parts) not in (3, 4) or not all(x.isdigit() for x in parts[:3]) \
            or any(c not in "".join(f for _, f in FLAGS) for c in (parts[3] if len(parts) == 4 else "")):
        raise SystemExit(f"--configs: {text!r} is not BLOCK/warps/iters[/flags] (flags: p)")
    return int(parts[0]), int(parts[1]), int(parts[2]), parts[3] if len(parts) == 4 else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="llama3.2-1b")
    p.add_argument("--shards", type=int, default=1, help="size of each tensor: 1/shards (an FSDP2 rank's part)")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--flat", action="store_true", help="also time the model's parameters as one tensor (no "
                   "per-tensor tables: what the multi-tensor launch costs) and plain memory streams")
    p.add_argument("--configs", default="2048/4/1,4096/8/1,1024/4/1,1024/4/4,512/4/8,2048/8/2,1024/2/4",
                   help="Triton kernel settings BLOCK/warps/iters[/p]: p prefetches the next block")
    p.add_argument("--norm-configs", default="", help="GradNorm settings BLOCK/warps/iters to time besides its "
                   "defaults")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="HBM GB/s for the '%% of bandwidth' column "
                   "(default: 3350 for H100 SXM, 4800 for H200)")
    args = p.parse_args()
    harness.require_cuda()
    command = shlex.join(["python3", *sys.argv])
    info = harness.device_info()
    bw = args.bandwidth_gbs or (4800.0 if "H200" in info["device_name"] else 3350.0)
    defaults = {"BLOCK": adamw.BLOCK, "NUM_WARPS": adamw.NUM_WARPS, "ITERS": adamw.ITERS,
                "PREFETCH": adamw.PREFETCH}
    configs = [parse_config(c) for c in args.configs.split(",")]
    rows = []
    t0 = time.perf_counter()
    for model in args.models.split(","):
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            groups, numel = shard_params(model, dtype, args.shards)
            nbytes = numel * dtype.itemsize * 7  # read p, g, m, v; write p, m, v
            for name, knobs, make in variants(configs):
                for key, value in {**defaults, **knobs}.items():
                    setattr(adamw, key, value)
                seconds = time_variant(groups, make, args.warmup, args.repeats)
                row = {"model": model, "shards": args.shards, "dtype": dname, "params": numel, "variant": name,
                       "seconds": seconds, "gbs": nbytes / seconds / 1e9}
                rows.append(row)
                print(row, flush=True)
            for key, value in defaults.items():
                setattr(adamw, key, value)
            norm_configs = [parse_config(c)[:3] for c in args.norm_configs.split(",") if c]
            for name, seconds in time_norms(groups, args.warmup, args.repeats, norm_configs).items():
                row = {"model": model, "shards": args.shards, "dtype": dname, "params": numel, "variant": name,
                       "seconds": seconds, "gbs": numel * dtype.itemsize / seconds / 1e9}
                rows.append(row)
                print(row, flush=True)
            del groups
            torch.cuda.empty_cache()
            if args.flat:
                groups, _ = shard_params(model, dtype, args.shards, flat=True)
                for name, knobs, make in variants([c for c in configs if c[3] == ""][:1]):
                    for key, value in {**defaults, **knobs}.items():
                        setattr(adamw, key, value)
                    seconds = time_variant(groups, make, args.warmup, args.repeats)
                    rows.append({"model": model, "shards": args.shards, "dtype": dname, "params": numel,
                                 "variant": f"{name}, one flat tensor", "seconds": seconds,
                                 "gbs": nbytes / seconds / 1e9})
                    print(rows[-1], flush=True)
                for key, value in defaults.items():
                    setattr(adamw, key, value)
                del groups
                torch.cuda.empty_cache()
                for name, (seconds, moved) in time_streams(numel, dtype, args.warmup, args.repeats).items():
                    rows.append({"model": model, "shards": args.shards, "dtype": dname, "params": numel,
                                 "variant": name, "seconds": seconds, "gbs": moved / seconds / 1e9})
                    print(rows[-1], flush=True)
                torch.cuda.empty_cache()
    print(f"done in {time.perf_counter() - t0:.0f} s")
    header = ["model (shard)", "dtype", "params", "variant", "ms/step", "vs torch fused", "GB/s", "% of HBM"]
    body = []
    for r in rows:
        fused = next(x for x in rows if x["model"] == r["model"] and x["dtype"] == r["dtype"]
                     and x["variant"] == "torch fused")
        body.append([f"{r['model']} (1/{r['shards']})", r["dtype"], f"{r['params'] / 1e9:.3f}B", r["variant"],
                     f"{r['seconds'] * 1e3:.2f}", f"{fused['seconds'] / r['seconds']:.2f}x", f"{r['gbs']:.0f}",
                     f"{100 * r['gbs'] / bw:.0f}%"])
    notes = (f"Bytes per step: 7 x params x dtype size (the grad norm rows: 1 x; their 'vs torch fused' column "
             f"means nothing). HBM bandwidth taken as {bw:.0f} GB/s. The default "
             f"Triton kernel is BLOCK={defaults['BLOCK']} warps={defaults['NUM_WARPS']} iters={defaults['ITERS']} "
             f"prefetch={defaults['PREFETCH']}; "
             f"the trainer also reads every gradient once for the norm before this step (not timed here).")
    harness.write_results("kernels-adamw", "AdamW step: TritonAdamW vs torch fused / foreach",
                          harness.markdown_table(header, body), rows, info, command, notes=notes)


if __name__ == "__main__":
    main()
