"""Strict YAML: mappings read into typed, frozen dataclasses (an unknown or missing key, a wrong type or a value
out of range is an error that names the file and the key), ``extends:`` between files, ``section.key=value``
overrides. Used by the experiment configs, the internal-coordinate configs and the system files."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration file or mapping that does not have the expected form."""


def load_yaml(path: str | Path, _chain: tuple = ()) -> dict:
    """Read a YAML mapping, with errors that name the file. A top-level ``extends: OTHER.yaml`` (relative to
    this file) reads OTHER first and lays this file over it, section by section (a mapping merges key by key,
    any other value replaces), so a study's file holds only its difference from the configuration it varies."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}" + (f" (extended by {_chain[-1]})" if _chain else ""))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected the path of another YAML file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _chain or base_path == path.resolve():
        raise ConfigError(f"{path}: extends {base} makes a cycle")
    return _merge(load_yaml(base_path, _chain + (path.resolve(),)), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
    try:
        return cls(**out)
    except ConfigError as exc:          # a range check of the dataclass: say where the value came from
        raise ConfigError(f"{where}: {exc}") from None


def check_ranges(obj, section: str, rules: dict[str, str]) -> None:
    """Range checks of a config dataclass's fields: ``rules`` maps a field name to one of
    ``'>0'``, ``'>=0'``, ``'>=-1'``, ``'>=1'``, ``'[0,1)'``, ``'[0,1]'``. A value outside its range (or not
    finite) raises :class:`ConfigError` naming ``section.key``, the value and the range."""
    import math
    tests = {">0": (lambda v: v > 0, "positive"), ">=0": (lambda v: v >= 0, ">= 0"),
             ">=-1": (lambda v: v >= -1, ">= -1"),
             ">=1": (lambda v: v >= 1, "at least 1"), "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
             "[0,1]": (lambda v: 0 <= v <= 1, "in [0, 1]")}
    for key, rule in rules.items():
        value = getattr(obj, key)
        ok, words = tests[rule]
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{section}.{key} = {value!r}: must be {words}")


def apply_overrides(data: dict, overrides: typing.Sequence[str] = ()) -> dict:
    """Apply ``section.key=value`` strings (value in YAML syntax) to a config mapping, in place, before it
    is checked, so that a mistyped key is an error like one in the file. Returns ``data``."""
    for item in overrides:
        keys, sep, value = item.partition("=")
        if not sep or not keys or any(not k for k in keys.split(".")):
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.lr.value=1e-4")
        *sections, key = keys.split(".")
        node = data
        for name in sections:
            if node.get(name) is None:
                node[name] = {}
            node = node[name]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {name!r} is not a section")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from exc
        if isinstance(node.get(key), dict) and not isinstance(parsed, dict):
            raise ConfigError(f"override {item!r}: {keys} is a section (keys {sorted(node[key])}); set one of "
                              f"its keys, e.g. {keys}.{next(iter(node[key]))}=...")
        node[key] = parsed
    return data


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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
    if hint is float and isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
        return float(value)         # YAML 1.1 reads 1e-4 and 1.0e6 (no dot or no sign) as strings
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return tuple(_check_type(v, args[0], where) for v in value)
    if hint is typing.Any:
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin is typing.Literal and value in args:
        return value
    expected = getattr(hint, "__name__", str(hint))
    if origin is typing.Literal:
        expected = f"one of {list(args)}"
    if dataclasses.is_dataclass(hint):
        expected = f"a section (a mapping of {[f.name for f in dataclasses.fields(hint)]})"
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")
