"""Typed configs: dataclasses loaded from YAML with ``key=value`` overrides.

One mechanism for every config in the toolkit (chip builds, training, evaluation):

- the schema is a (nested) dataclass; field types are checked and coerced;
- an unknown key is an error that lists the valid keys (and the closest one);
- a ``Literal[...]`` field rejects values outside its choices, naming them;
- overrides use dotted paths: ``optim.lr=1e-3 views.num_local=4``; values are parsed as YAML
  scalars (``true``, ``1e-3``, ``[1, 2]``);
- every config class derives from :class:`Config`, whose ``__post_init__`` runs :func:`check_config`:
  the same checks apply to a config built in Python, read from YAML or given as overrides.

Declaring a new key: a number gets its allowed range with :func:`bounded`, a name or path its shape
with :func:`name_field` / :func:`path_field`; every float must be finite (NaN and inf are refused)::

    @dataclass
    class LossConfig(Config):
        section: ClassVar[str] = "loss"          # the dotted prefix errors use
        lam: float = bounded(0.05, ge=0, le=1)   # 'Invalid value 2.0 for 'loss.lam'; allowed: ...'
        num_slices: int = bounded(1024, ge=1)

Relations between keys go in a ``validate(self)`` method, which :func:`check_config` calls last.
A bad value raises :class:`~eo_jepa.errors.ConfigError` with one sentence naming the key, the
value and what is allowed; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

import yaml

from eo_jepa.errors import ConfigError, did_you_mean

T = TypeVar("T")

RANGE = "eo_jepa.range"
SHAPE = "eo_jepa.shape"


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key (each bound optional); floats must also be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, x: float) -> bool:
        return (
            math.isfinite(x)
            and (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )

    def describe(self, integer: bool) -> str:
        """Words for the range, e.g. 'an integer >= 1' or 'a finite number in [0, 1]'."""
        kind = "an integer" if integer else "a finite number"
        lo = (
            f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else ""
        )
        hi = (
            f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else ""
        )
        if lo and hi:
            return f"{kind} in {lo}, {hi}"
        if lo:
            return f"{kind} {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        if hi:
            return f"{kind} {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
        return kind


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# The shapes a string key may have: a check and the words used in the error.
SHAPES: dict[str, tuple[typing.Callable[[str], bool], str]] = {
    "name": (
        lambda s: bool(s) and s not in (".", "..") and not any(c in s for c in "/\\\0"),
        "a single folder name (not empty, no '/' or '\\', not '.' or '..')",
    ),
    "path": (lambda s: bool(s.strip()) and "\0" not in s, "a non-empty path"),
    "text": (lambda s: bool(s.strip()), "a non-empty string"),
}


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A numeric config field whose values (each item of a tuple/list) must lie in the given range.

    ``None`` stays allowed when the field's type allows it. With no bound the value only has to be
    finite (for example a nodata value).
    """
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={RANGE: Range(ge=ge, gt=gt, le=le, lt=lt)},
    )


def name_field(default: Any = dataclasses.MISSING) -> Any:
    """A string field that names a folder (a run, a dataset): one path component."""
    return dataclasses.field(default=default, metadata={SHAPE: "name"})


def path_field(default: Any = dataclasses.MISSING) -> Any:
    """A string field holding a path (or URL): non-empty."""
    return dataclasses.field(default=default, metadata={SHAPE: "path"})


def text_field(default: Any = dataclasses.MISSING) -> Any:
    """A string field that must not be empty (an architecture, a registry name, a glob)."""
    return dataclasses.field(default=default, metadata={SHAPE: "text"})


class Config:
    """Base of every config dataclass: construction checks types, ranges and shapes.

    ``section`` is the dotted prefix the error messages use for the class's keys ('' at the top).
    """

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_config(self)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_integer_type(tp: Any) -> bool:
    args = [a for a in get_args(tp) if a is not type(None)] or [tp]
    while args and get_origin(args[0]) in (tuple, list):
        args = [a for a in get_args(args[0]) if a is not Ellipsis] or [float]
    return bool(args) and args[0] is int


def check_config(obj: Any, prefix: str | None = None) -> None:
    """Coerce and check every field of config dataclass ``obj`` in place; then its ``validate()``.

    Raises :class:`ConfigError` naming the key (with its dotted prefix), the value and what is allowed.
    Nested config dataclasses are checked too (their own ``__post_init__`` already did, when they
    derive from :class:`Config`).
    """
    cls = type(obj)
    if prefix is None:
        prefix = getattr(cls, "section", "")
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        where = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        rng: Range | None = f.metadata.get(RANGE)
        coerced = _coerce_field(f, value, hints[f.name], where)
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)
        if dataclasses.is_dataclass(coerced) and not isinstance(coerced, Config):
            check_config(coerced, where)
        _check_numbers(coerced, rng or Range(), hints[f.name], where, value)
        shape = f.metadata.get(SHAPE)
        if shape is not None and isinstance(coerced, str):
            ok, words = SHAPES[shape]
            if not ok(coerced):
                raise ConfigError(f"Invalid value {coerced!r} for {where!r}; allowed: {words}.")
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def _coerce_field(f: dataclasses.Field, value: Any, tp: Any, where: str) -> Any:
    """``value`` coerced to the field's type; for a ranged field a wrong type names the range."""
    rng: Range | None = f.metadata.get(RANGE)
    try:
        return _coerce(value, tp, where)
    except ConfigError:
        if rng is None:
            raise
        raise ConfigError(
            f"Invalid value {_show(value)} for {where!r}; allowed: {rng.describe(_is_integer_type(tp))}."
        ) from None


def _check_numbers(value: Any, rng: Range, tp: Any, where: str, raw: Any) -> None:
    """Every number in ``value`` (a scalar, or the items of a tuple/list) lies in ``rng``."""
    items = value if isinstance(value, (tuple, list)) else [value]
    for x in items:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        if not rng.contains(x):
            raise ConfigError(
                f"Invalid value {_show(raw)} for {where!r}; allowed: {rng.describe(_is_integer_type(tp))}"
                + (" for each item" if isinstance(value, (tuple, list)) else "")
                + "."
            )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


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
        kwargs[key] = _coerce_field(fields[key], value, hints[key], f"{_prefix}.{key}" if _prefix else key)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{_prefix or 'config'}: {exc}") from None
    if not isinstance(obj, Config):  # a Config subclass checked itself in __post_init__
        check_config(obj, _prefix)
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
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
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
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where!r} must be a string, got {value!r}.")
        return value if isinstance(value, str) else str(value)
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
