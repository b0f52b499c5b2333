"""The one error type for a malformed BAH tree, naming the file, the line and what is wrong."""

from __future__ import annotations

import os


class BahFormatError(ValueError):
    """A file of a BAH tree (split list, YAML, label array, path) is malformed.

    ``str(err)`` reads ``<path>:<line>: <message>`` (the line only when known), so a user
    can open the file at the right place. ``path``, ``line`` and ``message`` stay available
    as attributes for programs.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
