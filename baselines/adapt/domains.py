"""A domain: the frames of one participant (or of many), with labels and context windows."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np


Inputs = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Domain:
    """The frames of one domain (or one part of it).

    ``x`` maps modality -> (N, d) float32 rows and ``y`` holds (N,) labels (-1 = unknown);
    ``first[i]`` is the row of the first frame of row i's video, so a causal context never
    reaches into another video; ``rows`` are this domain's members. Parts of a target share
    the arrays: a test frame's context may include (unlabelled) adapt frames before it.
    """
    x: Mapping[str, np.ndarray]
    y: np.ndarray
    first: np.ndarray
    rows: np.ndarray
    name: str = ""

    @classmethod
    def from_arrays(cls, x: Mapping[str, np.ndarray] | np.ndarray, y: np.ndarray,
                    first: np.ndarray | None = None, name: str = "") -> "Domain":
        """A domain of every row; a bare array becomes modality ``"x"``; one video by default."""
        if not isinstance(x, Mapping):
            x = {"x": x}
        x = {m: np.asarray(v, np.float32) for m, v in x.items()}
        n = len(np.asarray(y))
        if any(v.ndim != 2 or v.shape[0] != n for v in x.values()):
            raise ValueError(f"every modality must be (N={n}, d): {[v.shape for v in x.values()]}")
        first = np.zeros(n, np.int64) if first is None else np.asarray(first, np.int64)
        return cls(x, np.asarray(y, np.int32), first, np.arange(n), name)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(v.shape[1]) for m, v in self.x.items()}

    @property
    def labels(self) -> np.ndarray:
        """(n,) labels of the members."""
        return self.y[self.rows]

    def part(self, positions: np.ndarray) -> "Domain":
        """The members at ``positions`` (indices into this domain's rows)."""
        return dataclasses.replace(self, rows=self.rows[np.asarray(positions, np.int64)])

    def unlabelled(self) -> "Domain":
        """The same frames with every label hidden (-1): what UDA/SFDA/TTA methods get."""
        return dataclasses.replace(self, y=np.full_like(self.y, -1))

    def inputs(self, positions: np.ndarray, context: int) -> dict[str, np.ndarray]:
        """``{modality: (B, context, d)}`` of the members at ``positions``, context causal.

        Before a video's first frame the first frame is repeated (the TCN is causal, so
        this only affects the first ``context - 1`` frames of each video).
        """
        rows = self.rows[np.asarray(positions, np.int64)]
        idx = rows[:, None] + np.arange(1 - context, 1)[None, :]
        idx = np.maximum(idx, self.first[rows][:, None])
        return {m: v[idx] for m, v in self.x.items()}
