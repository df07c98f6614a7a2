"""Training throughput of cptrain against its peers, batch 1 x seq_len per GPU, random init.

    python3 benchmarks/throughput.py --question 1   # llama3.2-1b, 1 GPU, seq 8192
    python3 benchmarks/throughput.py --question 2   # llama3.1-8b, all GPUs (FSDP), seq 8192

Peers: hf (transformers loop: SDPA, fused AdamW, bf16 weights), hf-liger (the same + Liger kernels),
torchtitan (0.2.2), cptrain (`cptrain run RECIPE`). Each variant runs in its own subprocess, most
important first, inside a wall-clock budget; what does not fit is listed as skipped. Writes
benchmarks/results/<date>-<device>-throughput-q<N>.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
import tomllib
from peers import cptrain_peer, torchtitan_peer

from cptrain.flops import flops_per_token, peak_bf16_flops
from cptrain.models.presets import PRESETS, get_preset

HF_LOOP = Path(__file__).resolve().parent / "peers" / "hf_loop.py"
RECIPES = harness.REPO / "recipes"
PEERS = ("cptrain", "hf", "hf-liger", "torchtitan")
QUESTIONS = {
    1: {"shape": "llama3.2-1b", "seq_len": 8192, "budget_s": 500, "goal": 1.3,
        "title": "Q1: training throughput, llama3.2-1b shape, 1 GPU, batch 1 x 8192"},
    2: {"shape": "llama3.1-8b", "seq_len": 8192, "budget_s": 520, "goal": 1.2,
        "title": "Q2: training throughput, llama3.1-8b shape, all GPUs, batch 1 x 8192 per GPU"},
}
AC_LABEL = {"none": "no AC", "selective": "selective AC", "full": "full AC"}


@dataclass
class Variant:
    peer: str  # hf | hf-liger | torchtitan | cptrain
    name: str  # file-name slug: its log, result JSON, run folder
    setting: str  # what a reader needs, e.g. "GC on", "selective AC + compile"
    recompute: bool  # recomputes activations in backward (GC, selective or full AC)
    gpus: int
    est_s: int  # rough wall time, for the budget
    cmd: list[str] = field(default_factory=list)  # empty: cannot run here (see `why_not`)
    why_not: str = ""

    def row(self) -> dict:
        return {"peer": self.peer, "setting": self.setting, "recompute": self.recompute, "gpus": self.gpus,
                "command": shlex.join(self.cmd)}


def plan(q: int, ns: argparse.Namespace, n_gpus: int, work: Path) -> list[Variant]:
    """Question q's variants, most important first: each peer's expected best, then the rest."""
    shape, seq, steps, big = ns.shape, ns.seq_len, ns.warmup + ns.steps, q == 2
    recipe_ac = _recipe_ac(ns.recipe)

    def hf(liger: bool, gc: bool) -> Variant:
        peer = "hf-liger" if liger else "hf"
        setting = ("GC on" if gc else "no GC") + ", bf16 weights + AdamW states"
        v = Variant(peer, f"{peer}-gc{int(gc)}", setting, gc, 1, 80 if big else 45)
        v.cmd = [sys.executable, str(HF_LOOP), "--shape", shape, "--seq-len", str(seq), "--warmup",
                 str(ns.warmup), "--steps", str(ns.steps), "--result", str(work / f"{v.name}.json")]
        v.cmd += ["--liger"] * liger + ["--gc"] * gc
        return v

    def titan(ac: str, compile: bool) -> Variant:
        where = "FSDP" if n_gpus > 1 else "fp32 weights + bf16 autocast"
        est = (130 if big else 60) if compile else (90 if big else 45)
        v = Variant("torchtitan", f"torchtitan-{ac}-c{int(compile)}",
                    f"{AC_LABEL[ac]}{' + compile' * compile}, {where}", ac != "none", n_gpus, est)
        if shape not in torchtitan_peer.FLAVORS:
            v.why_not = f"no torchtitan flavor for shape {shape}"
        elif not ns.has_gpu:
            v.why_not = "torchtitan needs a GPU"
        else:
            v.cmd = torchtitan_peer.command(shape, n_gpus, ac, compile, steps, seq, data_dir=work / "data",
                                            dump_dir=work / v.name)
        return v

    def cpt(ac: str | None, extra: tuple[str, ...] = (), slug: str = "", env: tuple[str, ...] = (),
            gpus: int | None = None) -> Variant:
        setting = f"recipe{f', AC {ac}' if ac else ''}" + "".join(f", {e}" for e in env)
        gpus = gpus or n_gpus
        v = Variant("cptrain", f"cptrain-{ac or 'recipe'}{slug}", setting, (ac or recipe_ac) != "none", gpus,
                    100 if big else 60)
        overrides = [f"model.preset={shape}", "model.init=random", f"train.seq_len={seq}",
                     "train.micro_batch_size=1", *extra] + ([f"model.activation_checkpointing={ac}"] if ac else [])
        if ns.recipe.exists():
            v.cmd = cptrain_peer.command(ns.recipe, work / v.name, steps, gpus, overrides)
            v.cmd = ["env", *env, *v.cmd] if env else v.cmd
        else:
            v.why_not = f"recipe {ns.recipe} not found"
        return v

    other_ac = "full" if recipe_ac == "none" else "none"
    bf16w = ("precision.master_dtype=bf16",)  # HF+Liger's best setting: bf16 weights and AdamW states
    if q == 1:
        order = [cpt(None, bf16w, "-bf16w"), hf(True, False), titan("none", True),
                 # the AdamW and the attention cptrain ran before TritonAdamW / flash-attn-4, in the same command
                 cpt(None, bf16w + ("optim.fused=on",), "-bf16w-torchadamw"),
                 cpt(None, bf16w, "-bf16w-noflash4", env=("CPTRAIN_FLASH4=0",)), cpt(None), hf(False, False), cpt(other_ac),
                 hf(True, True), hf(False, True), titan("selective", False), titan("selective", True)]
    else:
        # 8B on H200 (141 GB): states and activations without recomputation fit, so each peer's likely best
        # is its no-recompute setting; the reference settings (GC / selective AC) follow as time allows
        keep_rs = ("parallel.reshard_after_forward=false", "precision.reduce_dtype=bf16")
        # one GPU of the machine, no FSDP2 (HF+Liger's own setting; its states fit in 141 GB): per GPU it
        # skips the collectives, and on 1 x H200 it ran 7% above the 2-GPU FSDP2 rate
        one_gpu = [cpt(None, bf16w, "-1gpu-bf16w", gpus=1)] if n_gpus > 1 else []
        order = [cpt(None, keep_rs + bf16w, "-keep-bf16rs-bf16w"), hf(True, False), *one_gpu, titan("none", True),
                 cpt(None, keep_rs + bf16w + ("optim.fused=on",), "-keep-bf16rs-bf16w-torchadamw"),
                 cpt(None, keep_rs, "-keep-bf16rs"), cpt(None), titan("selective", True), hf(True, True),
                 cpt(other_ac), titan("selective", False), hf(False, True)]
    return [v for v in order if v.peer in ns.peers]


def _recipe_ac(recipe: Path) -> str:
    if not recipe.exists():
        return "none"
    return tomllib.loads(recipe.read_text()).get("model", {}).get("activation_checkpointing", "none")


def run_variant(v: Variant, ns: argparse.Namespace, work: Path, timeout_s: float) -> dict:
    """Run one variant; its row, whatever happened (ok, oom, error, timeout)."""
    row = v.row()
    log = work / f"{v.name}.log"
    t0 = time.monotonic()
    rc, tail = harness.run_logged(v.cmd, log, timeout_s)
    row["wall_s"] = round(time.monotonic() - t0, 1)
    if v.peer in ("hf", "hf-liger"):
        path = work / f"{v.name}.json"
        result = json.loads(path.read_text()) if path.exists() else {"status": "error"}
        result = {k: val for k, val in result.items() if k not in ("liger", "gc", "shape", "batch")}
    elif v.peer == "torchtitan":
        result = torchtitan_peer.parse_log(log.read_text(), ns.warmup)
        if result["status"] == "ok":
            result["tokens_per_s"] = result["tokens_per_s_per_gpu"] * v.gpus
    else:
        result = cptrain_peer.parse_metrics(work / v.name, ns.warmup)
        setting = cptrain_peer.setting_of(work / v.name)
        if setting:
            row["recompute"] = setting.get("activation_checkpointing", "none") != "none"
            row["setting"] = cptrain_peer.describe(setting)
    if rc == 124:
        result = {"status": "timeout", "error": f"killed after {timeout_s:.0f} s"}
    elif rc and not (v.peer.startswith("hf") and result.get("status") in ("oom", "error")):
        oom = "OutOfMemoryError" in tail or "CUDA out of memory" in tail
        result = {"status": "oom" if oom else "error", "error": f"exit {rc}: {_error_line(tail)}"}
    return {**row, **result}


def _error_line(tail: str) -> str:
    """The most telling line of a failed run's output: its last exception line, else its last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines
              if re.search(r"\w+(Error|Exception)\b:", line) and "ChildFailedError" not in line]
    return (errors or lines or ["no output"])[-1][:300]


