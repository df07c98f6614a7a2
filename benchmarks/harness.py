"""Shared benchmark helpers: device and versions, subprocess peers, step timing, result files.

A benchmark script answers one question: it runs each variant in its own subprocess (an OOM or a
crash loses one row, not the table), then `write_results` writes
`benchmarks/results/<YYYY-MM-DD>-<device-slug>-<question>.md` and `.json` beside it, and copies
both (and the run log) into `$OUT` when that is set. The parent never touches CUDA itself, so every
variant starts with the whole GPU.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GIB = 1024**3

_PROBE = r"""
import json, platform, importlib.metadata as md
info = {"python": platform.python_version()}
for name in ("torch", "triton", "transformers", "liger-kernel", "torchtitan", "datasets", "flash-attn-4",
             "nvidia-cutlass-dsl"):
    try:
        info[name] = md.version(name)
    except md.PackageNotFoundError:
        info[name] = None
import torch
info["cuda"] = torch.version.cuda
info["gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
info["device_name"] = torch.cuda.get_device_name(0) if info["gpus"] else "cpu"
if info["gpus"]:
    info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)
print(json.dumps(info))
"""


def device_info() -> dict:
    """Device name, GPU count and package versions, read in a subprocess (keeps CUDA out of the parent)."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=peer_env(),
                         check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    return info


def device_slug(info: dict) -> str:
    """'1xh100', '2xh200', 'cpu': short, file-name safe."""
    if not info.get("gpus"):
        return "cpu"
    name = info["device_name"].upper()
    model = next((m for m in ("GH200", "H200", "H100", "B200", "A100") if m in name), None)
    model = model.lower() if model else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{info['gpus']}x{model}"


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for peer subprocesses: the repo's src on PYTHONPATH, offline HF, expandable segments."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO / "src") not in paths:
        paths.append(str(REPO / "src"))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def run_logged(cmd: list[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None,
               cwd: Path = REPO) -> tuple[int, str]:
    """Run `cmd`, appending its output to `log_path` and echoing it; returns (rc, last 3000 chars).

    rc is 124 when the command ran past `timeout_s` (its whole process group is killed).
    """
    tail: list[str] = []
    with log_path.open("a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env or peer_env(), cwd=cwd, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(line)
                tail.append(line)
                del tail[:-200]

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the peer and every process it started
            proc.wait()
            rc = 124
        reader.join(timeout=10)
        if rc == 124:
            log.write(f"\n[harness] killed after {timeout_s:.0f} s\n")
        sys.stdout.flush()
    return rc, "".join(tail)[-3000:]


def time_steps(step: Callable[[], float], warmup: int, steps: int, sync: Callable[[], None]) -> tuple[
        list[float], list[float]]:
    """Run warmup + timed steps; returns (seconds per timed step, losses). `step` returns the loss."""
    for _ in range(warmup):
        step()
    sync()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    return times, losses


def kernel_stats(once: Callable[[], object], repeats: int) -> dict[str, dict[str, float]]:
    """Per kernel name (first 80 characters), largest first: launches and ms of device time per call of `once`,
    from the profiler's kernel durations over `repeats` calls, so the host's launch speed does not count (in the
    model the host runs far ahead of the device). Call after warming `once` up; CUDA only."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            once()
        torch.cuda.synchronize()
    kernels: dict[str, dict[str, float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels.setdefault(e.name[:80], {"calls": 0.0, "ms": 0.0})
            k["calls"] += 1 / repeats
            k["ms"] += e.device_time / 1e3 / repeats
    return dict(sorted(kernels.items(), key=lambda kv: -kv[1]["ms"]))


def kernel_ms(once: Callable[[], object], repeats: int) -> dict[str, float]:
    """ms of device time per call of `once`, by kernel name, largest first (`kernel_stats` without the counts)."""
    return {name: k["ms"] for name, k in kernel_stats(once, repeats).items()}


def cuda_event_ms(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """ms of each of `repeats` calls of fn() between CUDA events, after `warmup` untimed ones."""
    import torch

    times = []
    for i in range(warmup + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return times


def require_cuda() -> None:
    """One line and exit status 2, not an assertion from deep inside torch, when a GPU-only benchmark is started
    on a machine without a CUDA GPU (its --help still works there)."""
    import torch

    if not torch.cuda.is_available():
        print(f"{Path(sys.argv[0]).name}: needs a CUDA GPU, and torch {torch.__version__} sees none here; "
              "benchmarks/README.md has the GPU commands", file=sys.stderr)
        sys.exit(2)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that reproduces a run of benchmarks/`script`: its arguments `argv`, else sys.argv's."""
    return shlex.join(["python3", f"benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def write_and_show(question: str, title: str, table_md: str, rows: list[dict], info: dict, command: str,
                   notes: str = "", log_path: Path | None = None, results_dir: Path = RESULTS) -> list[Path]:
    """`write_results`, then print the table, the notes and where they went."""
    paths = write_results(question, title, table_md, rows, info, command, notes, log_path, results_dir)
    print("\n" + table_md + notes + "\nwrote " + ", ".join(str(p) for p in paths), flush=True)
    return paths


def write_results(question: str, title: str, table_md: str, rows: list[dict], info: dict, command: str,
                  notes: str = "", log_path: Path | None = None, results_dir: Path = RESULTS) -> list[Path]:
    """Write the dated .md and .json (and copy them plus the log into $OUT); returns the paths written."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.date.today().isoformat()}-{device_slug(info)}-{question}"
    md_path, json_path = results_dir / f"{stem}.md", results_dir / f"{stem}.json"
    versions = ", ".join(f"{k} {info.get(k)}" for k in ("torch", "triton", "transformers", "liger-kernel",
                                                        "torchtitan", "flash-attn-4", "nvidia-cutlass-dsl",
                                                        "python") if info.get(k))
    device = f"{info.get('gpus', 0)} x {info.get('device_name')}"
    if info.get("gpu_mem_gib"):
        device += f" ({info['gpu_mem_gib']} GiB)"
    text = (f"# {title}\n\n"
            f"- date: {datetime.date.today().isoformat()}\n"
            f"- device: {device}, driver {info.get('driver')}, CUDA {info.get('cuda')}\n"
            f"- versions: {versions}\n"
            f"- command: `{command}`\n\n"
            f"{table_md}\n"
            + (f"\n{notes}\n" if notes else ""))
    md_path.write_text(text)
    json_path.write_text(json.dumps({"question": question, "title": title, "device": info,
                                     "command": command, "rows": rows}, indent=2) + "\n")
    written = [md_path, json_path]
    out = os.environ.get("OUT")
    if out:
        for path in [md_path, json_path] + ([log_path] if log_path and log_path.exists() else []):
            if (Path(out) / path.name).resolve() != path.resolve():  # --results-dir may be $OUT itself
                shutil.copy(path, Path(out) / path.name)
    return written


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def stdlib_texts():
    """The text of each readable .py file of this Python's standard library, in a fixed order."""
    from cptrain.data.sources import stdlib_files

    root, rels = stdlib_files()
    for rel in rels:
        try:
            yield (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def write_stdlib_jsonl(out_dir: Path, max_bytes: int = 16 * 2**20) -> Path:
    """A jsonl of {"text": ...} documents made of this Python's standard library sources (no download)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "stdlib.jsonl"
    total = 0
    with path.open("w") as f:
        for text in stdlib_texts():
            if len(text) < 200:
                continue
            f.write(json.dumps({"text": text}) + "\n")
            total += len(text)
            if total >= max_bytes:
                break
    return path
