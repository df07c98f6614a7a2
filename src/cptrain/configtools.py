"""Turning TOML tables into typed dataclasses, with errors that name the key at fault.

Shared by the run config (`config.py`), the data config and the dedup config, so that every
config file in cptrain reports unknown keys, wrong types and bad values the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key, the value and what is allowed.

    `key` (when known) is the dotted key at fault, so that `load_config` can tell whether the recipe
    file or a command-line override set it.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def blocked_folder(path: Path) -> tuple[Path, str] | None:
    """Why a folder cannot be written or created at `path`, checked before any work: its nearest existing
    ancestor (or itself) and "file" (a file stands in the way) or "unwritable"; None when it can be."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return existing, "file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, "unwritable"
    return None


def closest(name: str, choices: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _union_member(tp: Any) -> list[str]:
    """How a member of a union is named in "expected ...": a Literal by its values and bool by true and false,
    as they are written in TOML (`Literal["auto"] | bool` reads 'auto', true or false), else by its type."""
    if typing.get_origin(tp) is typing.Literal:
        return [_toml_value(a) for a in typing.get_args(tp)]
    if tp is bool:
        return ["true", "false"]
    return [_type_name(tp)]


def _toml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; allow int -> float and str paths."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        allowed = _one_of([name for a in args if a is not type(None) for name in _union_member(a)])
        raise ConfigError(f"{key}: expected {allowed}, got {value!r} ({type(value).__name__})", key)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"{key}: {value!r} is not allowed; choose one of {', '.join(repr(a) for a in args)}"
                + (closest(str(value), [str(a) for a in args]) if isinstance(value, str) else ""),
                key,
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})", key)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}", key)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of {tp.__name__} keys, got {value!r}", key)
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})", key)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})", key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", key)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})"
                              + _quote_hint(value), key)
        return value
    return value


def _quote_hint(value: Any) -> str:
    """TOML reads an unquoted 04:00:00 or 2024-01-01 as a time or date; in a file only quotes make it text."""
    if isinstance(value, (datetime.date, datetime.time)):
        return f'; TOML reads it unquoted as a {type(value).__name__}: write it in quotes, e.g. "{value}"'
    return ""


def check_keys(cls: type, raw: dict, prefix: str = "") -> None:
    """Reject a key of `raw` that is not a field of dataclass `cls`, suggesting the closest one."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in raw:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            near = closest(key, names).replace("'", f"'{prefix}." if prefix else "'", 1)
            raise ConfigError(f"unknown key '{full}'{near} (valid keys here: {', '.join(names)})", full)


def from_dict(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and checking types, then `validate()`."""
    hints = typing.get_type_hints(cls)
    check_keys(cls, raw, prefix)
    kwargs = {}
    for key, value in raw.items():
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict that tomli_w can write (None values dropped: TOML has no null)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = to_dict(getattr(obj, f.name))
            if v is not None:
                out[f.name] = v
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, Path):
        return str(obj)
    return obj


_INDEXED = re.compile(r"^([A-Za-z_][\w-]*)\[(\d+)\]$")


def parse_override(text: str, schema: type | None = None) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value); the value is read as TOML when it parses, else a string.

    With `schema` (the dataclass the overrides apply to), a key annotated as text (str, str | None, Path)
    keeps the text as typed whenever TOML reads it as a number, boolean, date or time: on a command line
    `slurm.time=12:00:00` means the string "12:00:00", not a TOML local time that then fails the str check.
    The same holds inside an inline table or array: `slurm={time=12:00:00, cpus_per_task=4}` gives the
    string "12:00:00" and the integer 4.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    path = key.split(".")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return path, raw
    if schema is not None and _is_scalar(value) and _is_text(annotation_at(schema, path)):
        return path, raw
    if schema is not None and isinstance(value, (dict, list)):
        # tomllib keeps no source text, so read `raw` again with its bare values quoted: that reading has
        # the same tables and lists, with the text as typed where the first has numbers, dates and times
        try:
            typed = tomllib.loads(f"v = {_quote_bare_values(raw)}")["v"]
        except tomllib.TOMLDecodeError:  # a form the quoting does not follow (comments, multi-line strings)
            typed = None
        value = _text_as_typed(value, typed, schema, path)
    return path, value


_TOKEN = re.compile(r"""
    "(?:\\.|[^"\\])*" | '[^']*'                # a basic or literal string
    | \s+ | [{}\[\],=]                         # whitespace, punctuation
    | \d{4}-\d\d-\d\d[ ]\d\d:[^\s{}\[\],="']*    # a date, a space and a time: one value
    | [^\s{}\[\],="']+ | .                     # a bare key or value; any other character as it is
""", re.VERBOSE)