def add_mfu(row: dict, shape: str, seq_len: int, device_name: str) -> None:
    """Peers run plain causal attention over the whole row: MFU with one seq_len-long document per row.
    cptrain reports its own MFU, over its real document lengths (cptrain.flops)."""
    peak = peak_bf16_flops(device_name)
    if row.get("mfu") is None and row.get("tokens_per_s_per_gpu") and peak:
        row["mfu"] = flops_per_token(get_preset(shape), seq_len) * row["tokens_per_s_per_gpu"] / peak


def results_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        status = r["status"] + (f" ({r['error']})" if r.get("error") and r["status"] != "ok" else "")
        mfu = 100 * r["mfu"] if r.get("mfu") else None
        body.append([r["peer"], r["setting"], "yes" if r["recompute"] else "no", str(r["gpus"]),
                     harness.fmt(r.get("tokens_per_s"), ",.0f"),
                     harness.fmt(r.get("tokens_per_s_per_gpu"), ",.0f"), harness.fmt(mfu, ".1f"),
                     harness.fmt(r.get("peak_mem_gib"), ".1f"), status.replace("|", "/")])
    header = ["peer", "setting", "recompute", "GPUs", "tokens/s", "tokens/s/GPU", "MFU %", "peak mem GiB",
              "status"]
    return harness.markdown_table(header, body)


