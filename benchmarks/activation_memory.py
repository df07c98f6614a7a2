"""Training memory per shape and setting, measured, against `cptrain inspect-model`'s estimate.

    python3 benchmarks/activation_memory.py --budget-s 540

Each case is `cptrain run recipes/bench-llama3.2-1b.toml` (compile on, fused CE, attention auto, one GPU,
bf16 weights + AdamW states) with a preset's shape cut to L layers, in its own subprocess, for a few
steps; its peak is torch's max_memory_allocated over the run (metrics.jsonl `peak_mem_gib`). Two depths
per setting separate what each block holds (the slope, per layer and per token) from what the rest holds
(embeddings, the loss chunk, the states of the parameters outside the blocks). "rest of peak" is the peak
minus the parameters' bytes (8 per parameter: bf16 weight, gradient and the two AdamW states), so it is
the activations and whatever else the step holds at its peak (at a peak inside the backward some
gradients do not exist yet, so it can read low). The estimate columns are models/inspect.memory_estimate's
for the same shape, depth and length: its activations plus the same 8 bytes per parameter, against the peak.
Writes benchmarks/results/<date>-<device>-activation-memory.md and .json (and into $OUT when set).

    python3 benchmarks/activation_memory.py --rescore results/DATE-DEVICE-activation-memory.json

recomputes the estimate columns of measured rows with this checkout's estimate (rows and device kept) and
rewrites that file's .md and .json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import harness
from peers import cptrain_peer

from cptrain.models.inspect import memory_estimate
from cptrain.models.presets import count_parameters, get_preset

RECIPE = harness.REPO / "recipes" / "bench-llama3.2-1b.toml"
GIB = 2**30
BYTES_PER_PARAM = 8  # bf16 weight + bf16 gradient + two bf16 AdamW states (precision.master_dtype=bf16)

# (preset, layers, seq_len, activation_checkpointing, tiled_mlp); pairs of depths, most useful first
CASES = [
    ("llama3.2-1b", 2, 8192, "none", "off"), ("llama3.2-1b", 4, 8192, "none", "off"),
    ("llama3.1-8b", 2, 8192, "none", "off"), ("llama3.1-8b", 4, 8192, "none", "off"),
    ("qwen2.5-7b", 2, 8192, "none", "off"), ("qwen2.5-7b", 4, 8192, "none", "off"),
    ("llama3.2-1b", 2, 8192, "full", "off"), ("llama3.2-1b", 4, 8192, "full", "off"),
    ("llama3.1-8b", 2, 8192, "full", "off"), ("llama3.1-8b", 4, 8192, "full", "off"),
    ("llama3.2-1b", 2, 32768, "none", "off"), ("llama3.2-1b", 4, 32768, "none", "off"),
    ("llama3.2-1b", 2, 131072, "full", "auto"), ("llama3.2-1b", 4, 131072, "full", "auto"),
    ("llama3.2-1b", 2, 131072, "full", "off"), ("llama3.2-1b", 4, 131072, "full", "off"),
]


def case_name(case: tuple) -> str:
    preset, layers, seq, ac, tiled = case
    return f"{preset}-L{layers}-{seq // 1024}k-ac{ac}" + (f"-tiled{tiled}" if tiled != "off" else "")


def estimate(case: tuple) -> dict:
    preset, layers, seq, ac, tiled = case
    args = get_preset(preset).replace(n_layers=layers)
    est = memory_estimate(args, seq, 1)
    key = "activations_no_ckpt" if ac == "none" else (
        "activations_full_ckpt_tiled" if tiled != "off" and est["activations_full_ckpt_tiled"] is not None
        else "activations_full_ckpt")
    params = count_parameters(args)["total"]
    return {"params": params, "estimate_gib": est[key],
            "estimate_peak_gib": est[key] + BYTES_PER_PARAM * params / GIB}


def run_case(case: tuple, ns, work: Path) -> dict:
    preset, layers, seq, ac, tiled = case
    name = case_name(case)
    run_dir = work / name
    overrides = [f"model.preset={preset}", "model.init=random", f"model.overrides.n_layers={layers}",
                 f"train.seq_len={seq}", "train.micro_batch_size=1", f"model.activation_checkpointing={ac}",
                 f"model.tiled_mlp={tiled}", "precision.master_dtype=bf16", *ns.extra]
    cmd = cptrain_peer.command(RECIPE, run_dir, ns.steps, 1, overrides)
    t0 = time.monotonic()
    rc, tail = harness.run_logged(cmd, work / f"{name}.log", ns.timeout_s, env=harness.peer_env())
    row = {"case": name, "preset": preset, "layers": layers, "seq_len": seq, "ac": ac, "tiled_mlp": tiled,
           "rc": rc, "wall_s": round(time.monotonic() - t0, 1), "command": shlex.join(cmd), **estimate(case)}
    row.update(cptrain_peer.parse_metrics(run_dir, 1))
    if rc:
        row["status"] = "oom" if "OutOfMemoryError" in tail else "error"
        row["error"] = tail.strip().splitlines()[-1][:300] if tail.strip() else f"exit {rc}"
    if row.get("peak_mem_gib") is not None:
        row["rest_gib"] = row["peak_mem_gib"] - BYTES_PER_PARAM * row["params"] / GIB
    return row


def slopes(rows: list[dict]) -> list[dict]:
    """Per setting with both depths measured: bytes per layer per token, and the depth-independent rest."""
    out = []
    by_setting: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r.get("rest_gib") is not None:
            by_setting.setdefault((r["preset"], r["seq_len"], r["ac"], r["tiled_mlp"]), {})[r["layers"]] = r
    for (preset, seq, ac, tiled), depths in by_setting.items():
        if len(depths) < 2:
            continue
        (l1, a), (l2, b) = sorted(depths.items())[:2]
        per_layer = (b["rest_gib"] - a["rest_gib"]) / (l2 - l1)
        est_per_layer = (b["estimate_gib"] - a["estimate_gib"]) / (l2 - l1)
        out.append({"preset": preset, "seq_len": seq, "ac": ac, "tiled_mlp": tiled,
                    "per_layer_gib": per_layer, "bytes_per_layer_token": per_layer * GIB / seq,
                    "rest_at_0_layers_gib": a["rest_gib"] - l1 * per_layer,
                    "estimate_per_layer_gib": est_per_layer})
    return out


def tables(rows: list[dict]) -> str:
    body = [[r["case"], harness.fmt(r["params"] / 1e9, ".2f"), harness.fmt(r.get("peak_mem_gib"), ".2f"),
             harness.fmt(r.get("rest_gib"), ".2f"), harness.fmt(r["estimate_gib"], ".2f"),
             harness.fmt(r["estimate_peak_gib"], ".2f"),
             harness.fmt(r["estimate_peak_gib"] / r["peak_mem_gib"] if r.get("peak_mem_gib") else None, ".2f"),
             r.get("status", "?")] for r in rows]
    text = harness.markdown_table(["case", "params (B)", "peak GiB", "rest of peak GiB", "estimate: activations GiB",
                                   "estimate: peak GiB", "estimate / peak", "status"], body)
    fit = [[s["preset"], str(s["seq_len"]), s["ac"], s["tiled_mlp"], harness.fmt(s["per_layer_gib"], ".3f"),
            harness.fmt(s["bytes_per_layer_token"], ",.0f"), harness.fmt(s["rest_at_0_layers_gib"], ".2f"),
            harness.fmt(s["estimate_per_layer_gib"], ".3f")] for s in slopes(rows)]
    if fit:
        text += "\nPer block (difference of the two depths) and the rest extrapolated to 0 blocks:\n\n"
        text += harness.markdown_table(["preset", "seq", "AC", "tiled", "GiB per layer", "bytes per layer-token",
                                        "rest at 0 layers GiB", "estimate GiB per layer"], fit)
    return text


def rescore(path: Path) -> int:
    """The measured rows of an earlier run against this checkout's estimate. The .md keeps its date, device
    and versions; its command line gains the rescoring, its tables are rewritten; the .json gets the rows."""
    data = json.loads(path.read_text())
    cases = {case_name(c): c for c in CASES}
    rows = [{**r, **estimate(cases[r["case"]])} for r in data["rows"] if r["case"] in cases]
    data["rows"] = rows
    data["rescored_with"] = shlex.join(["python3", "benchmarks/activation_memory.py", *sys.argv[1:]])
    path.write_text(json.dumps(data, indent=2) + "\n")
    md = path.with_suffix(".md")
    head = md.read_text().split("\n| case |")[0].rstrip("\n")
    if "estimates recomputed" not in head:
        head += f"\n- estimates recomputed after the run by this checkout's code: `{data['rescored_with']}`"
    md.write_text(f"{head}\n\n{tables(rows)}")
    print(f"rescored {len(rows)} rows: {md}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated case names (default: all, in order)")
    p.add_argument("--steps", type=int, default=4, help="steps per run (the first is not read)")
    p.add_argument("--budget-s", type=float, default=540, help="stop starting cases after this many seconds")
    p.add_argument("--timeout-s", type=float, default=240, help="per-case limit")
    p.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every case")
    p.add_argument("--work", type=Path, default=harness.REPO / "runs" / "activation-memory")
    p.add_argument("--rescore", type=Path, help="a results .json: recompute its estimates, rewrite it, run nothing")
    ns = p.parse_args()
    if ns.rescore:
        return rescore(ns.rescore)
    unknown = sorted(set(ns.only.split(",")) - {case_name(c) for c in CASES}) if ns.only else []
    if unknown:  # a typo would silently measure fewer cases
        p.error(f"--only: unknown case {', '.join(unknown)}; the cases are {', '.join(case_name(c) for c in CASES)}")
    cases = CASES if not ns.only else [c for c in CASES if case_name(c) in ns.only.split(",")]
    ns.work.mkdir(parents=True, exist_ok=True)
    info = harness.device_info()
    command = shlex.join(["python3", "benchmarks/activation_memory.py", *sys.argv[1:]])
    start, rows = time.monotonic(), []
    for case in cases:
        if time.monotonic() - start > ns.budget_s:
            rows.append({"case": case_name(case), **estimate(case), "status": "skipped (time budget)"})
            continue
        rows.append(run_case(case, ns, ns.work))
        print(f"{rows[-1]['case']}: peak {rows[-1].get('peak_mem_gib')} GiB ({rows[-1].get('status')})",
              flush=True)
        harness.write_results("activation-memory", "Training memory against inspect-model's estimate",
                              tables(rows), rows, info, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
