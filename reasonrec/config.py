"""Typed configuration: dataclasses validated by pydantic, built from a YAML file and then overridden by flags.

Every verb takes one typed object (``ScoreConfig``, ``TrainToolsConfig``, ...). ``load`` is the one way to build it
from outside: YAML first, then dotted-key overrides (``{"deliberator.backend": "vllm"}``, None = not given). A bad
value, an unknown key or a YAML syntax error is a ``ConfigError`` that names the file, the key path and what was
expected.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the source, the key path and the expectation."""


def load(cls, path: str | None = None, overrides: dict | None = None, source: str | None = None):
    """``cls`` from the YAML at ``path`` (optional) with ``overrides`` (dotted keys; None values skipped)."""
    values = read_yaml(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(values, key.split("."), value)
    return from_dict(cls, values, source=source or path or "config")


def from_dict(cls, values: dict | None, source: str = "config"):
    """Validate ``values`` into dataclass ``cls`` (recursing into nested dataclasses); unknown keys are errors."""
    from pydantic import TypeAdapter, ValidationError

    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    _forbid_unknown_keys(cls)
    try:
        return TypeAdapter(cls).validate_python(dict(values or {}))
    except ValidationError as e:
        raise ConfigError(f"{source}: " + "; ".join(_describe(cls, err) for err in e.errors())) from None


def read_yaml(path: str | None) -> dict:
    if not path:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(loaded).__name__}")
    return loaded


def _set(values: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value


@functools.cache
def _forbid_unknown_keys(cls) -> None:
    """Pydantic validates stdlib dataclasses with their own config: tell each of them to refuse unknown keys."""
    from pydantic import ConfigDict

    cls.__pydantic_config__ = ConfigDict(extra="forbid")
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint):
            _forbid_unknown_keys(hint)


def _describe(cls, err: dict) -> str:
    path = ".".join(str(p) for p in err["loc"]) or cls.__name__
    if err["type"] == "unexpected_keyword_argument":
        owner = _owner(cls, err["loc"][:-1])
        known = sorted(f.name for f in dataclasses.fields(owner)) if owner else []
        return f"{path}: unknown key" + (f" (known keys of {owner.__name__}: {', '.join(known)})" if known else "")
    if err["type"] == "value_error":  # a check of the dataclass itself (__post_init__): its message says it all
        return f"{path}: {err['msg'].removeprefix('Value error, ')}"
    expected = _field_type(cls, err["loc"])
    shown = f" (type {expected})" if expected else ""
    return f"{path}: {err['msg'].replace('Input should be', 'expected')}{shown}, got {err.get('input')!r}"


def _owner(cls, loc: tuple):
    for key in loc:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        cls = hints.get(key)
    return cls if dataclasses.is_dataclass(cls) else None


def _field_type(cls, loc: tuple) -> str | None:
    owner = _owner(cls, loc[:-1]) if loc else None
    if owner is None:
        return None
    hint = typing.get_type_hints(owner).get(loc[-1])
    return getattr(hint, "__name__", None) or (str(hint).replace("typing.", "") if hint else None)
