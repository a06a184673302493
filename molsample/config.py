"""Strict YAML configuration: typed, frozen dataclasses; an unknown or missing key is an error."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration file or mapping that does not have the expected form."""


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_dict(cls, data: dict, where: str):
    """Build dataclass ``cls`` from ``data``; unknown keys, missing keys and wrong types are errors.

    Parameters
    ----------
    cls : a dataclass type
    data : dict
    where : str
        File or section name, quoted in error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        out[key] = _check_type(value, hints[key], f"{where}: key {key!r}")
    return cls(**out)


def _check_type(value, hint, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return tuple(_check_type(v, args[0], where) for v in value)
    if hint is typing.Any:
        return value
    if origin is typing.Literal and value in args:
        return value
    expected = getattr(hint, "__name__", str(hint))
    if origin is typing.Literal:
        expected = f"one of {list(args)}"
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")
