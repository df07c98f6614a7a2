"""`cptrain inspect-data RECIPE [key=value ...]`: what the loader will feed the model, before training.

Reads a sample of batches on rank 0 of 1 and prints the mixture table (target vs realized token
shares), token counts (exact for token shards, estimated from file sizes when streaming), skipped rows,
packing efficiency, the held-out set and one decoded row with its document boundaries marked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch


def _estimate_tokens(cfg, report: dict) -> dict[str, str]:
    """Whole-source token counts: exact from token shards, else file bytes x the sample's tokens/byte."""
    from cptrain.data.shards import read_meta
    from cptrain.data.sources import resolve_source

    out = {}
    for i, source in enumerate(cfg.sources):
        if cfg.mode == "pretokenized":
            meta = read_meta(cfg, source.name)
            out[source.name] = f"{meta['stats']['tokens']:,}" if meta else "?"
            continue
        if source.format == "datasets":
            out[source.name] = "?"
            continue
        src = resolve_source(source, f"data.sources[{i}]")
        total_bytes = sum(src.path_of(rel).stat().st_size for rel, _ in src.files)
        sample = report["sources"][source.name]
        ratio = sample.get("tokens_per_byte")
        out[source.name] = f"~{total_bytes * ratio:,.0f}" if ratio else f"? ({total_bytes:,} bytes)"
    return out


def sample_row_text(batch: dict[str, torch.Tensor], decode, row: int = 0) -> str:
    """One input row decoded piece by piece, a marked line at every document boundary."""
    ids, docs = batch["input_ids"][row], batch["document_ids"][row]
    parts, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or docs[t] != docs[start]:
            label = "padding" if docs[start] < 0 else f"document {int(docs[start])}"
            parts.append(f"\n----- {label}: {t - start} tokens -----\n{decode(ids[start:t].tolist())}")
            start = t
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cptrain inspect-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="path to a recipe .toml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--batches", type=int, default=16, help="micro-batches to sample (default 16)")
    parser.add_argument("--json", action="store_true", help="print the data report as JSON instead")
    ns = parser.parse_args(argv)

    from cptrain.data import build_eval_batches, build_train_loader
    from cptrain.data.tokenize import DocumentTokenizer
    from cptrain.data.tokenize_cli import load_recipe_tokenizer

    cfg, tokenizer = load_recipe_tokenizer(ns.recipe, ns.overrides)
    data = dataclasses.replace(cfg.data, num_workers=0)
    seq, mbs = cfg.train.seq_len, cfg.train.micro_batch_size
    loader = build_train_loader(data, tokenizer, seq_len=seq, micro_batch_size=mbs)
    batches = [next(loader) for _ in range(max(1, ns.batches))]
    report = loader.report()
    for s in report["sources"].values():
        s["tokens_per_byte"] = s["tokens"] / s["bytes"] if s.get("bytes") else None
    if ns.json:
        print(json.dumps(report, indent=1))
        return 0
    evals = build_eval_batches(
        data, tokenizer, seq_len=seq, micro_batch_size=mbs, max_batches=cfg.eval.max_batches
    )
    totals = _estimate_tokens(data, report)
    print(
        f"{ns.recipe}: {len(data.sources)} sources, mode={data.mode}, seq_len={seq}, "
        f"micro_batch_size={mbs}; sampled {len(batches)} micro-batches ({len(batches) * mbs * seq:,} tokens)"
    )
    print(
        f"\n{'source':<20} {'weight':>7} {'target':>7} {'sample':>7} {'docs':>7} {'tokens':>10} "
        f"{'whole source':>16} skipped"
    )
    stage0 = report["stages"][0]
    for source in data.sources:
        s = report["sources"][source.name]
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(s["skipped"].items())) or "-"
        print(
            f"{source.name:<20} {source.weight:>7.3g} {stage0['target_shares'][source.name]:>7.1%} "
            f"{stage0['realized_shares'][source.name]:>7.1%} {s['documents']:>7,} {s['tokens']:>10,} "
            f"{totals[source.name]:>16} {skipped}"
        )
    for i, stage in enumerate(data.stages, start=1):
        mix = report["stages"][i]
        shares = ", ".join(
            f"{n}: {v:.1%}" + (f" (sample {mix['realized_shares'][n]:.1%})" if mix["tokens"] else "")
            for n, v in mix["target_shares"].items()
        )
        print(f"stage {i} from step {stage.start_step}: {shares}")
    p = report["packing"]
    print(
        f"\npacking: {p['rows']:,} rows, {p['real_token_fraction']:.2%} real tokens (no padding), "
        f"{p['supervised_fraction']:.2%} of positions have a label (the rest sit at document ends)"
    )
    held = sum(int((b["document_ids"] >= 0).sum()) for b in evals)
    print(f"held-out: {len(evals)} batches, {held:,} real tokens (data.eval_fraction={data.eval_fraction})")
    for file_problems in (s["problem_files"] for s in report["sources"].values()):
        for file, kinds in list(file_problems.items())[:10]:
            for reason, v in kinds.items():
                print(f"  skipped {v['count']} x {reason} in {file} (first at line {v['first_line']})")
    decoder = DocumentTokenizer(tokenizer, data.add_bos, data.eos_token)
    print("\nfirst row of the first batch (document boundaries marked):")
    print(sample_row_text(batches[0], decoder.decode))
    return 0
