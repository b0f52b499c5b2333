"""A deployed two-level folder (``deploy/`` of a ``two_level`` run), checked as it is read.

The parameter files are checked against the manifest written beside them (size and
sha256, :func:`ahjax.core.train.checkpoint.verify_manifest`); ``level2.json`` against its
dataclasses (:func:`ahjax.core.config.from_dict`: types, unknown keys, finite numbers), so a
damaged or hand-broken folder fails in one line naming the file and the key. A folder
saved before manifests existed is still read (its parameters then checked by orbax only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from ahjax.core.config import ConfigError, from_dict
from ahjax.core.train.checkpoint import load_params, verify_manifest, write_manifest
from level2_conflict.model import TwoLevelConfig

LEVEL2 = "level2.json"
_DURATION_KEYS = {"shape": 2, "scale_s": 2, "max_s": None, "floor": None, "class_prior": 2}


def seal(folder: Path) -> Path:
    """Write the manifest of ``folder``'s parameter files (after ``save_params``)."""
    return write_manifest(folder, "params")


def _durations(d: Any, where: str) -> dict:
    """The ``durations`` section, checked: known keys, finite numbers of the right count."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    for key in d:
        if key not in _DURATION_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key (durations has {list(_DURATION_KEYS)})")
    for key, count in _DURATION_KEYS.items():
        if key not in d:
            raise ConfigError(f"{where}.{key}: missing")
        values = d[key] if count else [d[key]]
        if not isinstance(values, list) or (count and len(values) != count):
            raise ConfigError(f"{where}.{key}: expected {count or 1} number(s), got {d[key]!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{where}.{key}: expected finite numbers, got {d[key]!r}")
    if min(d["shape"] + d["scale_s"] + [d["max_s"]]) <= 0 or min(d["class_prior"]) < 0:
        raise ConfigError(f"{where}: shape, scale_s and max_s must be > 0, class_prior >= 0")
    return d


def read_level2(folder: Path, decode_cls: type) -> tuple[TwoLevelConfig, dict, Any]:
    """``(model config, durations dict, decode config)`` of ``folder/level2.json``,
    checked; ValueError (one line, the file and key named) when it is malformed."""
    path = Path(folder) / LEVEL2
    try:
        saved = json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: "
                         f"{err.msg}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(saved).__name__}")
    if "durations" not in saved:
        raise ValueError(f"{path}: saved by an older ahjax (duration prior in frames); "
                         "retrain with python -m experiments.run two_level")
    for key in saved:
        if key not in ("model", "durations", "decode"):
            raise ValueError(f"{path}: {key}: unknown key (expected model, durations, decode)")
    model = from_dict(TwoLevelConfig, saved.get("model", {}), f"{path}: model")
    durations = _durations(saved["durations"], f"{path}: durations")
    decode = from_dict(decode_cls, saved.get("decode", {}), f"{path}: decode")
    return model, durations, decode


def read_params(build: Callable, folder: Path):
    """``build()``'s model with the parameters of ``folder/params``, the manifest checked
    first; ValueError (one line) for damaged files."""
    folder = Path(folder)
    verify_manifest(folder)
    try:
        return load_params(build, folder / "params")
    except FileNotFoundError:
        raise
    except Exception as err:   # orbax/tensorstore: many lines; keep the first
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{folder / 'params'}: unreadable parameters "
                         f"({type(err).__name__}: {first})") from None
