"""The data report: what was read, what was skipped and why, the mix that came out, packing efficiency."""

from __future__ import annotations

from cptrain.data.config import DataConfig


def data_report(cfg: DataConfig, shard_states: list[dict], batches: int) -> dict:
    """Sum the shard states of one rank into one plain dict (JSON-ready), per source and per stage."""
    names = [s.name for s in cfg.sources]
    sources = {
        n: {"documents": 0, "tokens": 0, "bytes": 0, "epochs_started": 0, "skipped": {}, "problem_files": {}}
        for n in names
    }
    packing = {"rows": 0, "input_tokens": 0, "label_tokens": 0, "padding_tokens": 0}
    stage_tokens = [[0] * len(names) for _ in range(1 + len(cfg.stages))]
    for state in shard_states:
        for name, src in zip(names, state["sources"]):
            out, stats = sources[name], src["stats"]
            out["documents"] += stats["documents"]
            out["tokens"] += stats["tokens"]
            out["bytes"] += stats.get("bytes", 0)
            out["epochs_started"] = max(
                out["epochs_started"], stats["epoch"] + (1 if stats["documents"] else 0)
            )
            for reason, n in stats["skipped"].items():
                out["skipped"][reason] = out["skipped"].get(reason, 0) + n
            for file, kinds in stats["problem_files"].items():
                entry = out["problem_files"].setdefault(file, {})
                for reason, v in kinds.items():
                    e = entry.setdefault(reason, {"count": 0, "first_line": v["first_line"]})
                    e["count"] += v["count"]
                    e["first_line"] = min(e["first_line"], v["first_line"]) or v["first_line"]
        for key in packing:
            packing[key] += state["packing"][key]
        for stage, row in enumerate(state["stage_tokens"]):
            for i, n in enumerate(row):
                stage_tokens[stage][i] += n
    return {
        "batches": batches,
        "sources": sources,
        "skipped_total": sum(sum(s["skipped"].values()) for s in sources.values()),
        "stages": [_stage_mix(cfg, i, names, row) for i, row in enumerate(stage_tokens)],
        "packing": {**packing, **_efficiency(packing)},
    }


def _stage_mix(cfg: DataConfig, stage: int, names: list[str], tokens: list[int]) -> dict:
    """Target and realized token shares of one stage; a document counts whole in the stage that picked it
    (so the one a shard is cutting rows from counts before all of it is in rows: see mixture.py)."""
    weights = cfg.stage_weights(stage)
    total_w, total_t = sum(weights), sum(tokens)
    return {
        "start_step": 0 if stage == 0 else cfg.stages[stage - 1].start_step,
        "tokens": total_t,
        "target_shares": {n: w / total_w for n, w in zip(names, weights)},
        "realized_shares": {n: (t / total_t if total_t else 0.0) for n, t in zip(names, tokens)},
    }


def _efficiency(p: dict) -> dict:
    slots = p["input_tokens"]
    return {
        "real_token_fraction": (slots - p["padding_tokens"]) / slots if slots else 0.0,
        "supervised_fraction": p["label_tokens"] / slots if slots else 0.0,
    }
