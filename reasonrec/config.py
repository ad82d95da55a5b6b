"""Typed configuration: dataclasses built from a YAML file, then overridden by command-line flags."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml


def from_dict(cls, values: dict | None):
    """Build dataclass ``cls`` from a dict, recursing into nested dataclass fields; unknown keys are errors."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            values[name] = from_dict(hint, value)
        elif isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)


def load_yaml(path: str | None) -> dict:
    if not path:
        return {}
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded
