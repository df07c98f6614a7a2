"""Linear + cross-entropy, forward + backward, side by side (one GPU, bf16 inputs, reduction mean).

    python3 benchmarks/kernels_ce.py                      # the full grid, within --budget-s seconds
    python3 benchmarks/kernels_ce.py --tokens 8192 --hidden 2048 --vocab 128256 --impls ours,liger

Variants: eager (logits = h @ W.T, upcast, F.cross_entropy), compile (the same under torch.compile,
dynamic shapes: one compile for the grid), liger (LigerFusedLinearCrossEntropyLoss), cce (Apple's
cut-cross-entropy, its defaults incl. gradient filtering), ours (cptrain.ops.chunked_ce; ours@N: its chunks
of at most N tokens instead of the default (chunked_ce.default_chunk_size: ~768 MiB of logits); ours/M: chunk rows in steps of M instead
of chunked_ce.ROW_MULTIPLE). A variant
that is not installed, or runs out of memory, is reported as such and the run goes on.

floor = 6*T*H*V flops at the bf16 matmul rate measured at the start of the run (best of an
8192^3 torch.mm: a burst after idle, the GPU's highest clocks). Each timed call (variants, sustained floor) is
queued behind a ~50 ms GPU wait (host_ahead) so the device does not wait for Python's launches, as in
training. sustained floor = the time of 6*T*H*V flops
of 8192^3 torch.mm run back to back, timed as the variants are: the rate the GPU keeps for as long as the
variants run (its clocks drop under a long matmul load; ce_floor.py measured 685-717 against a 779 TFLOP/s
burst on H100). extra = peak memory during fwd+bwd minus the inputs and the two gradients every
variant must produce (d hidden and d weight, bf16). Writes benchmarks/results/<date>-<device>-kernels-ce.md
and .json (and copies them into $OUT when set).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import itertools
import os
import shlex
import sys
import time

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import harness
import torch
import torch.nn.functional as F

GIB = 2**30
IMPLS = ("ours", "liger", "cce", "eager", "compile")  # most telling first


def measure_matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, b)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best / 1e12


HOST_AHEAD_CYCLES = 100_000_000  # ~50 ms of GPU clock cycles at 2 GHz


def host_ahead() -> None:
    """Queue a ~50 ms wait on the GPU before the timed region, so the host has launched the call's kernels by the
    time the device reaches them, as in training (the trainer's host runs 49-128 ms ahead of the device). Without
    it, a call's first small kernels ran as fast as Python launched them: 0.7 ms of a 7.9 ms call idle at T=8K
    (ce_floor.py: 'ours' against 'ours device')."""
    torch.cuda._sleep(HOST_AHEAD_CYCLES)


def ce_case(tokens: int, hidden: int, vocab: int, seed: int = 0):
    """The CE benchmarks' inputs: bf16 hidden [tokens, hidden] and weight [vocab, hidden] (scaled by hidden^-0.5),
    both requiring grad, labels [tokens], and the generator that made them."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    w = (torch.randn(vocab, hidden, device="cuda", generator=gen) * hidden**-0.5).bfloat16().requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device="cuda", generator=gen)
    return h, w, y, gen


def call_s(fn, repeats: int, wait_first: bool = True) -> float:
    """Median seconds of one call of `fn` over `repeats` (one untimed call first), CUDA events around each,
    synchronized between; `wait_first`: each behind host_ahead's GPU wait, as the variants are timed."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        if wait_first:
            host_ahead()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def sustained_floor_s(flops: int, warmup: int, repeats: int, n: int = 8192) -> float:
    """Seconds for `flops` of back-to-back n^3 bf16 matmuls, median of `repeats` after `warmup`, synchronized
    around each as run_variant times a variant."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    count = max(1, round(flops / (2 * n**3)))
    times = []
    for i in range(warmup + repeats):
        torch.cuda.synchronize()
        host_ahead()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(count):
            torch.mm(a, b)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2] * flops / (count * 2 * n**3)


def build_impls(names: list[str]) -> dict[str, object]:
    """name -> loss_fn(h, w, y), or a string saying why the variant cannot run."""
    impls: dict[str, object] = {}
    for name in names:
        try:
            impls[name] = _build(name)
        except ImportError as e:
            impls[name] = f"not installed ({e.name or e})"
    return impls


def _eager(h, w, y):
    return F.cross_entropy((h @ w.t()).float(), y)


