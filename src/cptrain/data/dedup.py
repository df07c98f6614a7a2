"""`cptrain dedup [CONFIG.toml] [--section.key value ...]`: deduplicate and filter text with datatrove.

Flags are the TOML keys (`--minhash.bands 20` is `[minhash] bands = 20`); values are read as TOML
when they parse (numbers, true/false, ["a", "b"]) and as strings otherwise; a text key keeps the text
as typed (`--slurm.time 12:00:00` is "12:00:00", not a TOML time). A list key given as a
flag several times collects the values. See docs/dedup.md for the stages, outputs and defaults.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

from cptrain.configtools import ConfigError, to_dict

USAGE = "usage: cptrain dedup [CONFIG.toml] [--section.key value ...] [--dry-run] [--help]"
INSTALL_HINT = (
    "cptrain dedup needs datatrove and a few helpers: pip install 'cptrain[dedup]' "
    '(word_tokenizer = "datatrove" also needs spacy)'
)


def config_keys() -> list[tuple[str, typing.Any, typing.Any, str]]:
    """(dotted key, type, default, help) for every config key, in declaration order."""
    from cptrain.data.dedup_config import DedupConfig

    def walk(cls: type, prefix: str) -> list:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                out += walk(hints[f.name], f"{key}.")
            else:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                out.append((key, hints[f.name], default, f.metadata.get("help", "")))
        return out

    return walk(DedupConfig, "")


def _type_label(tp: typing.Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin is list:
        return "PATH [...]"
    if origin is dict:  # the inline TOML table the flag takes; one key also works: --a.b.KEY VALUE
        return "{KEY = VALUE, ...}"
    if type(None) in args:
        return _type_label(next(a for a in args if a is not type(None)))
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "TEXT"}.get(tp, str(tp).upper())


def help_text() -> str:
    lines = [
        USAGE,
        "",
        "Deduplicate (exact + MinHash) and filter jsonl/parquet text with datatrove, locally or",
        "on SLURM; writes <output.dir>/data (train on it), report.md, removed/. Keys (flag = TOML key):",
        "",
    ]
    section = None
    for key, tp, default, text in config_keys():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines.append(f"[{section}]" if section else "(top level)")
        shown = "unset" if default is None else repr(default)
        lines.append(f"  --{key} {_type_label(tp)}")
        lines.append(f"      {text} (default: {shown})")
    lines += [
        "",
        "  --dry-run   print the resolved config and the dedup settings, run nothing",
        "  -h, --help  this text",
    ]
    return "\n".join(lines)


def parse_argv(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """(config path, `key=value` overrides, dry run) from the command line."""
    keys = {key: tp for key, tp, _, _ in config_keys()}
    path, overrides, dry_run = None, [], False
    lists: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--dry-run":
            dry_run = True
        elif arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--{key} needs a value")
                i += 1
                value = argv[i]
            if typing.get_origin(keys.get(key)) is list and not value.lstrip().startswith("["):
                lists.setdefault(key, []).append(value)
            else:
                overrides.append(f"{key}={value}")
        elif path is None:
            path = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}; flags look like --section.key value\n{USAGE}")
        i += 1
    for key, values in lists.items():
        overrides.append(f"{key}=[{', '.join(_toml_string(v) for v in values)}]")
    return path, overrides, dry_run


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    from cptrain.data.dedup_config import load_dedup_config

    path, overrides, dry_run = parse_argv(list(argv))
    cfg = load_dedup_config(path, overrides)
    if dry_run:
        import tomli_w

        from cptrain.data.dedup_run import describe

        print(tomli_w.dumps(to_dict(cfg)))
        print(f"# {describe(cfg)}")
        return 0
    from cptrain.data.dedup_run import run_dedup

    try:
        info = run_dedup(cfg)
    except ImportError as e:  # datatrove or one of its optional pieces (orjson, xxhash, pyarrow, spacy)
        print(f"cptrain dedup: missing dependency: {e}\n{INSTALL_HINT}", file=sys.stderr)
        return 1
    if info is not None:
        first, last = info["stages"][0], info["stages"][-1]
        print(
            f"cptrain dedup: {first['docs_in']:,} documents in, {last['docs_out']:,} out; "
            f"shards in {info['output']['dir']}; report: {info['run_dir']}/report.md"
        )
        if last["docs_out"] == 0:
            print("cptrain dedup: warning: every document was removed; see the report", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