def _quote_bare_values(raw: str) -> str:
    """`raw` with each bare value written as a TOML literal string of its text:
    `{time=12:00:00, n=[1, true]}` -> `{time='12:00:00', n=['1', 'true']}`; keys and strings stay."""
    out, brackets, value_next = [], [], True  # `raw` as a whole is a value (`v = raw`)
    for tok in _TOKEN.findall(raw):
        if tok in ("{", "["):
            brackets.append(tok)
            value_next = tok == "["  # an array starts with a value, a table with a key
        elif tok in ("}", "]"):
            brackets = brackets[:-1]
            value_next = False
        elif tok in ("=", ","):
            value_next = tok == "=" or brackets[-1:] == ["["]
        elif not tok.isspace():
            if value_next and tok[0] not in "\"'":
                tok = f"'{tok}'"
            value_next = False
        out.append(tok)
    return "".join(out)


def _text_as_typed(value: Any, typed: Any, schema: type, path: list[str]) -> Any:
    """`value` with each number, boolean, date or time at a text key of `schema` replaced by the text as
    typed, taken from `typed` (the same override read with its bare values quoted). Inside a free-form
    table (model.overrides, slurm.sbatch_args) `annotation_at` knows no type, so values keep their TOML
    type there, as a direct `model.overrides.n_layers=2` does: model.overrides is checked against
    ModelArgs, whose error names the key (and says to quote a date or time)."""
    if isinstance(value, dict) and isinstance(typed, dict):
        return {k: _text_as_typed(v, typed.get(k), schema, [*path, k]) for k, v in value.items()}
    if isinstance(value, list) and isinstance(typed, list) and len(value) == len(typed):
        return [_text_as_typed(v, t, schema, [*path[:-1], f"{path[-1]}[{i}]"])
                for i, (v, t) in enumerate(zip(value, typed, strict=True))]
    if _is_scalar(value) and isinstance(typed, str) and _is_text(annotation_at(schema, path)):
        return typed
    return value


def _is_scalar(value: Any) -> bool:
    """A TOML value that is not a string, list or table (those keep their type and its error message)."""
    return isinstance(value, (bool, int, float, datetime.date, datetime.time))


def _is_text(tp: Any) -> bool:
    """str or Path, optionally `| None`; a union with other types (`str | int`) keeps the TOML type."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    kinds = [a for a in args if a is not type(None)]
    return len(kinds) == 1 and kinds[0] in (str, Path)


def annotation_at(cls: type, path: typing.Sequence[str]) -> Any:
    """The annotation of the key at `path` (parts as in overrides, `name[i]` included) inside dataclass
    `cls`; None where the path leaves the dataclasses (an unknown key, a free-form table)."""
    tp: Any = cls
    for part in path:
        m = _INDEXED.match(part)
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(m.group(1) if m else part)
        if m:
            args = typing.get_args(tp)
            tp = args[0] if typing.get_origin(tp) in (list, tuple) and args else None
    return tp


def apply_overrides(raw: dict, overrides: typing.Sequence[str], schema: type | None = None) -> dict:
    """Set each `key.sub=value` in `raw`; `name[i]` addresses entry i of a list of tables, e.g.
    `data.sources[1].weight=2` (the form error messages use for list entries). `schema`, the dataclass
    `raw` will be read into, lets text keys keep their value as typed (see `parse_override`)."""
    for text in overrides:
        path, value = parse_override(text, schema)
        node, where = raw, []
        for i, part in enumerate(path):
            last = i == len(path) - 1
            m = _INDEXED.match(part)
            name, index = (m.group(1), int(m.group(2))) if m else (part, None)
            where.append(name)
            if index is None:
                if last:
                    node[name] = value
                    break
                child = node.setdefault(name, {})
                if isinstance(child, list):
                    raise ConfigError(f"override {text!r}: '{'.'.join(where)}' is a list; address one entry as "
                                      f"{'.'.join(where)}[0].{'.'.join(path[i + 1:])}=...")
                if not isinstance(child, dict):
                    raise ConfigError(f"override {text!r}: '{'.'.join(where)}' is not a table")
                node = child
                continue
            items = node.get(name)
            if not isinstance(items, list) or index >= len(items):
                have = f"has {len(items)} entries" if isinstance(items, list) else "is not a list"
                raise ConfigError(f"override {text!r}: '{'.'.join(where)}' {have}, so there is no entry {index}")
            where[-1] = f"{name}[{index}]"
            if last:
                items[index] = value
                break
            if not isinstance(items[index], dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(where)}' is not a table")
            node = items[index]
    return raw


def override_for(key: str | None, overrides: typing.Sequence[str]) -> str | None:
    """The last override that set `key`, a table around it or a key inside it; None when none did
    (then the value came from the file or a default)."""
    if key is None:
        return None
    for text in reversed(overrides):
        name = text.split("=", 1)[0].strip()
        if _within(key, name) or _within(name, key):
            return text
    return None


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith((f"{outer}.", f"{outer}["))


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a recipe: give the path of a .toml file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:  # a model, archive or other binary file given as the recipe
        raise ConfigError(f"{path}: not a TOML recipe (not UTF-8 text); give the path of a .toml file") from None


def require(cond: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming `key`, `value` and what is allowed unless `cond` holds."""
    if not cond:
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed}", key)
