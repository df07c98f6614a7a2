"""MinHash LSH arithmetic: the chance a pair is caught, and bands x rows chosen from a threshold.

With `bands` bands of `rows` hashes each, two documents whose shingle sets have Jaccard similarity J
share at least one band (and become a duplicate pair) with probability 1 - (1 - J**rows)**bands.
"""

from __future__ import annotations

# Defaults tuned on benchmarks/dedup_bench.py (see docs/dedup.md): 20 x 8 catches 97.5% of pairs at
# J = 0.8 while a pair at J = 0.5 is caught 7.5% of the time. datatrove's own default is 14 x 8.
DEFAULT_BANDS = 20
DEFAULT_ROWS = 8
# When only `minhash.threshold` is given: catch pairs at the threshold with at least this chance,
# using at most this many hashes per document (cost grows linearly with bands * rows).
TARGET_RECALL = 0.97
MAX_HASHES = 160


def pair_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that two documents with this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def s_curve_midpoint(bands: int, rows: int) -> float:
    """Similarity at which the LSH S-curve is steepest, about (1/bands)**(1/rows)."""
    return (1.0 / bands) ** (1.0 / rows)


def choose_bands_rows(threshold: float, max_hashes: int = MAX_HASHES) -> tuple[int, int]:
    """Bands x rows that catch pairs at `threshold` with >= TARGET_RECALL and the fewest far-below pairs.

    Among all (bands, rows) with bands * rows <= max_hashes, keep those with
    P(threshold) >= TARGET_RECALL and pick the one least likely to pair documents 0.25 below the
    threshold; when none reaches the target, take the one with the highest P(threshold).
    """
    below = max(threshold - 0.25, 0.0)
    best: tuple[float, int, int] | None = None
    fallback: tuple[float, int, int] = (-1.0, 1, 1)
    for rows in range(1, max_hashes + 1):
        for bands in range(1, max_hashes // rows + 1):
            p = pair_probability(threshold, bands, rows)
            if p > fallback[0]:
                fallback = (p, bands, rows)
            if p >= TARGET_RECALL:
                score = pair_probability(below, bands, rows)
                if best is None or score < best[0]:
                    best = (score, bands, rows)
    _, bands, rows = best if best is not None else fallback
    return bands, rows


def s_curve_table(bands: int, rows: int, points: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> str:
    """One line: the chance of catching a pair at a few similarities, for the report and --dry-run."""
    cells = ", ".join(f"J={j:.1f}: {pair_probability(j, bands, rows):.3f}" for j in points)
    midpoint = s_curve_midpoint(bands, rows)
    return f"{bands} bands x {rows} rows (S-curve midpoint {midpoint:.2f}); P(caught) {cells}"