def _build(name: str):
    if name == "eager":
        return _eager
    if name == "compile":
        return torch.compile(_eager, dynamic=True)
    if name == "liger":
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(reduction="mean")
        return lambda h, w, y: liger(w, h, y)
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy as cce

        return lambda h, w, y: cce(h, w, y, reduction="mean")
    if name.startswith("ours"):  # ours@N: chunks of at most N tokens; ours/M: rows in steps of M
        from cptrain.ops import chunked_ce

        base, _, multiple = name.partition("/")
        chunk = int(base.split("@")[1]) if "@" in base else None
        multiple = int(multiple) if multiple else chunked_ce.ROW_MULTIPLE

        def ours(h, w, y):
            default, chunked_ce.ROW_MULTIPLE = chunked_ce.ROW_MULTIPLE, multiple
            try:
                return chunked_ce.linear_cross_entropy(h, w, y, reduction="mean", chunk_size=chunk)
            finally:
                chunked_ce.ROW_MULTIPLE = default
        return ours
    raise ValueError(f"--impls: unknown variant {name!r}; choose from {', '.join(IMPLS)}")


def run_variant(fn, h, w, y, warmup: int, repeats: int) -> dict:
    """Median fwd+bwd seconds, extra memory, and the loss; status 'OOM' when memory runs out."""
    grads_bytes = h.numel() * h.element_size() + w.numel() * w.element_size()
    times: list[float] = []
    extra = None
    loss_value = None
    try:
        for i in range(warmup + repeats):
            h.grad = w.grad = None
            gc.collect()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            host_ahead()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = fn(h, w, y)
            loss.backward()
            end.record()
            end.synchronize()
            if i == 0:
                loss_value = loss.item()
            if i >= warmup:  # warmup may include compilation and autotuning buffers
                times.append(start.elapsed_time(end) / 1e3)
                extra = max(extra or 0, torch.cuda.max_memory_allocated() - base - grads_bytes)
            del loss
    except torch.OutOfMemoryError:
        return {"status": "OOM"}
    finally:
        h.grad = w.grad = None
        gc.collect()
        torch.cuda.empty_cache()
    times.sort()
    return {"status": "ok", "seconds": times[len(times) // 2], "extra_gib": extra / GIB, "loss": loss_value}


def _time_ms(fn, repeats: int = 5) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def breakdown(rows: int = 2048, vocab: int = 128256) -> list[dict]:
    """Where one chunk of ours spends its time: the three matmuls, and each Triton pass per block config."""
    out = []
    for hidden in (2048, 4096):
        out += _breakdown_one(rows, hidden, vocab)
        torch.cuda.empty_cache()
    return out


def _breakdown_one(rows: int, hidden: int, vocab: int) -> list[dict]:
    from cptrain.ops import triton_ce

    h = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16) * hidden**-0.5
    y = torch.randint(0, vocab, (rows,), device="cuda")
    logits = torch.empty(rows, vocab, device="cuda", dtype=torch.bfloat16)
    gh, gw = torch.empty_like(h), torch.zeros_like(w)
    flops = 2 * rows * hidden * vocab
    out = []
    steps = [("mm logits", lambda: torch.mm(h, w.t(), out=logits)),
             ("mm d_hidden", lambda: torch.mm(logits, w, out=gh)),
             ("addmm d_weight", lambda: gw.addmm_(logits.t(), h))]
    for name, fn in steps:
        ms = _time_ms(fn)
        out.append({"hidden": hidden, "step": name, "ms": ms, "tflops": flops / ms / 1e9})
    torch.mm(h, w.t(), out=logits)
    lse, _ = triton_ce.row_stats(logits, y, 0, -100, None)
    coef = torch.full((rows,), 1.0 / rows, device="cuda")
    nbytes = logits.numel() * logits.element_size()
    for block, warps in [(1024, 4), (2048, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16)]:
        ms = _time_ms(functools.partial(triton_ce.row_stats, logits, y, 0, -100, None, block, warps))
        out.append({"hidden": hidden, "step": f"row_stats {block}/{warps}w", "ms": ms,
                    "gbps": nbytes / ms / 1e6})
        ms = _time_ms(functools.partial(triton_ce.logits_grad_, logits, y, lse, coef, coef, 0, None, block,
                                        warps))
        out.append({"hidden": hidden, "step": f"logits_grad {block}/{warps}w", "ms": ms,
                    "gbps": 2 * nbytes / ms / 1e6})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="8192,32768,131072")
    p.add_argument("--hidden", default="2048,4096")
    p.add_argument("--vocab", default="49152,128256,151936")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting new shapes after this")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="skip timing ours' matmuls and Triton passes on one 2048 x 128256 chunk")
    args = p.parse_args()
    harness.require_cuda()
    command = shlex.join(["python3", *sys.argv])
    info = harness.device_info()
    try:
        info["cut-cross-entropy"] = importlib.metadata.version("cut-cross-entropy")
    except importlib.metadata.PackageNotFoundError:
        info["cut-cross-entropy"] = None
    t_start = time.perf_counter()
    tflops = measure_matmul_tflops()
    print(f"bf16 matmul rate: {tflops:.0f} TFLOP/s", flush=True)
    parts = breakdown() if args.breakdown else []
    for part in parts:
        print(part, flush=True)
    impls = build_impls(args.impls.split(","))
    sizes = (map(int, a.split(",")) for a in (args.tokens, args.hidden, args.vocab))
    shapes = sorted(itertools.product(*sizes),
                    key=lambda s: s[0] * s[1] * s[2])
    rows = []
    for tokens, hidden, vocab in shapes:
        floor_s = 6 * tokens * hidden * vocab / (tflops * 1e12)
        row = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "floor_s": floor_s, "variants": {}}
        rows.append(row)
        if time.perf_counter() - t_start > args.budget_s:
            row["variants"] = {n: {"status": "skipped (time budget)"} for n in impls}
            continue
        row["sustained_floor_s"] = sustained_floor_s(6 * tokens * hidden * vocab, args.warmup, args.repeats)
        h, w, y, _ = ce_case(tokens, hidden, vocab)
        for name, fn in impls.items():
            if isinstance(fn, str):
                result = {"status": fn}
            else:
                result = run_variant(fn, h, w, y, args.warmup, args.repeats)
            if result.get("seconds"):
                result["x_floor"] = result["seconds"] / floor_s
                result["x_sustained"] = result["seconds"] / row["sustained_floor_s"]
            row["variants"][name] = result
            print(f"T={tokens} H={hidden} V={vocab} {name}: {result}", flush=True)
        del h, w, y
        torch.cuda.empty_cache()
        write(rows, parts, impls, tflops, info, command)  # after every shape: a killed run keeps its rows
    write(rows, parts, impls, tflops, info, command)


