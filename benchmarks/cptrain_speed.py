"""cptrain's own speed, variant against variant, on the question-1 shape (llama3.2-1b, 1 GPU, seq 8192).

    python3 benchmarks/cptrain_speed.py --base-src .bench-base/src --budget-s 380

Each variant is `cptrain run recipes/bench-llama3.2-1b.toml` (same overrides as throughput.py) in its own
subprocess, with extra `key=value` overrides and either this checkout's `src/` or an older copy
(`--base-src`, the code before a change: `git archive REV src | tar -x -C DIR`), so "before" and "after"
run on the same machine in one command. Profile variants run benchmarks/profile_step.py instead (a few
profiled steps: device busy/idle, idle gaps by host phase, device time by kernel family). Variants run in
order until the budget is spent; results are rewritten after each one, so a cut-off run keeps its rows.
Writes benchmarks/results/<date>-<device>-cptrain-speed.md/.json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import harness
from peers import cptrain_peer

RECIPE = harness.REPO / "recipes" / "bench-llama3.2-1b.toml"
SHAPE = ["model.preset=llama3.2-1b", "model.init=random", "train.seq_len=8192", "train.micro_batch_size=1"]

# (name, code: base | new, kind: run | profile, overrides, what it tests); most important first
VARIANTS = [
    ("base", "base", "run", [], "code before this change (FSDP2 on 1 rank, host syncs in the step)"),
    ("new", "new", "run", [], "sync-free step + lookahead data, no FSDP2 on 1 rank (the new default)"),
    ("profile-new", "new", "profile", [], "profile of new"),
    ("profile-base", "base", "profile", [], "profile of base"),
    ("new-fsdp", "new", "run", ["parallel.fsdp=always"], "sync-free step + lookahead data, FSDP2 on 1 rank"),
    ("new-w2", "new", "run", ["data.num_workers=2"], "new + 2 loader worker processes"),
    ("new-again", "new", "run", [], "repeat of new: run-to-run spread"),
    ("base-again", "base", "run", [], "repeat of base: run-to-run spread"),
    ("new-autotune", "new", "run", ["env:TORCHINDUCTOR_MAX_AUTOTUNE=1"],
     "new with inductor's max-autotune: Triton GEMM templates against cuBLAS per shape, epilogue fusion"),
    ("new-cdtune", "new", "run", ["env:TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1"],
     "new with inductor's coordinate-descent tuning of its pointwise/reduction kernels"),
    ("new-nomix", "new", "run", ["env:TORCHINDUCTOR_MIX_ORDER_REDUCTION=0"],
     "new without inductor's mix-order reductions (RMSNorm backward: d(x) and d(w) in separate kernels, no "
     "eager sum of d(w) partials)"),
    ("new-mixtune", "new", "run", ["env:TORCHINDUCTOR_MIX_ORDER_REDUCTION_AUTOTUNE_SPLIT_SIZE=1"],
     "new with the mix-order reductions' split size autotuned (default: 16 rows, 512 partials summed eagerly)"),
    ("mid", "mid", "run", [], "an intermediate version (--mid-src), to attribute one change"),
]


def run_one(name: str, code: str, kind: str, overrides: list[str], ns, work: Path) -> dict:
    src = {"base": ns.base_src, "mid": ns.mid_src}.get(code) or harness.REPO / "src"
    # the chosen src/ first; keep the rest of PYTHONPATH (the carried wheels) but never this checkout's src/
    rest = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x and Path(x) != harness.REPO / "src"]
    # "env:NAME=VALUE" overrides set an environment variable of the run instead of a config key
    env_vars = dict(o[4:].split("=", 1) for o in overrides if o.startswith("env:"))
    overrides = [o for o in overrides if not o.startswith("env:")]
    env = harness.peer_env({"PYTHONPATH": os.pathsep.join([str(src), str(harness.REPO / "benchmarks"), *rest]),
                            **env_vars})
    run_dir = work / name
    extra = [*SHAPE, *ns.extra, *overrides]
    if kind == "profile":
        cmd = [sys.executable, str(harness.REPO / "benchmarks" / "profile_step.py"), str(RECIPE),
               f"train.run_dir={run_dir}", *extra, "--warmup", "4", "--steps", "3", "--out", str(work),
               "--name", name]
    else:
        cmd = cptrain_peer.command(RECIPE, run_dir, ns.warmup + ns.steps, 1, extra)
    t0 = time.monotonic()
    rc, tail = harness.run_logged(cmd, work / f"{name}.log", ns.timeout_s, env=env)
    row = {"variant": name, "code": code, "kind": kind,
           "overrides": " ".join([*(f"{k}={v}" for k, v in env_vars.items()), *overrides]), "rc": rc,
           "wall_s": round(time.monotonic() - t0, 1), "command": shlex.join(cmd)}
    if kind == "profile":
        path = work / f"{name}-summary.json"
        row["profile"] = json.loads(path.read_text()) if path.exists() else None
        row["status"] = "ok" if rc == 0 and row["profile"] else "error"
        return row
    row.update(cptrain_peer.parse_metrics(run_dir, ns.warmup))
    if rc == 124:  # killed at --timeout-s: its numbers cover only the steps it reached
        row["status"] = f"timeout ({row.get('steps_timed', 0)} timed steps)"
    elif rc:
        row["status"] = "error"
        row["error"] = tail.strip().splitlines()[-1][:300] if tail.strip() else f"exit {rc}"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
               if x.strip()] if (run_dir / "metrics.jsonl").exists() else []
    timed = [r for r in records if "tokens_per_s" in r and r["step"] > ns.warmup]
    row["step_ms"] = [round(1000 * r["step_time_s"], 1) for r in timed]
    row["losses"] = [round(r["loss"], 4) for r in timed]
    if timed:
        row["step_ms_min"], row["step_ms_median"] = min(row["step_ms"]), statistics.median(row["step_ms"])
        tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
        row["mean_tokens_per_s"] = tokens / sum(r["step_time_s"] for r in timed)
    return row


def title(extra: list[str]) -> str:
    """The shape the runs had: SHAPE's, with --extra's own preset and sequence length where it gives them."""
    keys = dict(o.split("=", 1) for o in [*SHAPE, *extra] if "=" in o)
    text = f"cptrain speed: {keys['model.preset']} shape, 1 GPU, batch 1 x {keys['train.seq_len']}"
    others = [o for o in extra if o.split("=", 1)[0] not in ("model.preset", "train.seq_len")]
    return text + (f" ({', '.join(others)})" if others else "")


def table(rows: list[dict]) -> str:
    body = []
    base = next((r.get("tokens_per_s") for r in rows if r["variant"] == "base" and r.get("tokens_per_s")), None)
    for r in rows:
        if r["kind"] != "run":
            continue
        tps = r.get("tokens_per_s")
        body.append([r["variant"], r["code"], r["overrides"] or "-", harness.fmt(tps, ",.0f"),
                     harness.fmt(r.get("mean_tokens_per_s"), ",.0f"),
                     harness.fmt(tps / base if tps and base and r.get("status") == "ok" else None, ".2f"),
                     harness.fmt(r.get("step_ms_median"), ".1f"), harness.fmt(r.get("step_ms_min"), ".1f"),
                     harness.fmt(100 * r["mfu"] if r.get("mfu") else None, ".1f"),
                     harness.fmt(100 * r["data_wait_frac"] if r.get("data_wait_frac") is not None else None,
                                 ".1f"),
                     harness.fmt(r.get("peak_mem_gib"), ".1f"), r.get("status", "?")])
    header = ["variant", "code", "overrides", "tokens/s (median step)", "tokens/s (mean)", "x base",
              "step ms median", "step ms min", "MFU %", "data wait %", "peak GiB", "status"]
    return harness.markdown_table(header, body)


def profiles(rows: list[dict]) -> str:
    sys.path.insert(0, str(harness.REPO / "benchmarks"))
    from profile_step import text_report

    return "\n".join(text_report(r["profile"], r["variant"]) for r in rows
                     if r["kind"] == "profile" and r.get("profile"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-src", type=Path, required=True, help="src/ of the code to compare against")
    p.add_argument("--mid-src", type=Path, help="src/ of an intermediate version (variant 'mid')")
    p.add_argument("--only", help="comma-separated variant names, run in that order (default: all but mid)")
    p.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every variant (CPU smoke "
                   "runs: model.preset=debug train.seq_len=128 model.compile=false)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=380)
    p.add_argument("--timeout-s", type=float, default=150, help="per variant (the first one on a fresh machine "
                   "compiles with cold caches: ~90 s)")
    p.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    ns = p.parse_args()
    ns.base_src = ns.base_src.resolve()
    ns.mid_src = ns.mid_src.resolve() if ns.mid_src else None
    by_name = {v[0]: v for v in VARIANTS}
    unknown = sorted(set(ns.only.split(",")) - set(by_name)) if ns.only else []
    if unknown:
        p.error(f"--only: unknown variant {', '.join(unknown)}; choose from {', '.join(by_name)}")
    chosen = [by_name[n] for n in ns.only.split(",")] if ns.only else [v for v in VARIANTS if v[0] != "mid"]
    info = harness.device_info()
    work = harness.REPO / "runs" / "bench" / f"cptrain-speed-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python3", "benchmarks/cptrain_speed.py", *sys.argv[1:]])
    start, rows = time.monotonic(), []
    for name, code, kind, overrides, what in chosen:
        left = ns.budget_s - (time.monotonic() - start)
        if left < 45:
            rows.append({"variant": name, "code": code, "kind": kind, "overrides": " ".join(overrides),
                         "status": "skipped", "error": f"budget: {left:.0f} s left"})
            continue
        ns.timeout_s = min(ns.timeout_s, left)
        print(f"\n[speed] {name}: {what} ({left:.0f} s of budget left)", flush=True)
        row = run_one(name, code, kind, overrides, ns, work)
        row["what"] = what
        rows.append(row)
        log = work / "cptrain-speed.log"
        log.write_text("".join(f"\n===== {r['variant']} =====\n" + (work / f"{r['variant']}.log").read_text()
                               for r in rows if (work / f"{r['variant']}.log").exists()))
        notes = ("\nVariants: " + "; ".join(f"`{r['variant']}`: {r.get('what', '')}" for r in rows) + "\n\n"
                 + f"Timed: steps {ns.warmup + 1}-{ns.warmup + ns.steps} of each run (compile happens before); "
                 "tokens/s of the median step as in throughput.py, and over all timed steps.\n\n"
                 + profiles(rows))
        harness.write_results("cptrain-speed", title(ns.extra), table(rows), rows, info, command, notes, log,
                              ns.results_dir)
        print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
