"""One typed configuration system: dataclasses, loaded from TOML or YAML, with ``--set`` overrides.

Every configurable thing in torchrec-mdr (a training run, a converter's options, a benchmark) is a
plain dataclass. :func:`load_config` reads a file into one, :func:`apply_overrides` applies dotted
``key=value`` overrides, and both validate as they go: an unknown key, a value of the wrong type or
a value out of range raises :class:`ConfigError` naming the key and the file it came from.

Range checks live in the field's metadata (``field(metadata=bounds(ge=1))``) or, for checks that
involve several fields, in the dataclass's ``validate()`` method.

The same dataclasses also drive the command line: :func:`add_dataclass_arguments` turns the
fields of a dataclass into ``--flag`` options, so converters and benchmarks need no second,
hand-written description of their options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a config dataclass


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range. The message names key and source."""


def bounds(
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    help: str = "",
) -> dict[str, Any]:
    """Field metadata: numeric bounds checked on load and a help text for the command line."""
    return {"ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}


def doc(help: str, aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field metadata carrying a help text (and, for the command line, other flags of the same option)."""
    return {"help": help, "aliases": aliases} if aliases else {"help": help}


def _where(key: str, source: str | None) -> str:
    return f"'{key}'" + (f" in {source}" if source else "")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Convert ``value`` (from a file or a command line) to type ``tp``; raise ConfigError if it cannot."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{_where(key, source)}: {value!r} is not one of {' | '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{_where(key, source)}: {value!r} is not one of {list(choices)}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(key, source)}: expected a table of keys, got {value!r}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple):
        (item_type, *_rest) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(key, source)}: expected a list, got {value!r}")
        items = [_convert(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        key_type, value_type = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(key, source)}: expected a table, got {value!r}")
        return {
            _convert(k, key_type, key, source): _convert(v, value_type, f"{key}.{k}", source) for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(key, source)}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{_where(key, source)}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{_where(key, source)}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{_where(key, source)}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{_where(key, source)}: expected a path, got {value!r}")
    raise ConfigError(f"{_where(key, source)}: unsupported type {tp!r}")  # pragma: no cover


_BOUND_CHECKS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def _check_bounds(field: dataclasses.Field, value: Any, key: str, source: str | None) -> None:
    """Check a number (or every number of a list) against the field's ``bounds`` metadata."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        for name, (text, ok) in _BOUND_CHECKS.items():
            bound = field.metadata.get(name)
            if bound is not None and not ok(v, bound):
                raise ConfigError(f"{_where(key, source)}: {v!r} is out of range (must be {text} {bound})")


def from_dict(cls: type[T], data: dict[str, Any], source: str | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking keys, types and bounds."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {_where(key, source)}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        converted = _convert(value, hints[name], key, source)
        _check_bounds(fields[name], converted, key, source)
        kwargs[name] = converted
    try:
        obj = cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{source or 'config'}{' [' + prefix + ']' if prefix else ''}: {error}") from None
    _validate(obj, source, prefix)
    return obj


def _validate(obj: Any, source: str | None, prefix: str) -> None:
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as error:
            raise ConfigError(f"{source + ': ' if source else ''}{prefix + ': ' if prefix else ''}{error}") from None


def to_dict(obj: Any) -> Any:
    """Plain, serialisable dict of a dataclass (paths become strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: unknown format (use .toml, .yaml or .yml)")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table of keys")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML (so 3, 0.5, true, [1, 2] and strings all work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a nested dict (a copy is returned)."""
    data = json.loads(json.dumps(data, default=str))
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a table")
            node = child
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load dataclass ``cls`` from an optional file, then apply ``--set`` overrides, validating all."""
    data = read_file(path) if path is not None else {}
    source = str(path) if path is not None else None
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with --set overrides)" if source else "--set overrides"
    return from_dict(cls, data, source=source)


# --------------------------------------------------------------------------- command line


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _without_none(tp: Any) -> Any:
    """``X`` for ``X | None`` (flags cannot spell None; leaving a flag out keeps the default)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of ``cls`` (defaults from the dataclass, help from metadata; the
    metadata's ``aliases`` are other spellings of the flag)."""
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = _without_none(hints[field.name])
        help_text = field.metadata.get("help", "")
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else (field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        )
        required = (
            default is None and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        shown = f" (default: {to_dict(default)})" if not required else ""
        kwargs: dict[str, Any] = {"dest": field.name, "help": help_text + shown, "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = _type_name(tp).upper() if get_origin(tp) is not Literal else None
            if get_origin(tp) is Literal:
                kwargs["choices"] = list(get_args(tp))
                kwargs.pop("metavar")
            if get_origin(tp) in (list, tuple):
                kwargs["nargs"] = "+"
        parser.add_argument(_flag(field.name), *field.metadata.get("aliases", ()), required=required, **kwargs)


def _is_text(tp: Any) -> bool:
    """True for str / Path fields (and their Optional forms): their flags are taken verbatim."""
    if tp in (str, Path):
        return True
    if get_origin(tp) in (Union, types.UnionType):
        return any(arg in (str, Path) for arg in get_args(tp))
    return False


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed flags of :func:`add_dataclass_arguments`.

    Text fields are taken verbatim; other values are parsed as YAML scalars (``3``, ``0.5``, ``true``).
    """
    hints = get_type_hints(cls)
    data: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        text = _is_text(hints[field.name])
        if isinstance(value, list):
            value = [v if text or not isinstance(v, str) else _parse_scalar(v) for v in value]
        elif isinstance(value, str) and not text:
            value = _parse_scalar(value)
        data[field.name] = value
    return from_dict(cls, data, source="command line")


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


__all__ = [
    "ConfigError",
    "bounds",
    "doc",
    "from_dict",
    "to_dict",
    "load_config",
    "apply_overrides",
    "add_dataclass_arguments",
    "dataclass_from_args",
]
