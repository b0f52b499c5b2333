"""Safe YAML reading for BAH files, which carry ``!!python/tuple`` tags.

The reference code uses ``yaml.full_load``; that constructs arbitrary Python tags and is
not safe on downloaded data. Here only the tuple tag is added to the safe loader, and a
parse error becomes a :class:`BahFormatError` naming the file, the line and the problem.
The C loader (libyaml) is used when PyYAML was built with it: the real
``video_annotation_transcript.yaml`` is about 91 MB, far too slow for the pure-Python parser.

Even libyaml takes on the order of a minute for that file, so a parsed file of at least
``CACHE_MIN_BYTES`` is kept as a pickle under ``$AHJAX_CACHE/yaml/``, keyed by the file's
absolute path, size and modification time (any edit re-parses it). ``AHJAX_YAML_CACHE=0``
turns the cache off. The pickles are written by this module only, atomically.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ahjax.core.assets import cache_dir
from ahjax.core.data.errors import BahFormatError

TUPLE_TAG = "tag:yaml.org,2002:python/tuple"
CACHE_MIN_BYTES = 4 << 20
_CACHE_VERSION = 1


def _construct_tuple(loader, node) -> tuple:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"!!python/tuple must tag a sequence, got a {node.id}", node.start_mark)
    return tuple(loader.construct_sequence(node, deep=True))


class _TopLevelLines:
    """Mixin: remember the 1-based line of each top-level mapping key (for error messages)."""

    def construct_document(self, node):
        self.top_level_lines = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    self.top_level_lines[key_node.value] = key_node.start_mark.line + 1
        return super().construct_document(node)


class BahSafeLoader(_TopLevelLines, yaml.SafeLoader):
    """``yaml.SafeLoader`` that also builds tuples from ``!!python/tuple`` (nothing else)."""


BahSafeLoader.add_constructor(TUPLE_TAG, _construct_tuple)

if getattr(yaml, "__with_libyaml__", False):
    class BahCSafeLoader(_TopLevelLines, yaml.CSafeLoader):
        """The libyaml-backed twin of :class:`BahSafeLoader` (same safe constructors)."""

    BahCSafeLoader.add_constructor(TUPLE_TAG, _construct_tuple)
    _FAST_LOADER = BahCSafeLoader
else:  # pragma: no cover - depends on how PyYAML was built
    _FAST_LOADER = BahSafeLoader


def _cache_path(path: Path) -> Path | None:
    """Where the parse of ``path`` is cached, or None (small file, cache off, no stat)."""
    if os.environ.get("AHJAX_YAML_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_size < CACHE_MIN_BYTES:
        return None
    key = f"{_CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return cache_dir() / "yaml" / (hashlib.sha1(key.encode()).hexdigest() + ".pkl")


def _load(path: Path, with_lines: bool):
    cached = _cache_path(path)
    if cached is not None and cached.is_file():
        try:
            with open(cached, "rb") as f:
                data, lines = pickle.load(f)
            return (data, lines) if with_lines else data
        except (OSError, pickle.UnpicklingError, EOFError, ValueError):
            pass  # unreadable cache entry: parse again and rewrite it
    data, lines = _parse(path)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    pickle.dump((data, lines), f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, cached)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError:
            pass  # a read-only cache only costs the next parse
    return (data, lines) if with_lines else data


def _parse(path: Path):
    try:
        with open(path, "rb") as f:
            loader = _FAST_LOADER(f)
            try:
                data = loader.get_single_data()
                lines = getattr(loader, "top_level_lines", {})
            finally:
                loader.dispose()
    except FileNotFoundError:
        raise BahFormatError("file not found", path) from None
    except yaml.MarkedYAMLError as err:
        # For an unclosed quote or bracket the context mark is where it opens (line 5) and
        # the problem mark where the parser gave up (possibly the end of the file); for a
        # block mapping the context is the whole mapping, so the problem mark is the line.
        start, found = err.context_mark, err.problem_mark
        ctx = err.context or ""
        if not ("scanning" in ctx or "flow" in ctx):
            start = None
        mark = start or found
        line = None if mark is None else mark.line + 1
        what = " ".join(s for s in (err.context, err.problem) if s) or "malformed YAML"
        if start is not None and found is not None and found.line != start.line:
            what += f" (noticed at line {found.line + 1})"
        raise BahFormatError(f"malformed YAML: {what}", path, line) from None
    except yaml.YAMLError as err:
        raise BahFormatError(f"malformed YAML: {err}", path) from None
    except UnicodeDecodeError as err:
        raise BahFormatError(f"not UTF-8 text ({err.reason} at byte {err.start})", path) from None
    return data, lines


def load_yaml(path: str | os.PathLike) -> Any:
    """Parse the YAML file at ``path`` safely (tuples allowed) and return its content.

    Raises :class:`BahFormatError` naming the file and line when it is missing or malformed.
    """
    return _load(Path(path), with_lines=False)


def load_yaml_with_lines(path: str | os.PathLike) -> tuple[Any, dict[str, int]]:
    """Like :func:`load_yaml`, also returning ``{top-level key: 1-based line}``.

    The line map lets later checks (a label array of the wrong length, a bad value under
    one video's key) point at the right place in a 91 MB file.
    """
    return _load(Path(path), with_lines=True)
