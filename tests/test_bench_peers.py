"""CPU checks of the benchmark peers: the HF loop trains a tiny shape; the log and metrics readers."""

import importlib
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
cptrain_peer = importlib.import_module("peers.cptrain_peer")
hf_loop = importlib.import_module("peers.hf_loop")
torchtitan_peer = importlib.import_module("peers.torchtitan_peer")


@pytest.mark.parametrize("gc", [False, True])
def test_hf_loop_trains_a_tiny_shape_on_cpu(tmp_path, gc):
    out = tmp_path / "r.json"
    argv = ["--shape", "debug", "--seq-len", "32", "--warmup", "1", "--steps", "2", "--device", "cpu",
            "--result", str(out)] + ["--gc"] * gc
    assert hf_loop.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["gc"] is gc
    assert len(result["step_times_s"]) == 2 and all(math.isfinite(x) for x in result["losses"])
    assert result["tokens_per_s"] == pytest.approx(32 / statistics.median(result["step_times_s"]))


def test_torchtitan_log_reader_skips_warmup():
    # the line format of torchtitan 0.2.2's MetricsProcessor.log, color codes on
    lines = [f"[rank0]:[titan] 2026-11-22 10:00:0{s},000 - root - INFO - \x1b[31mstep: {s:2}  "
             f"\x1b[32mloss: 11.9  \x1b[33mgrad_norm:  1.2  \x1b[34mmemory: {60 + s:5.2f}GiB(75.00%)  "
             f"\x1b[34mtps: {tps:,}"
             f"  \x1b[36mtflops: 300.00  \x1b[35mmfu: {mfu:.2f}%\x1b[39m"
             for s, tps, mfu in [(1, 1_000, 1.0), (2, 40_000, 40.0), (3, 42_000, 42.0), (4, 44_000, 44.0)]]
    result = torchtitan_peer.parse_log("\n".join(lines), warmup=1)
    assert result["tokens_per_s_per_gpu"] == 42_000 and result["steps_timed"] == 3
    assert result["peak_mem_gib"] == 64.0 and result["torchtitan_mfu"] == pytest.approx(0.42)
    assert torchtitan_peer.parse_log("\n".join(lines), warmup=4)["status"] == "error"


def test_cptrain_metrics_reader(tmp_path):
    records = [{"step": s, "loss": 10.0 - s, "tokens_per_s": 1000.0 * s, "tokens_per_s_per_gpu": 500.0 * s,
                "mfu": 0.1 * s, "peak_mem_gib": 20.0 + s, "data_wait_frac": 0.01} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    resolved = '[model]\nactivation_checkpointing = "full"\ncompile = true\n'
    (tmp_path / "config.resolved.toml").write_text(resolved)
    result = cptrain_peer.parse_metrics(tmp_path, warmup=2)
    assert result["tokens_per_s"] == 4000.0 and result["tokens_per_s_per_gpu"] == 2000.0
    assert result["peak_mem_gib"] == 25.0 and result["steps_timed"] == 3
    assert cptrain_peer.setting_of(tmp_path) == {"activation_checkpointing": "full", "compile": True}
    assert cptrain_peer.parse_metrics(tmp_path / "missing", warmup=0)["status"] == "error"


def test_cptrain_setting_names_the_fsdp_options(tmp_path):
    """Q2's extra cptrain rows must say which FSDP options they ran with; defaults add nothing."""
    resolved = ('[model]\nactivation_checkpointing = "none"\ncompile = true\n'
                '[parallel]\nreshard_after_forward = false\n[precision]\nreduce_dtype = "bf16"\n'
                'master_dtype = "bf16"\n')
    (tmp_path / "config.resolved.toml").write_text(resolved)
    label = cptrain_peer.describe(cptrain_peer.setting_of(tmp_path))
    assert label.endswith("no reshard after forward, bf16 reduce-scatter, bf16 weights + AdamW states"), label
    defaults = cptrain_peer.describe({"activation_checkpointing": "none", "compile": True,
                                      "reshard_after_forward": True, "reduce_dtype": "fp32",
                                      "master_dtype": "fp32"})
    assert "reshard" not in defaults and "reduce" not in defaults and "bf16" not in defaults


def test_cptrain_setting_names_the_kernels_the_run_used(tmp_path):
    """The run's summary says which attention and AdamW kernels ran; the table label carries both."""
    (tmp_path / "config.resolved.toml").write_text('[model]\nactivation_checkpointing = "none"\n')
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "summary.json").write_text(json.dumps(
        {"attention": "varlen (FlashAttention 4)", "optimizer": "AdamW (Triton, cptrain)"}))
    label = cptrain_peer.describe(cptrain_peer.setting_of(tmp_path))
    assert label.endswith("FlashAttention 4 varlen, AdamW (Triton, cptrain)"), label
