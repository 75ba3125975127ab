"""Typed, range-checked dataclass fields and their strict loading from nested dicts (params files, stored configs):
the machinery under clipcore.config's dataclasses."""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from dataclasses import field
from typing import Any, Literal

_COMPARISONS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"),
                "le": (operator.le, "<="), "lt": (operator.lt, "<")}



def bounded(default: Any, **limits: Any) -> Any:
    """A dataclass field with `default` whose value must satisfy `limits` when params load: `ge`, `gt`, `le`, `lt`
    (every element of a tuple) or `one_of`. None passes (Optional fields); a float must also be finite."""
    unknown = set(limits) - {*_COMPARISONS, "one_of"}
    if unknown:
        raise TypeError(f"unknown limit(s) {sorted(unknown)}")
    return field(default=default, metadata={"limits": limits})


def check_range(value: Any, limits: dict[str, Any], where: str) -> None:
    """Raise ValueError `"<where>: <value> is not <op> <bound>"` unless `value` satisfies `limits` (see `bounded`)."""
    for item in value if isinstance(value, tuple) else (value,):
        if item is None:
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where}: {item!r} is not a finite number")
        if "one_of" in limits and item not in limits["one_of"]:
            raise ValueError(f"{where}: {item!r} is not one of {list(limits['one_of'])}")
        for name, (compare, symbol) in _COMPARISONS.items():
            if name in limits and not compare(item, limits[name]):
                raise ValueError(f"{where}: {item!r} is not {symbol} {limits[name]}")


def check_ranges(config: Any, where: str = "params") -> None:
    """Check every bounded field of a (nested) config dataclass, e.g. one built with `dataclasses.replace`."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{where}.{f.name}")
        elif "limits" in f.metadata:
            check_range(value, f.metadata["limits"], f"{where}.{f.name}")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field annotation, converting the lossless cases (int -> float, list -> tuple)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ValueError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, t, where) for v, t in zip(value, args, strict=True))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads `1e-3` as a string
        except ValueError:
            pass
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


RENAMED = {"eval.test_images": "eval.labeled_set (the folder of both IDX files)",
           "eval.test_labels": "eval.labeled_set (the folder of both IDX files)",
           "eval.probe_images": "eval.probe_set (the folder of both IDX files)",
           "eval.probe_labels": "eval.probe_set (the folder of both IDX files)"}
"""Keys that were replaced, with what replaced them (for the unknown-key error)."""


def from_dict(cls: type, values: dict[str, Any], where: str = "params") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys, wrong types and values out of range."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        section = where.rsplit(".", 1)[-1]
        moved = "; ".join(f"{section}.{k} is now {RENAMED[f'{section}.{k}']}" for k in unknown
                          if f"{section}.{k}" in RENAMED)
        hint = f" ({moved})" if moved else ""
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}{hint}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}")
            check_range(kwargs[name], fields[name].metadata.get("limits", {}), f"{where}.{name}")
    return cls(**kwargs)