def best_summary(rows: list[dict], goal: float) -> str:
    """Each peer at its best (tokens/s/GPU), then the same among settings that recompute activations."""
    lines = []
    for recompute_only in (False, True):
        best: dict[str, dict] = {}
        for r in rows:
            if r["status"] == "ok" and (r["recompute"] or not recompute_only):
                held = best.get(r["peer"])
                if held is None or r["tokens_per_s_per_gpu"] > held["tokens_per_s_per_gpu"]:
                    best[r["peer"]] = r
        if not best:
            continue
        lines.append(f"\n**Each at its best{' among settings that recompute activations' * recompute_only}** "
                     "(tokens/s/GPU):\n")
        for peer, r in sorted(best.items(), key=lambda kv: -kv[1]["tokens_per_s_per_gpu"]):
            lines.append(f"- {peer}: {r['tokens_per_s_per_gpu']:,.0f} ({r['setting']}; {r['gpus']} GPU)")
        top = max((r for p, r in best.items() if p != "cptrain"), key=lambda r: r["tokens_per_s_per_gpu"],
                  default=None)
        if top and "cptrain" in best:
            ratio = best["cptrain"]["tokens_per_s_per_gpu"] / top["tokens_per_s_per_gpu"]
            verdict = "for reference" if recompute_only else ("met" if ratio >= goal else "NOT met")
            lines.append(f"- cptrain / best peer ({top['peer']}): {ratio:.2f}x (goal {goal}x: {verdict})")
    return "\n".join(lines) + "\n"


