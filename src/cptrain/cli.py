"""`cptrain` command line: run, export, inspect-model, generate, inspect-data, tokenize, dedup.

Each subcommand imports what it needs inside its handler, so `cptrain --help` is instant and a
missing optional dependency only matters to the subcommand that uses it.
"""

from __future__ import annotations

import argparse
import os
import select
import sys

from cptrain.configtools import ConfigError


def _run(ns: argparse.Namespace) -> int:
    from cptrain.config import load_config

    cfg = load_config(ns.recipe, ns.overrides)
    if ns.dry_run:
        print(cfg.to_toml())
        return 0
    from cptrain.train import Diverged, run

    main_rank = (os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0") == "0"
    try:
        run(cfg)
    except KeyboardInterrupt:  # Ctrl-C: no traceback, but where the work stands
        if main_rank:
            print(f"cptrain: interrupted; {_resume_point(cfg)}", file=sys.stderr, flush=True)
        return 130
    except Diverged as e:  # every rank stops at the same step; one says why
        if main_rank:
            print(f"cptrain: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def _resume_point(cfg) -> str:
    """What a relaunch of an interrupted run starts from: its newest committed checkpoint, or step 0. Steps after
    that checkpoint are lost; SIGTERM (SLURM's pre-emption signal) saves one before exiting instead."""
    from pathlib import Path

    from cptrain.checkpoint import committed_steps

    run_dir = Path(cfg.train.run_dir)
    steps = committed_steps(run_dir / "checkpoints")
    where = (f"the newest committed checkpoint is {steps[-1]}, which the same command resumes from" if steps else
             f"{run_dir} holds no committed checkpoint, so the same command starts over from step 0")
    return (f"{where}; the steps trained after it are lost (to stop with a checkpoint, send SIGTERM instead: "
            "`kill PID` saves and exits)")


def _export(ns: argparse.Namespace) -> int:
    from cptrain.export import export_run

    out = export_run(ns.run_or_checkpoint, ns.out, dtype=ns.dtype, overwrite=ns.overwrite)
    print(f"exported Hugging Face model to {out}")
    return 0


def _inspect_model(ns: argparse.Namespace) -> int:
    from cptrain.models.inspect import describe_model

    print(describe_model(ns.model, seq_len=ns.seq_len, micro_batch_size=ns.micro_batch_size))
    return 0


def _generate(ns: argparse.Namespace) -> int:
    from cptrain.evaluate import generate_from_path

    if not ns.prompt:
        raise ConfigError("generate: the prompt is empty; give some text for the model to continue")

    print(generate_from_path(ns.model, ns.prompt, ns.max_new_tokens))
    return 0


def _positive_int(text: str) -> int:
    """argparse type for counts where 0 or less would silently do nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _forward_to(module: str) -> callable:
    """Subcommands with many flags of their own parse their own argv."""

    def handler(ns: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).main(ns.rest) or 0

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cptrain", description="Continued pretraining of decoder LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train from a TOML recipe (plain process, torchrun or srun)")
    p.add_argument("recipe", help="path to a recipe .toml")
    # default=[]: without one argparse counts a nargs="*" positional as required and names it in the
    # "the following arguments are required" message when the recipe is missing
    p.add_argument("overrides", nargs="*", default=[], help="key.sub=value overrides, e.g. optim.lr=1e-4")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_run)

    p = sub.add_parser("export", help="write a Hugging Face directory from a run folder or checkpoint")
    p.add_argument("run_or_checkpoint", help="run folder (newest committed step) or checkpoints/step-N")
    p.add_argument("out", help="output directory: new or empty (created if missing); it gets config.json, "
                   "generation_config.json, safetensors weights and the run's tokenizer")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"],
                   help="dtype of the saved weights (default bf16)")
    p.add_argument("--overwrite", action="store_true",
                   help="export into a folder that is not empty, replacing an earlier export's files there")
    p.set_defaults(func=_export)

    p = sub.add_parser("inspect-model", help="architecture, parameter count and memory estimate")
    p.add_argument("model", help="preset name, HF directory, .gguf file, builtin:smollm2-135m, a recipe .toml "
                   "(its model with model.overrides) or a run folder / checkpoint (its model_args.json)")
    p.add_argument("--seq-len", type=_positive_int, default=None,
                   help="sequence length for the activation estimate (default: the recipe's or run's "
                   "train.seq_len, else 8192)")
    p.add_argument("--micro-batch-size", type=_positive_int, default=None,
                   help="rows per forward for the activation estimate (default: the recipe's or run's "
                   "train.micro_batch_size, else 1)")
    p.set_defaults(func=_inspect_model)

    p = sub.add_parser("generate", help="greedy continuation of a prompt from a model path",
                       description="Print the prompt and its greedy continuation, which stops at the model's "
                       "eos tokens (its tokenizer's, config.json's and generation_config.json's) or at the "
                       "end of its context (max_position_embeddings).")
    p.add_argument("model", help="HF directory, .gguf file or builtin:smollm2-135m (a run folder: its hf/, or "
                   "`cptrain export` it first)")
    p.add_argument("prompt", help="text to continue (not empty)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64,
                   help="tokens to generate at most (default 64)")
    p.set_defaults(func=_generate)

    for name, text in [
        ("inspect-data", "mixture table, token counts, packing, a sample row"),
        ("tokenize", "write memory-mapped token shards for a recipe"),
        ("dedup", "deduplicate and filter text with datatrove"),
    ]:
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_forward_to(FORWARDED[name]))
    return parser


FORWARDED = {"inspect-data": "cptrain.data.inspect", "tokenize": "cptrain.data.tokenize_cli",
             "dedup": "cptrain.data.dedup"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at interpreter exit
        return code
    except ConfigError as e:
        print(f"cptrain: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `cptrain inspect-model X | head -1`: the reader closed early, which is not our error. As Python's
        # signal docs advise, point stdout at devnull so the flush at exit cannot fail again; exit as a
        # process killed by SIGPIPE would
        fd = _stdout_reader_gone()
        if fd is None:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        return 141


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in FORWARDED:  # argparse's REMAINDER drops leading --flags: hand over argv whole
        import importlib

        return importlib.import_module(FORWARDED[argv[0]]).main(argv[1:]) or 0
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.command == "run" and all("=" in a and not a.startswith("-") for a in extra):
        ns.overrides += extra  # overrides after a flag (`run R --dry-run k=v`): argparse stops at the flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return ns.func(ns)


def _stdout_reader_gone() -> int | None:
    """stdout's file descriptor when it is a pipe whose reader has closed (poll flags the write end
    POLLERR), else None: a broken pipe elsewhere (a data-loader worker's) is a real failure to report."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no descriptor (pytest's capture): not a pipe of ours
        return None
    if not hasattr(select, "poll"):  # Windows: no way to tell; Python's own recipe assumes stdout
        return fd
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return fd if any(events & select.POLLERR for _, events in poller.poll(0)) else None


if __name__ == "__main__":
    sys.exit(main())
