"""Reader for CTranslate2 ``model.bin`` files (the format the Whisper-base asset ships in).

The file is flat little-endian binary (CTranslate2 ``models/model.cc``, binary version 6):

    uint32 binary_version, string spec_name, uint32 spec_revision, uint32 n_variables
    n_variables x (string name, uint8 rank, rank x uint32 dims, uint8 dtype,
                   uint32 n_bytes, n_bytes raw data)
    uint32 n_aliases, n_aliases x (string alias, string target)

where a string is a uint16 length that counts a trailing NUL, then the bytes. Reading
it ourselves keeps ctranslate2 (a C++ runtime) out of the dependencies.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from level1_affect.errors import MediaError

# CTranslate2 DataType enum order (include/ctranslate2/types.h); 5 and 6 are bf16/u8 in
# later releases, which base-sized Whisper files do not use but cost nothing to support.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 6: np.uint8}


@dataclass
class CT2Model:
    """The contents of a CTranslate2 model file.

    ``variables`` maps each stored name (``encoder/layer_0/...``) to a numpy array in the
    stored dtype (float16 for the Whisper asset) and includes every alias, resolved to
    the same array object, so ``variables["decoder/projection/weight"]`` works.
    """

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def n_stored(self) -> int:
        """Number of tensors physically stored in the file (aliases not counted)."""
        return len(self.variables) - len(self.aliases)


class _Cursor:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise MediaError(f"{self.path}: truncated CTranslate2 file (wanted {n} bytes at "
                             f"offset {self.pos}, size {len(self.buf)})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.u16()))
        return raw.rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | os.PathLike) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` into a :class:`CT2Model` (arrays copied out of the file).

    Raises :class:`MediaError` naming the file when it is truncated, has an unknown
    binary version or dtype, or has bytes left over after the alias table.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MediaError(f"{path}: cannot read CTranslate2 model: {exc}") from exc
    cur = _Cursor(memoryview(data), path)
    version = cur.u32()
    if version not in (5, 6):
        raise MediaError(f"{path}: unsupported CTranslate2 binary version {version} (want 5 or 6)")
    spec = cur.string()
    revision = cur.u32()
    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.u32()):
        name = cur.string()
        rank = cur.u8()
        dims = struct.unpack(f"<{rank}I", cur.take(4 * rank)) if rank else ()
        code = cur.u8()
        if code not in _DTYPES:
            raise MediaError(f"{path}: variable {name!r} has unknown dtype code {code}")
        nbytes = cur.u32()
        dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise MediaError(f"{path}: variable {name!r} holds {nbytes} bytes, shape {dims} "
                             f"of {dtype} needs {expected}")
        # copy() so the arrays do not pin the whole 145 MB buffer and are writeable.
        variables[name] = np.frombuffer(cur.take(nbytes), dtype=dtype).reshape(dims).copy()
    aliases: dict[str, str] = {}
    if cur.pos < len(data):  # binary version >= 4 always has the table, but be lenient
        for _ in range(cur.u32()):
            alias, target = cur.string(), cur.string()
            if target not in variables:
                raise MediaError(f"{path}: alias {alias!r} points at missing {target!r}")
            aliases[alias] = target
            variables[alias] = variables[target]
    if cur.pos != len(data):
        raise MediaError(f"{path}: {len(data) - cur.pos} unexpected trailing bytes")
    return CT2Model(spec, revision, version, variables, aliases)
