"""Typed conversion of raw YAML/command-line values to the schema's field types."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from .errors import ConfigError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:  # the frozen config's sequences are lists in YAML
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _bad(where: str, key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert `value` to `tp` or raise a ConfigError naming `where` (a file) and `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: {key}: null is not allowed, expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else _bad(where, key, value, tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(
            f"{where}: {key}: invalid choice {value!r}{extra}; valid: {', '.join(str(c) for c in choices)}"
        )
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _bad(where, key, value, tp)
        return [coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is tuple:  # tuple[X, ...]: YAML gives a list, the frozen config keeps a tuple
        item_tp, rest = typing.get_args(tp)
        if rest is not Ellipsis:
            raise TypeError(f"unsupported schema type {tp!r} for {key}: use tuple[X, ...]")
        if not isinstance(value, (list, tuple)):
            raise _bad(where, key, value, tp)
        return tuple(coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, key, value, tp)
        return dict(value)
    if tp is Any:
        return value
    if value is None:
        raise ConfigError(f"{where}: {key}: null is not allowed, expected {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise _bad(where, key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise _bad(where, key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(where, key, value, tp)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(where, key, value, tp)
    if dataclasses.is_dataclass(tp):
        raise _bad(where, key, value, "a mapping")
    raise TypeError(f"unsupported schema type {tp!r} for {key}")