def _cell(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "-")
    sustained = f" ({r['x_sustained']:.2f}x)" if "x_sustained" in r else ""
    return f"{r['seconds'] * 1e3:.1f} ms, {r['x_floor']:.2f}x{sustained}, {r['extra_gib']:.2f} GiB"


def write(rows: list[dict], parts: list[dict], impls: dict, tflops: float, info: dict, command: str) -> None:
    names = list(impls)
    versus = {"ours", "liger"} <= set(names)
    header = ["T", "H", "V", "floor ms (sustained)"] + names + (["ours vs liger"] if versus else [])
    body = []
    for row in rows:
        v = row["variants"]
        sustained = f" ({row['sustained_floor_s'] * 1e3:.1f})" if "sustained_floor_s" in row else ""
        cells = [str(row["tokens"]), str(row["hidden"]), str(row["vocab"]), f"{row['floor_s'] * 1e3:.1f}{sustained}"]
        cells += [_cell(v.get(n, {})) for n in names]
        if versus:
            ours, liger = v.get("ours", {}).get("seconds"), v.get("liger", {}).get("seconds")
            cells.append(f"{liger / ours:.2f}x faster" if ours and liger else "-")
        body.append(cells)
    notes = (f"bf16 matmul rate measured in this run: {tflops:.0f} TFLOP/s (8192^3 torch.mm, best of 10). "
             "Every timed call starts behind a ~50 ms GPU wait, so the host has launched its kernels by then, as "
             "in training. Sustained floor (in brackets): 6*T*H*V flops of 8192^3 matmuls back to back, timed as the variants "
             "are. Cells: median fwd+bwd time, time / floor (time / sustained floor), extra memory beyond the "
             "inputs and the two bf16 gradients. "
             f"cut-cross-entropy {info.get('cut-cross-entropy')}. Goals (issue 6): ours <= 1.15x floor, "
             ">= 1.5x faster than liger, extra <= 1 GiB at T=128K, V=128K.")
    table = harness.markdown_table(header, body)
    if parts:
        table += "\n## One chunk of ours (2048 tokens x 128256 vocab, bf16)\n\n" + harness.markdown_table(
            ["H", "step", "ms", "TFLOP/s or GB/s"],
            [[str(q["hidden"]), q["step"], f"{q['ms']:.3f}", f"{q.get('tflops', q.get('gbps')):.0f}"]
             for q in parts])
    records = ([{"kind": "matmul_rate", "tflops": tflops}] + [{"kind": "shape", **r} for r in rows]
               + [{"kind": "breakdown", **q} for q in parts])
    harness.write_results("kernels-ce", "Linear + cross-entropy fwd+bwd", table, records, info, command,
                          notes=notes)


if __name__ == "__main__":
    main()
