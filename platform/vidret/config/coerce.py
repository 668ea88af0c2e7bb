"""Strict, lossless coercion of parsed YAML values into the schema's dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from vidret.config.schema import SECRET_FIELDS, FieldError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise FieldError. Only lossless conversions (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
        raise FieldError(key, _type_name(tp), value)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise FieldError(key, _type_name(tp), value)
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise FieldError(key, "a mapping", value)
        return build(typing.cast(type, tp), value, key)
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """The first member of the union ``tp`` that takes ``value``; None only where the union allows it."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise FieldError(key, _type_name(tp), value)
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except FieldError:
            continue
    raise FieldError(key, _type_name(tp), value)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """bool, int, float (from int too) and str; bool is never taken for a number."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is float and is_number:
        try:
            return float(value)
        except OverflowError:  # an int beyond float range; too long to quote
            raise FieldError(key, "a float within float range (|x| < 1.8e308)") from None
    if tp is str and isinstance(value, str):
        return value
    if tp in (bool, int, float, str):
        raise FieldError(key, tp.__name__, value)
    raise AssertionError(f"unsupported config type {tp!r} at {key}")


def build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        # An empty, padded or non-string key (``train..lr``, ``1:``) is quoted so the message shows it.
        shown = k if isinstance(k, str) and k and k.strip() == k else repr(k)
        key = f"{prefix}.{shown}" if prefix else shown
        if k not in names:
            raise FieldError(key, f"a known key (one of: {', '.join(sorted(names))})")
        try:
            kwargs[k] = _coerce(v, hints[k], key)
        except FieldError as e:
            if k in SECRET_FIELDS:  # never echo a credential, even a mistyped one
                raise FieldError(e.key, f"{e.expected} (the value is not shown)") from None
            raise
    return cls(**kwargs)
