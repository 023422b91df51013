"""Checking one params.yaml mapping against a section's dataclass: types, ranges, choices, unknown keys.

`slic.config` declares the sections (each field's range or choices in its metadata, via `_spec`);
this module turns a YAML mapping into one, or stops with one `ConfigError` line that names the file,
the key path, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Union


class ConfigError(ValueError):
    """A params.yaml problem, worded as one line a user can act on."""


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    """Words for what a field accepts, e.g. 'an integer in [16, 1080]'."""
    meta = f.metadata
    kind = _type_name(tp)
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        return f"{kind} in [{low}, {high}]"
    if low is not None:
        return f"{kind} >= {low}"
    return kind


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list of " + _type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ") + "s"
    return str(tp)


def _coerce(value: Any, tp: Any, where: str, f: dataclasses.Field, source: str) -> Any:
    """Check one value against its annotated type and range; return it in canonical form."""
    def fail() -> ConfigError:
        return ConfigError(f"{source}: {where} = {value!r}: expected {_allowed(f, tp)}")

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, where, f, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise fail()
    elif origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise fail()
        value = tuple(value)
    meta = f.metadata
    if meta.get("choices") and not all(v in meta["choices"] for v in (value if origin is tuple else (value,))):
        raise fail()
    values = value if isinstance(value, tuple) else (value,)
    if meta.get("low") is not None and any(v < meta["low"] for v in values):
        raise fail()
    if meta.get("high") is not None and any(v > meta["high"] for v in values):
        raise fail()
    return value


def build_section(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong values (nested sections too)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'top level'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(known), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {where!r}{guess}; allowed here: {', '.join(sorted(known))}")
    kwargs = {}
    for name, f in known.items():
        if name not in raw:
            continue
        where = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_section(tp, raw[name], where, source)
        elif typing.get_origin(tp) is dict:
            kwargs[name] = build_named_sections(typing.get_args(tp)[1], raw[name], where, source)
        else:
            kwargs[name] = _coerce(raw[name], tp, where, f, source)
    return cls(**kwargs)


NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def build_named_sections(cls: type, raw: Any, prefix: str, source: str) -> dict[str, Any]:
    """A mapping name -> section `cls` (e.g. eval_sets), each checked like a section; names become stage and
    folder names, so lowercase letters, digits and underscores only. A `root` key, when `cls` has one, is required."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix} must be a mapping of name -> settings, got {raw!r}")
    built = {}
    for name, values in raw.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise ConfigError(f"{source}: {prefix}.{name}: a name must be lowercase letters, digits and underscores "
                              "(it names stages and folders), starting with a letter")
        built[name] = build_section(cls, values, f"{prefix}.{name}", source)
        if "root" in {f.name for f in dataclasses.fields(cls)} and not built[name].root:
            raise ConfigError(f"{source}: {prefix}.{name}.root is missing: set it to the folder of the set's videos")
    return built