NOTES = """
MFU: model FLOPs (cptrain.flops: 6 x every parameter but the input embedding, lm_head included, plus
causal attention) over the dense BF16 peak. Peers run plain causal attention over the whole row;
cptrain's MFU counts its real document lengths. Recomputation is not counted. Peak memory: torch max
allocated (hf, cptrain), max reserved (torchtitan's own log line). torchtitan's llama3 model does not
tie the lm_head to the embedding (1B: 1.50B parameters instead of 1.24B).
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--question", type=int, choices=sorted(QUESTIONS), required=True)
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--budget-s", type=float, help="wall-clock budget for all variants (default per question)")
    p.add_argument("--recipe", type=Path, help="cptrain recipe (default: recipes/bench-<shape>.toml if it "
                   "exists, else recipes/bench-llama3.2-1b.toml with model.preset set to the shape)")
    p.add_argument("--shape", help="another cptrain preset (smoke tests: debug)")
    p.add_argument("--seq-len", type=int, help="another sequence length")
    p.add_argument("--results-dir", type=Path, default=harness.RESULTS, help="where the .md and .json go")
    p.add_argument("--work-dir", type=Path, default=harness.REPO / "runs" / "bench",
                   help="where each run makes its work folder <question>-<time> (variant logs, run folders, "
                   "checkpoints; default: %(default)s)")
    ns = p.parse_args(argv)
    spec = QUESTIONS[ns.question]
    ns.shape, ns.seq_len = ns.shape or spec["shape"], ns.seq_len or spec["seq_len"]
    ns.peers = set(ns.peers.split(","))
    unknown = sorted(ns.peers - set(PEERS))
    if unknown:  # a typo would otherwise run nothing for that peer and still write a results table
        p.error(f"--peers: unknown {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    if ns.recipe is not None and not ns.recipe.is_file():
        p.error(f"--recipe {ns.recipe}: no such file")
    if ns.shape not in PRESETS:
        p.error(f"--shape {ns.shape}: not a cptrain preset; choose from {', '.join(sorted(PRESETS))}")
    if ns.recipe is None:
        own = RECIPES / f"bench-{ns.shape}.toml"
        ns.recipe = own if own.exists() else RECIPES / "bench-llama3.2-1b.toml"
    budget = ns.budget_s or spec["budget_s"]
    question = f"throughput-q{ns.question}"

    info = harness.device_info()
    ns.has_gpu = bool(info["gpus"])
    n_gpus = max(1, info["gpus"]) if ns.question == 2 else 1
    work = ns.work_dir.resolve() / f"{question}-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    variants = plan(ns.question, ns, n_gpus, work)
    if any(v.peer == "torchtitan" and v.cmd for v in variants):
        harness.write_stdlib_jsonl(work / "data")

    start, rows = time.monotonic(), []
    for v in variants:
        left = budget - (time.monotonic() - start)
        if not v.cmd or left < v.est_s:
            why = v.why_not or f"time budget: {left:.0f} s left, needs ~{v.est_s} s"
            rows.append({**v.row(), "status": "skipped", "error": why})
            continue
        print(f"\n[throughput] {v.name}: {v.setting} ({left:.0f} s of budget left)", flush=True)
        row = run_variant(v, ns, work, min(left, 3 * v.est_s + 60))
        add_mfu(row, ns.shape, ns.seq_len, info["device_name"])
        rows.append(row)

    log = work / f"{question}.log"  # every variant's log in run order, one file for $OUT
    log.write_text("".join(f"\n===== {v.name} =====\n" + (work / f"{v.name}.log").read_text()
                           for v in variants if (work / f"{v.name}.log").exists()))
    md, notes = results_table(rows), best_summary(rows, spec["goal"]) + NOTES
    command = harness.command_line(__file__, argv)
    title = spec["title"]
    if (ns.shape, ns.seq_len) != (spec["shape"], spec["seq_len"]):
        title += f" [run with shape {ns.shape}, seq {ns.seq_len}]"
    harness.write_and_show(question, title, md, rows, info, command, notes, log, ns.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
