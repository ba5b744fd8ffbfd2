"""Typed dataclass configs on the command line: flags, presets, YAML and `--set key=value`.

Each component owns a dataclass config whose field docstrings are the help text
(`x: int = 1` followed by `\"\"\"what x is\"\"\"`). This module turns such a class into argparse
flags (`--max-seq-length`) and resolves a config from, in rising priority: the dataclass
defaults, a shipped preset (`--preset NAME`, `jobs/presets/COMMAND-NAME.yaml`) or a YAML file
(`--config`), `--set key=value` overrides, explicit flags. The same rules serve the
workflow's sections (`values_for`), so a `preset:` key works in every one of them.

- A field declared with `hidden()` (test knobs) has a flag but no line in `--help`.
- A class may rename a key: `RENAMED = {"old": "new"}` keeps `--old` and `old:` working with
  a deprecation warning on stderr.
- Unknown keys and bad values are one-line `ConfigError`s that name the key.
Never imports Ray, torch or MLflow.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A user-caused configuration problem; the message is shown as one line."""


def hidden(default=None):
    """A field kept out of `--help` (test knobs): `fail_at_step: int | None = hidden()`."""
    return dataclasses.field(default=default, metadata={"hidden": True})


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under dataclass fields, by field name (inherited ones too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def renamed(cls) -> dict[str, str]:
    """Old key -> new key, over the class and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(getattr(klass, "RENAMED", {}) or {})
    return out


def _base_type(tp):
    """(python type, is_list) for a field annotation such as `int | None` or `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        return inner, True
    if origin is typing.Literal:
        return type(typing.get_args(tp)[0]), False
    return tp, False


def _choices(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return list(typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _choices(args[0]) if len(args) == 1 else None
    return None


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_config_args(parser: argparse.ArgumentParser, cls, presets_of: str | None = None) -> None:
    """One flag per field of dataclass `cls` (defaults left to `resolve`), the renamed keys'
    old flags, `--config`, `--set`, and `--preset` when `presets_of` names a command."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)

    def add(flag: str, name: str, help_: str, dest: str | None = None):
        tp, is_list = _base_type(hints[name])
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                dest=dest or name, help=help_)
        else:
            parser.add_argument(flag, type=tp, nargs="+" if is_list else None, default=None,
                                dest=dest or name, choices=_choices(hints[name]), help=help_,
                                metavar=name.upper())

    own = cls.__dict__.get("__annotations__", {})  # the job's own fields first, shared parts after
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        help_ = argparse.SUPPRESS if f.metadata.get("hidden") else \
            f"{docs.get(f.name, '')} (default: {_default(f)!r})"
        add("--" + f.name.replace("_", "-"), f.name, help_)
    for old, new in renamed(cls).items():
        add("--" + old.replace("_", "-"), new, argparse.SUPPRESS, dest=f"renamed:{old}")
    if presets_of:
        names = ", ".join(presets(presets_of)) or "none shipped"
        parser.add_argument("--preset", default=None,
                            help=f"a YAML preset shipped in jobs/presets/ ({names})")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file of config values (keys are the flag names with '_')")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one config value (repeatable)")


# --------------------------------------------------------------------------- values

def _coerce(cls, name: str, value):
    hints = typing.get_type_hints(cls)
    tp, is_list = _base_type(hints[name])
    choices = _choices(hints[name])
    try:
        if value is None:
            return None
        if is_list:
            items = value if isinstance(value, list) else [value]
            return [_coerce_one(tp, v) for v in items]
        out = _coerce_one(tp, value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key '{name}': cannot read {value!r} as {tp.__name__} ({e})") from None
    if choices and out not in choices:
        raise ConfigError(f"config key '{name}': {out!r} is not one of {choices}")
    return out


def _coerce_one(tp, v):
    if tp is bool:
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if tp in (int, float, str):
        if tp is int and isinstance(v, float) and not v.is_integer():
            raise ValueError("expected an integer")
        return tp(v)
    return v


def _warn_renamed(old: str, new: str, origin: str) -> None:
    print(f"bertpipe: warning: {origin}: '{old}' is deprecated, use '{new}' "
          f"(--{new.replace('_', '-')})", file=sys.stderr, flush=True)


def from_dict(cls, values: dict, origin: str = "config"):
    """Build `cls` from a mapping; an unknown key is a one-line error naming it."""
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    for old, new in renamed(cls).items():
        if old in values:
            if new in values and values[new] != values[old]:
                raise ConfigError(f"{origin}: both '{old}' (deprecated) and '{new}' are set; "
                                  f"keep '{new}' only")
            _warn_renamed(old, new, origin)
            values[new] = values.pop(old)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        shown = sorted(f.name for f in dataclasses.fields(cls) if not f.metadata.get("hidden"))
        close = difflib.get_close_matches(unknown[0], shown, n=1, cutoff=0.75)
        guess = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{origin}: unknown key '{unknown[0]}' for {cls.__name__}{guess} "
                          f"(known keys: {', '.join(shown)})")
    kwargs = {k: _coerce(cls, k, v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{origin}: {e}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def apply_set(values: dict, item: str) -> None:
    """Apply one `KEY=VALUE` (VALUE read as YAML) to `values`; dotted keys reach into nested
    mappings and lists (`finetune.0.epochs=3`), creating mappings on the way."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    parts = key.strip().split(".")
    node = values
    for i, part in enumerate(parts[:-1]):
        try:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        except (ValueError, IndexError, AttributeError):
            raise ConfigError(f"--set {key}: no element {'.'.join(parts[:i + 1])}") from None
    value = yaml.safe_load(raw) if raw else ""
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: no element {key}") from None
    elif isinstance(node, dict):
        node[last.replace("-", "_") if len(parts) == 1 else last] = value
    else:
        raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys to values")
    return loaded


# --------------------------------------------------------------------------- presets

def presets(command: str) -> dict[str, Path]:
    """Shipped presets of a command by name: `jobs/presets/COMMAND-*.yaml`."""
    return {p.stem: p for p in sorted(PRESET_DIR.glob(f"{command}-*.yaml"))}


def preset_path(command: str, name: str) -> Path:
    """A preset by its full name (`pretrain-bert-tiny-cpu`) or without the command prefix."""
    found = presets(command)
    for candidate in (name, f"{command}-{name}"):
        if candidate in found:
            return found[candidate]
    raise ConfigError(f"unknown {command} preset {name!r} (one of: {', '.join(found)})")


def values_for(command: str, values: dict) -> dict:
    """A section's values with its `preset:` key expanded (the section's keys win)."""
    values = dict(values)
    name = values.pop("preset", None)
    if not name:
        return values
    return {**read_yaml(preset_path(command, name), f"{command} preset"), **values}


def resolve(cls, args: argparse.Namespace, command: str | None = None):
    """defaults < preset or YAML (--preset / --config) < --set KEY=VALUE < explicit flags."""
    values: dict = {}
    preset = getattr(args, "preset", None)
    if preset and getattr(args, "config", None):
        raise ConfigError("pass --preset NAME or --config FILE, not both")
    if preset:
        values.update(read_yaml(preset_path(command or "", preset), "preset"))
    elif getattr(args, "config", None):
        values.update(read_yaml(args.config))
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    for item in getattr(args, "overrides", []) or []:
        apply_set(values, item)
    for old, new in renamed(cls).items():
        if getattr(args, f"renamed:{old}", None) is not None:
            _warn_renamed(old, new, "flag")
            values[new] = getattr(args, f"renamed:{old}")
    for f in dataclasses.fields(cls):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return from_dict(cls, values, origin="config")


def load_preset(cls, command: str, name: str):
    """A shipped preset as a config of `cls` (not yet validated: data paths are missing)."""
    return from_dict(cls, read_yaml(preset_path(command, name), f"{command} preset"),
                     origin=f"preset {name}")
