"""Configs as code: frozen dataclasses, overridden from ``--config.a.b=value`` strings.

A config is a tree of frozen dataclasses returned by an experiment's ``get_config()``.
``apply_overrides(cfg, ["--config.train.lr=0.01"])`` returns a new tree; values are parsed
as Python literals when they parse, else kept as strings, then checked against the type
of the field they replace. ``--data.root=X`` is accepted as shorthand for
``--config.data.root=X``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from typing import Any, Iterable


class ConfigError(ValueError):
    """An override names a field that does not exist or has the wrong type."""


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(old: Any, new: Any, path: str) -> Any:
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        if isinstance(new, str) and new.lower() in ("true", "false"):
            return new.lower() == "true"
        raise ConfigError(f"{path}: expected a bool, got {new!r}")
    if isinstance(old, int) and not isinstance(old, bool):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        raise ConfigError(f"{path}: expected an int, got {new!r}")
    if isinstance(old, float):
        if not isinstance(new, (int, float)) or isinstance(new, bool):
            raise ConfigError(f"{path}: expected a float, got {new!r}")
        # A quantity is finite; only a field whose default is itself inf/nan takes one.
        if not math.isfinite(new) and math.isfinite(old):
            raise ConfigError(f"{path}={new!r}: must be a finite number")
        return float(new)
    if isinstance(old, str):
        return str(new)
    if isinstance(old, tuple):
        if isinstance(new, (list, tuple)):
            return tuple(new)
        if isinstance(new, str):
            return tuple(s for s in new.split(",") if s)
        return (new,)
    if dataclasses.is_dataclass(old):
        raise ConfigError(f"{path}: is a group of settings; set one of its fields")
    return new


def _check_json(old: Any, new: Any, path: str) -> Any:
    """``new`` (read from JSON) as the type of the default ``old``; strict: no string
    parsing, a tuple from a list whose items have the default items' type."""
    if isinstance(old, tuple):
        if not isinstance(new, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {new!r}")
        kinds = {type(x) for x in old}
        if len(kinds) == 1:
            item = old[0]
            return tuple(_check_json(item, x, f"{path}[{i}]") for i, x in enumerate(new))
        return tuple(new)
    if isinstance(old, str) and not isinstance(new, str):
        raise ConfigError(f"{path}: expected a string, got {new!r}")
    if isinstance(old, bool) and not isinstance(new, bool):
        raise ConfigError(f"{path}: expected true or false, got {new!r}")
    return _coerce(old, new, path)


def from_dict(cls: type, data: Any, where: str) -> Any:
    """A ``cls`` config (a frozen dataclass with defaults) from a dict read from JSON,
    checked: no unknown key, each value of its field's type, floats finite (unless the
    default is not); a missing key keeps its default. Raises ConfigError naming
    ``where`` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of {cls.__name__} settings, "
                          f"got {type(data).__name__}")
    default = cls()
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key ({cls.__name__} has {names})")
    values = {k: _check_json(getattr(default, k), v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def replace_path(cfg: Any, dotted: str, value: Any, _above: str = "") -> Any:
    """Return ``cfg`` with the field at ``dotted`` ("a.b.c") set to ``value``."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"cannot set {dotted!r} inside a non-config value")
    names = {f.name for f in dataclasses.fields(cfg)}
    if head not in names:
        raise ConfigError(
            f"unknown config key {head!r} in {type(cfg).__name__}; known: {sorted(names)}")
    old = getattr(cfg, head)
    new = (replace_path(old, rest, value, f"{_above}{head}.") if rest
           else _coerce(old, value, _above + dotted))
    return dataclasses.replace(cfg, **{head: new})


def apply_overrides(cfg: Any, args: Iterable[str]) -> Any:
    """Apply ``--config.a.b=value`` (or ``--a.b=value``) arguments to ``cfg``."""
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"override {arg!r} must look like --config.key=value")
        key, _, raw = arg[2:].partition("=")
        if key.startswith("config."):
            key = key[len("config."):]
        cfg = replace_path(cfg, key, _parse_value(raw))
    return cfg


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a config tree."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def debug_requested(flag: bool = False) -> bool:
    """Whether a command line should show tracebacks: its ``--debug`` ``flag`` or
    ``AHJAX_DEBUG=1`` (true, yes, on) in the environment. Every CLI asks this one function."""
    import os
    return flag or os.environ.get("AHJAX_DEBUG", "").lower() in ("1", "true", "yes", "on")

