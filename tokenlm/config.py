"""Frozen dataclass configs filled from YAML.

A YAML file fills exactly one dataclass. It may name one other file with ``include: other.yaml``
(relative to itself); the included file's keys are the defaults and the including file's keys
override them (nested mappings are merged). Includes do not nest: an included file may not include.

Config names without a path resolve inside the package: ``load_config(CodecConfig, "codec/small")``
reads ``configs/codec/small.yaml`` that ships with tokenlm.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import TokenlmError

T = TypeVar("T")


def config_path(name: str | Path) -> Path:
    """Resolve a config name (``codec/small``) or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    if p.suffix in (".yaml", ".yml"):
        if p.parts and p.parts[0] == "configs":
            p = Path(*p.parts[1:])
    else:
        p = p.with_suffix(".yaml")
    packaged = Path(str(resources.files("tokenlm.configs"))) / p
    if packaged.exists():
        return packaged
    raise TokenlmError(f"config not found: {name}")


def read_yaml(path: str | Path, _allow_include: bool = True) -> dict[str, Any]:
    path = config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TokenlmError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise TokenlmError(f"{path}: a config must be a mapping")
    include = data.pop("include", None)
    if include is None:
        return data
    if not _allow_include:
        raise TokenlmError(f"{path}: includes do not nest (one level at most)")
    base = read_yaml(_resolve_include(path, include), _allow_include=False)
    return deep_merge(base, data)


def _resolve_include(path: Path, include: str) -> Path:
    sibling = path.parent / include
    return sibling if sibling.exists() else config_path(include)


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error, nested dataclasses recurse."""
    if not isinstance(data, dict):
        raise TokenlmError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TokenlmError(f"{where or cls.__name__}: unknown config keys {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{where or cls.__name__}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin is dict:
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise TokenlmError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def load_config(cls: type[T], name: str | Path, **overrides: Any) -> T:
    """Read a YAML config into dataclass ``cls``; keyword overrides win (nested with dicts)."""
    data = deep_merge(read_yaml(name), overrides)
    return from_dict(cls, data, where=str(name))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass config; tuples become lists."""
    return dataclasses.asdict(cfg)
