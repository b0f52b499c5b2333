"""Safe YAML reading for BAH files, which carry ``!!python/tuple`` tags.

The reference code uses ``yaml.full_load``; that constructs arbitrary Python tags and is
not safe on downloaded data. Here only the tuple tag is added to the safe loader, and a
parse error becomes a :class:`BahFormatError` naming the file, the line and the problem.
The C loader (libyaml) is used when PyYAML was built with it: the real
``video_annotation_transcript.yaml`` is about 91 MB, far too slow for the pure-Python parser.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ahjax.data.errors import BahFormatError

TUPLE_TAG = "tag:yaml.org,2002:python/tuple"


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


def _load(path: Path, with_lines: bool):
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
        mark = err.problem_mark or err.context_mark
        line = None if mark is None else mark.line + 1
        what = " ".join(s for s in (err.context, err.problem) if s) or "malformed YAML"
        raise BahFormatError(f"malformed YAML: {what}", path, line) from None
    except yaml.YAMLError as err:
        raise BahFormatError(f"malformed YAML: {err}", path) from None
    except UnicodeDecodeError as err:
        raise BahFormatError(f"not UTF-8 text ({err.reason} at byte {err.start})", path) from None
    return (data, lines) if with_lines else data


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
