"""Typed dataclass configs on the command line: flags, YAML presets and `--set key=value`.

Each component owns a dataclass config whose field docstrings are the help text
(`x: int = 1` followed by `\"\"\"what x is\"\"\"`). This module turns such a class into argparse
flags (`--max-seq-length`) and resolves a config from, in rising priority: the dataclass
defaults, a YAML file (`--config`), `--set key=value` overrides, explicit flags. Unknown keys
and bad values are one-line errors that name the key.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A user-caused configuration problem; the message is shown as one line."""


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


def _base_type(tp):
    """(python type, is_list) for a field annotation such as `int | None` or `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        return inner, True
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0]), False
    return tp, False


def _choices(tp):
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    return None


def add_config_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass `cls` (defaults left to `resolve`)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f"{docs.get(f.name, '')} (default: {default!r})"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                dest=f.name, help=help_)
        else:
            parser.add_argument(flag, type=tp, nargs="+" if is_list else None, default=None,
                                dest=f.name, choices=_choices(hints[f.name]), help=help_,
                                metavar=f.name.upper())
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file of config values (keys are the flag names with '_')")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one config value (repeatable)")


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
        raise ConfigError(f"config key '{name}': cannot read {value!r} as {tp.__name__} ({e})")
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


def from_dict(cls, values: dict, origin: str = "config"):
    """Build `cls` from a mapping; an unknown key is a one-line error naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{origin}: unknown key '{unknown[0]}' for {cls.__name__} "
                          f"(known keys: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(cls, k, v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{origin}: {e}")


def resolve(cls, args: argparse.Namespace, skip: tuple[str, ...] = ()):
    """defaults < YAML (--config) < --set KEY=VALUE < explicit flags."""
    values: dict = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    for item in getattr(args, "overrides", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        values[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw else ""
    for f in dataclasses.fields(cls):
        if f.name not in skip and getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return from_dict(cls, values, origin="config")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
