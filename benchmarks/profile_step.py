"""Profile a few cptrain training steps: where device time goes, and where the device waits for the host.

    python3 benchmarks/profile_step.py RECIPE [key=value ...] --warmup 4 --steps 3 --out DIR

Builds the run the way `cptrain run` does (model, trainer, loader), trains `--warmup` steps, then
profiles `--steps` steps with torch.profiler and writes DIR/profile-summary.json and a text table:
wall time per step, device-busy time (union of kernel and copy intervals), the largest idle gaps with
the host-side phase that was running, device time by kernel family, and the top kernels. The loop is
the trainer's own (next batch fetched while the device works; each step read back after the next is
launched) when the trainer has `launch_step`; otherwise the older one (fetch, step, synchronize), so the
same script profiles both.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import json
import re
import time
from pathlib import Path

import torch

FAMILIES = [  # (family, regex over the kernel name), first match wins
    ("attention", r"flex_attention|triton_tem_fused|_attn_fwd|_attn_bwd|sdpa|fmha|flash"),
    ("gemm", r"gemm|sm90_xmma|cutlass|nvjet|cublas|matmul|splitKreduce"),
    ("cross-entropy (triton)", r"_row_stats_kernel|_logits_grad_kernel"),
    ("optimizer", r"adam|Adam"),
    ("fused pointwise/reduction (inductor)", r"^triton_(poi|red|per)"),
    ("nccl", r"nccl"),
    ("copy/cast (memcpy, memset, copy kernels)", r"Memcpy|Memset|copy_kernel|CatArrayBatchedCopy|chunk_cat|"
                                                  r"split_with_sizes|direct_copy"),
    ("elementwise (eager)", r"elementwise|vectorized|unrolled"),
    ("reduction (eager)", r"reduce_kernel|norm|multi_tensor_apply"),
]


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if re.search(pattern, name):
            return fam
    return "other"


def build(recipe: str, overrides: list[str]):
    from cptrain.config import load_config
    from cptrain.data import build_train_loader
    from cptrain.models.build import build_model, model_args
    from cptrain.models.hf import load_tokenizer
    from cptrain.parallel.dims import build_mesh, init_distributed
    from cptrain.train import Trainer

    cfg = load_config(recipe, overrides)
    env = init_distributed(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    mesh = build_mesh(cfg.parallel, env)
    tokenizer = load_tokenizer(cfg.model.tokenizer_source)
    kw = dict(seq_len=cfg.train.seq_len, micro_batch_size=cfg.train.micro_batch_size)
    if "fsdp" in inspect.signature(build_model).parameters:
        kw["fsdp"] = cfg.parallel.fsdp
    model = build_model(cfg.model, cfg.precision, mesh, env.device, **kw)
    trainer = Trainer(cfg, model, env.device)
    accum = cfg.train.micro_batches_per_step(env.world_size)
    loader = build_train_loader(cfg.data, tokenizer, dp_rank=env.rank, dp_size=env.world_size,
                                seed=cfg.train.seed, micro_batches_per_step=accum,
                                seq_len=cfg.train.seq_len, micro_batch_size=cfg.train.micro_batch_size)
    return cfg, env, model_args(cfg.model), trainer, loader, accum


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Host phases labelled for the profile (record_function) and timed by the host clock (perf_counter):
    with the clock alone (no profiler) the host's own cost per phase shows, e.g. whether launching a step
    takes about as long as the device runs it."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.Counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        with torch.profiler.record_function(name):
            yield
        self.seconds[name] += time.perf_counter() - t0


def make_loop(trainer, loader, accum: int, device: torch.device, rf: PhaseClock):
    """One step of the trainer's loop, with host phases labelled and timed by `rf`."""
    if hasattr(trainer, "launch_step"):
        from cptrain.looptools import Lookahead

        feed = Lookahead(loader, accum)
        inflight = []
        overlap = "stop_requested" in inspect.signature(trainer.launch_step).parameters

        def step() -> None:
            with rf("cpt:take"):
                micro = feed.take()
            with rf("cpt:launch_step"):
                inflight.append(trainer.launch_step(micro))
            with rf("cpt:fetch_next"):
                feed.fetch()
            # the run loop reads a step back after launching the next (one step in flight); older trainers
            # waited for each step before the next
            while len(inflight) > (1 if overlap else 0):
                with rf("cpt:finish_step"):
                    trainer.finish_step(inflight.pop(0))

        def flush() -> None:
            while inflight:
                trainer.finish_step(inflight.pop(0))
            sync(device)
        return step, flush

    def old_step() -> None:
        with rf("cpt:fetch"):
            micro = [next(loader) for _ in range(accum)]
        with rf("cpt:train_step"):
            trainer.train_step(micro)
        with rf("cpt:synchronize"):
            sync(device)
    return old_step, lambda: sync(device)


