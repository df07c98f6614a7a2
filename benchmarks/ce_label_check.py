"""What does the fused cross-entropy's label-range check cost per training step?

    python3 benchmarks/ce_label_check.py            # llama3.2-1b's CE at T = 8192 (question 1's shape)
    python3 benchmarks/ce_label_check.py --tokens 8192 --hidden 4096 --vocab 128256

`ops/chunked_ce.py` checks that every label is in [0, vocab) or ignore_index; on CUDA with a device-side
`torch._assert_async` (no host sync). This measures its device time (profiler kernel durations, so the
host's launch speed does not count: in the trainer the host runs ~50 ms ahead of the device) against the
whole CE forward + backward it guards, and its host time per call (CUDA events can't see host time).
Writes benchmarks/results/<date>-<device>-ce-label-check.md and .json (and into $OUT when set).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import harness
import torch

from cptrain.models.decoder import IGNORE_INDEX
from cptrain.ops.chunked_ce import _check_label_range, linear_cross_entropy


def host_ms(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--step-ms", type=float, default=131.8, help="the training step's device time to compare "
                    "with (question 1's profiled step: results/2026-11-23-1xh100-profile-q1-norm.md)")
    ns = ap.parse_args()
    harness.require_cuda()
    dev = "cuda"
    hidden = torch.randn(ns.tokens, ns.hidden, device=dev, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(ns.vocab, ns.hidden, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    labels = torch.randint(0, min(ns.vocab, 49152), (ns.tokens,), device=dev)
    labels[::37] = IGNORE_INDEX

    def check():
        _check_label_range(labels, labels != IGNORE_INDEX, ns.vocab, IGNORE_INDEX)

    def ce():
        linear_cross_entropy(hidden, weight, labels).backward()

    for _ in range(3):
        check(), ce()
    torch.cuda.synchronize()
    check_k = harness.kernel_ms(check, ns.repeats)
    ce_k = harness.kernel_ms(ce, ns.repeats)
    rows = [{"what": "label check (valid mask + range test + assert)", "device_ms": sum(check_k.values()),
             "host_ms": host_ms(check, ns.repeats), "kernels": check_k},
            {"what": "whole CE forward + backward (check included)", "device_ms": sum(ce_k.values()),
             "host_ms": host_ms(ce, ns.repeats), "kernels": dict(list(ce_k.items())[:8])}]
    body = [[r["what"], f"{r['device_ms']:.4f}", f"{100 * r['device_ms'] / ns.step_ms:.3f}%", f"{r['host_ms']:.3f}"]
            for r in rows]
    table = harness.markdown_table(["what", "device ms", f"of a {ns.step_ms} ms step", "host ms per call"], body)
    share = rows[0]["device_ms"] / rows[1]["device_ms"]
    notes = (f"Shape: T = {ns.tokens}, H = {ns.hidden}, V = {ns.vocab}, bf16; {ns.repeats} calls profiled. "
             f"The check is {100 * share:.2f}% of the CE's device time. Check kernels: "
             + ", ".join(f"{k} {v * 1e3:.1f} us" for k, v in check_k.items()))
    info = harness.device_info()
    command = "python3 benchmarks/ce_label_check.py " + shlex.join(sys.argv[1:])
    print(table + "\n" + notes)
    harness.write_results("ce-label-check", "Fused CE: cost of the label-range check", table, rows, info,
                          command.strip(), notes)


if __name__ == "__main__":
    main()
