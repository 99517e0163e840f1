"""Strict dataclass configs loaded from YAML or dicts.

Every config in the toolkit is a dataclass. ``from_dict`` builds one from a (nested) dict and
rejects unknown keys and wrong types with an error that names the key path, e.g.
``train.optim.lr: expected float, got str 'fast'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ConfigError", "from_dict", "to_dict", "load_yaml", "save_yaml", "set_path", "check_dropout"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type."""


def check_dropout(obj: Any, *names: str) -> None:
    """A ValueError naming the first of ``obj``'s dropout probabilities ``names`` outside [0, 1)
    (1 drops everything; NaN too)."""
    for name in names:
        p = getattr(obj, name)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{type(obj).__name__}.{name} is a dropout probability in [0, 1), got {p}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
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
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, _path=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{path}.<key>"): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected bool, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected str, got {type(value).__name__} {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path, got {type(value).__name__} {value!r}")
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[T], data: dict | None, _path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{_path}." if _path else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"{cls.__name__} accepts: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{_path}.{name}" if _path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key {key}")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict of builtins (paths become strings, tuples lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def set_path(data: dict, dotted: str, value: Any) -> dict:
    """Assign ``value`` at ``a.b.c`` in nested dict ``data`` (replacing whatever was there)."""
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[parts[-1]] = value
    return data


def load_yaml(cls: type[T], path: str | Path, overrides: dict | None = None) -> T:
    """Load ``cls`` from a YAML file. ``overrides`` maps dotted keys to values that replace
    the file's (``{"optim.lr": 1e-3, "model.encoder_config": {...}}``).

    A file may start from others: a top-level ``base: other.yaml`` (or a list, paths relative
    to the file) loads those first and merges this file's mappings into them key by key
    (lists and scalars replace)."""
    data = read_yaml_tree(Path(path))
    for key, value in (overrides or {}).items():
        set_path(data, key, value)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def read_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML mapping with its ``base`` files merged under it (see :func:`load_yaml`)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files include each other in a cycle")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:  # a syntax error: where, in one message
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    bases = data.pop("base", None)
    if bases is None:
        return data
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        if not isinstance(b, str):
            raise ConfigError(f"{path}: base: expected a file name or a list of them, got {b!r}")
        _merge(merged, read_yaml_tree(path.parent / b, seen + (path.resolve(),)))
    _merge(merged, data)
    return merged


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def save_yaml(obj: Any, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(obj), f, sort_keys=False)