def union_ns(intervals: list[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
    """Total covered length and the gaps between covered stretches."""
    total, gaps, cur_s, cur_e = 0, [], None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
                gaps.append((cur_e, s))
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total, gaps


def host_ops_during(cpu_ops: list[tuple[str, int, int]], gs: int, ge: int, keep: int = 8) -> list[str]:
    """The host ops that took most of a device-idle gap's time (ms of overlap each): what the GPU waited on."""
    overlap: dict[str, float] = collections.Counter()
    for name, s, e in cpu_ops:
        if s < ge and e > gs:
            overlap[name] += (min(e, ge) - max(s, gs)) / 1e6
    return [f"{n[:80]} {ms:.2f}" for n, ms in sorted(overlap.items(), key=lambda kv: -kv[1])[:keep]]


def launched_ops(events) -> list[tuple[int, int, str]]:
    """(start of the host's launch call, device start, name) of each device op, matched by correlation id."""
    from torch.autograd import DeviceType

    launches, device = {}, []
    for e in events:
        corr = e.correlation_id()
        if not corr:
            continue
        if e.device_type() == DeviceType.CPU and e.name().startswith(("cuda", "cu")):
            launches[corr] = e.start_ns()
        elif e.device_type() == DeviceType.CUDA:
            device.append((corr, e.start_ns(), e.name()))
    return sorted((launches[c], start, name) for c, start, name in device if c in launches)


def launch_ranges(host: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    return sorted((s, e) for n, s, e in host if n == "cpt:launch_step")


def host_lead(ops: list[tuple[int, int, str]], host: list[tuple[str, int, int]], steps: int) -> dict:
    """How far ahead of the device the host launches: for each device op, its start minus its launch call's
    start. Per tenth of each `launch_step` but the first (see summarize), by launch time, the median and
    smallest lead in ms: where it nears 0 the device is waiting for the host's next launch."""
    # the ops that started within 1 ms of their launch call (the device had nothing queued before them)
    prompt: dict[str, int] = collections.Counter(name[:70] for t, start, name in ops if start - t < 1e6)
    tenths: list[list[float]] = [[] for _ in range(10)]
    for s, e in launch_ranges(host)[1:]:
        for t, start, _ in ops:
            if s <= t <= e:
                tenths[min(9, int(10 * (t - s) / max(1, e - s)))].append((start - t) / 1e6)
    return {"device_ops_per_step": len(ops) / (steps + 1), "started_within_1ms_of_launch": dict(prompt.most_common(12)),
            "lead_ms_by_tenth_of_launch_step": [
                {"median": sorted(x)[len(x) // 2], "min": min(x), "n": len(x)} if x else None for x in tenths]}


def first_op_of_launch(ops: list[tuple[int, int, str]], host: list[tuple[str, int, int]], index: int) -> int | None:
    """Device start of the earliest op launched during the `index`-th `cpt:launch_step` (None: no match)."""
    ranges = launch_ranges(host)
    if len(ranges) <= index:
        return None
    lo, hi = ranges[index]
    starts = [start for t, start, _ in ops if lo <= t <= hi]
    return min(starts) if starts else None


def summarize(prof, steps: int, wall_s: float) -> dict:
    from torch.autograd import DeviceType

    kernels, host, cpu_ops = [], [], []
    for e in prof.profiler.kineto_results.events():
        user = getattr(e, "is_user_annotation", lambda: False)()
        if e.device_type() == DeviceType.CUDA and not user and not e.name().startswith("cpt:"):
            kernels.append((e.name(), e.start_ns(), e.start_ns() + e.duration_ns()))
        elif e.device_type() == DeviceType.CPU and e.name().startswith("cpt:"):
            host.append((e.name(), e.start_ns(), e.start_ns() + e.duration_ns()))
        elif e.device_type() == DeviceType.CPU:
            cpu_ops.append((e.name(), e.start_ns(), e.start_ns() + e.duration_ns()))
    # `steps` + 1 steps were profiled; without device events (CPU) all of them count
    out: dict = {"steps": steps + 1, "wall_ms_per_step": 1000 * wall_s / (steps + 1)}
    if not kernels:
        return out
    ops = launched_ops(prof.profiler.kineto_results.events())
    out["host_lead"] = host_lead(ops, host, steps)
    # The profiler's start slows the host through the first profiled step's launch, and the device drains
    # its queue meanwhile (every op of that step starts within a few ms of its launch; later steps' ops wait
    # ~120 ms in the queue). So the window counted starts where the device begins the ops launched by the
    # second launch_step, and `steps` steps (one more was profiled) run from there to the last kernel.
    cutoff = first_op_of_launch(ops, host, 1)
    if cutoff is not None:
        kernels = [k for k in kernels if k[1] >= cutoff]
    else:
        steps += 1
    out["steps"] = steps
    span_s, span_e = min(k[1] for k in kernels), max(k[2] for k in kernels)
    wall_ns = span_e - span_s if cutoff is not None else wall_s * 1e9
    out["wall_ms_per_step"] = wall_ns / 1e6 / steps
    busy, gaps = union_ns([(s, e) for _, s, e in kernels])
    out["device_span_ms_per_step"] = (span_e - span_s) / 1e6 / steps
    out["device_busy_ms_per_step"] = busy / 1e6 / steps
    out["device_idle_frac_of_wall"] = 1 - busy / wall_ns
    by_phase: dict[str, float] = collections.Counter()
    for gs, ge in gaps:
        mid = (gs + ge) // 2
        phase = next((n for n, s, e in host if s <= mid <= e), "between phases")
        by_phase[phase] += (ge - gs) / 1e6 / steps
    out["idle_ms_per_step_by_host_phase"] = dict(sorted(by_phase.items(), key=lambda kv: -kv[1]))
    big = sorted(gaps, key=lambda g: g[0] - g[1])[:12]
    out["largest_gaps"] = [{"ms": (ge - gs) / 1e6, "at_ms": (gs - span_s) / 1e6,
                            "host_phase": next((n for n, s, e in host if s <= (gs + ge) // 2 <= e), "-"),
                            "host_ops": host_ops_during(cpu_ops, gs, ge)}
                           for gs, ge in big]
    fams: dict[str, float] = collections.Counter()
    names: dict[str, list] = {}
    for name, s, e in kernels:
        fams[family(name)] += (e - s) / 1e6 / steps
        rec = names.setdefault(name, [0, 0.0])
        rec[0] += 1
        rec[1] += (e - s) / 1e6 / steps
    out["device_ms_per_step_by_family"] = dict(sorted(fams.items(), key=lambda kv: -kv[1]))
    top = sorted(names.items(), key=lambda kv: -kv[1][1])[:30]
    out["top_kernels"] = [{"name": n[:160], "calls_per_step": c / steps, "ms_per_step": t} for n, (c, t) in top]
    return out


def text_report(s: dict, title: str) -> str:
    lines = [f"## {title}", "", f"wall {s['wall_ms_per_step']:.1f} ms/step"]
    if "device_busy_ms_per_step" not in s:
        return "\n".join(lines + ["(no device events)"]) + "\n"
    lines.append(f"device busy {s['device_busy_ms_per_step']:.1f} ms/step (span {s['device_span_ms_per_step']:.1f}), "
                 f"idle {100 * s['device_idle_frac_of_wall']:.1f}% of wall")
    lines += ["", "device idle by host phase (ms/step): " + ", ".join(
        f"{k} {v:.2f}" for k, v in s["idle_ms_per_step_by_host_phase"].items())]
    if "unprofiled_host_ms_per_step_by_phase" in s:
        lines += ["", f"without the profiler: wall {s['unprofiled_wall_ms_per_step']:.1f} ms/step; host time by phase "
                  "(ms/step; finish_step is mostly waiting for the device): " + ", ".join(
                      f"{k} {v:.2f}" for k, v in s["unprofiled_host_ms_per_step_by_phase"].items())]
    lead = s.get("host_lead")
    if lead:
        lines += ["", f"host lead (device op start - its launch call), {lead['device_ops_per_step']:.0f} device ops "
                  f"per step, by tenth of launch_step: " + ", ".join(
                      f"{i}: med {t['median']:.1f} / min {t['min']:.2f} ms" for i, t in
                      enumerate(lead["lead_ms_by_tenth_of_launch_step"]) if t)]
        lines += ["", "device ops started within 1 ms of their launch (count over all profiled steps, the first included): " + "; ".join(
            f"{k} {v}" for k, v in lead["started_within_1ms_of_launch"].items())]
    lines += ["", "| kernel family | ms/step |", "| --- | --- |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s["device_ms_per_step_by_family"].items()]
    lines += ["", "| top kernel | calls/step | ms/step |", "| --- | --- | --- |"]
    lines += [f"| `{k['name'][:90]}` | {k['calls_per_step']:.0f} | {k['ms_per_step']:.2f} |" for k in s["top_kernels"]]
    lines += ["", "largest idle gaps: " + ", ".join(f"{g['ms']:.2f} ms ({g['host_phase']})" for g in s["largest_gaps"])]
    for g in s["largest_gaps"][:3]:
        lines.append(f"- {g['ms']:.2f} ms gap, host ops (ms of overlap): " + "; ".join(g.get("host_ops", [])))
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="profile")
    p.add_argument("--sync-debug", action="store_true",
                   help="after the profile, run 2 more steps under torch.cuda.set_sync_debug_mode('warn') and "
                        "write where the host waited for the device to DIR/NAME-syncs.txt")
    p.add_argument("--origins", action="store_true",
                   help="after the profile, profile 2 more steps with Python stacks and write the ops with the "
                        "most device time, each with the stack that launched it, to DIR/NAME-origins.txt (finds "
                        "where small eager kernels come from)")
    ns = p.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    cfg, env, args, trainer, loader, accum = build(ns.recipe, ns.overrides)
    clock = PhaseClock()
    step, flush = make_loop(trainer, loader, accum, env.device, clock)
    for _ in range(ns.warmup):
        step()
    # no flush here: the profiled steps start with a step in flight, as in a run
    acts = [torch.profiler.ProfilerActivity.CPU]
    if env.device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(ns.steps + 1):  # the first is left out of the summary (see summarize)
            step()
        flush()
        wall = time.perf_counter() - t0
    summary = summarize(prof, ns.steps, wall)
    # the same steps again without the profiler: host time per phase, and the wall
    clock.seconds.clear()
    t0 = time.perf_counter()
    for _ in range(ns.steps):
        step()
    flush()
    summary["unprofiled_wall_ms_per_step"] = 1000 * (time.perf_counter() - t0) / ns.steps
    summary["unprofiled_host_ms_per_step_by_phase"] = {k: 1000 * v / ns.steps for k, v in clock.seconds.items()}
    try:
        from torch._dynamo.utils import counters

        summary["dynamo_graph_breaks"] = dict(counters["graph_break"])
        summary["dynamo_unique_graphs"] = counters["stats"].get("unique_graphs")
    except Exception as e:  # diagnostics only
        summary["dynamo_counters_error"] = repr(e)
    (ns.out / f"{ns.name}-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = text_report(summary, ns.name)
    (ns.out / f"{ns.name}-summary.md").write_text(text)
    print(text, flush=True)
    if ns.sync_debug and env.device.type == "cuda":
        (ns.out / f"{ns.name}-syncs.txt").write_text(find_syncs(step, flush))
    if ns.origins and env.device.type == "cuda":
        (ns.out / f"{ns.name}-origins.txt").write_text(kernel_origins(step, flush))
    from cptrain.parallel.dims import shutdown

    shutdown()
    return 0


def kernel_origins(step, flush, steps: int = 2, frames: int = 5) -> str:
    """The aten ops of `steps` steps by the device time of the kernels they launched themselves, grouped by op
    and the innermost Python frames that called it: which line of which file launched each kind of kernel."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts, with_stack=True) as prof:
        for _ in range(steps):
            step()
        flush()
    groups: dict[tuple[str, tuple[str, ...]], list] = {}
    for e in prof.events():
        if not e.name.startswith("aten::") or e.self_device_time_total <= 0:
            continue
        stack, parent = [], e.cpu_parent
        while parent is not None and len(stack) < frames:
            name = parent.name
            if ((".py(" in name or name.startswith(("aten::", "cptrain::", "## Call", "Optimizer.")))
                    and "torch/autograd" not in name and "torch/nn/modules/module" not in name):
                stack.append(name)
            parent = parent.cpu_parent
        stack += [f"  at {frame}" for frame in (e.stack or [])[:frames]]
        rec = groups.setdefault((e.name, tuple(stack)), [0, 0.0])
        rec[0] += 1
        rec[1] += e.self_device_time_total / 1e3 / steps
    lines = [f"aten ops by the device time of the kernels they launched (ms per step, over {steps} steps), "
             f"with the innermost {frames} ops and Python frames above each (autograd and Module frames left out)", ""]
    for (name, stack), (calls, ms) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:60]:
        lines.append(f"{ms:8.3f} ms  {calls / steps:6.1f} calls  {name}")
        lines += [f"              {frame}" for frame in stack] + [""]
    return "\n".join(lines) + "\n"


def find_syncs(step, flush) -> str:
    """Stacks of the synchronizing CUDA calls made while launching steps (the read-back is excluded)."""
    import traceback
    import warnings

    seen: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        stack = "".join(traceback.format_stack(limit=14)[:-2])
        key = f"{message}\n{stack}"
        seen[key] = seen.get(key, 0) + 1

    with warnings.catch_warnings():  # restores showwarning and the filters on exit
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(2):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    flush()
    return "\n\n".join(f"x{n}: {k}" for k, n in sorted(seen.items(), key=lambda kv: -kv[1])) or "no syncs\n"


if __name__ == "__main__":
    raise SystemExit(main())
