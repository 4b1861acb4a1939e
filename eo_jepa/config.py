"""Typed configs: dataclasses loaded from YAML with ``key=value`` overrides.

One mechanism for every config in the toolkit (chip builds, training, evaluation):

- the schema is a (nested) dataclass; field types are checked and coerced;
- an unknown key is an error that lists the valid keys (and the closest one);
- a ``Literal[...]`` field rejects values outside its choices, naming them;
- overrides use dotted paths: ``optim.lr=1e-3 views.num_local=4``; values are parsed as YAML
  scalars (``true``, ``1e-3``, ``[1, 2]``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from eo_jepa.errors import ConfigError, did_you_mean

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist; pass a path to a YAML file.")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {str(path)!r} must hold a mapping at the top level.")
        data = loaded
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key=value (for example optim.lr=1e-3).")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"Override {item!r} has an empty key.")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], _prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_prefix or 'config'} must be a mapping, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            where = f"{_prefix}.{key}" if _prefix else key
            raise ConfigError(
                f"Unknown config key {where!r}; valid keys{' under ' + repr(_prefix) if _prefix else ''} are: "
                f"{', '.join(sorted(fields))}.{did_you_mean(key, fields)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{_prefix}.{key}" if _prefix else key)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{_prefix or 'config'}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
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
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: value {value!r} matches none of {args}."
        )
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"Invalid value {value!r} for {where!r}; choose one of: {choices}.")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value or {}, where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where!r} must be a list, got {value!r}.")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where!r} must have {len(args)} items, got {len(value)}.")
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where!r} must be a mapping, got {value!r}.")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where!r} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where!r} must be an integer, got {value!r}.")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where!r} must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where!r} must be a string, got {value!r}.")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable dict of a config dataclass."""

    def convert(obj: Any) -> Any:
        if isinstance(obj, tuple):
            return [convert(v) for v in obj]
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return convert(dataclasses.asdict(cfg))
