"""The default sentence/word encoder, MiniLM (all-MiniLM-L6-v2), through ``encoders``.

``load(path)`` gives the shared :class:`level1_affect.encoders.PretrainedEncoder` (default:
the MiniLM asset); ``encode_sentences`` and ``encode_words`` use the default.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from level1_affect import encoders


def load(path: str | os.PathLike | None = None) -> encoders.PretrainedEncoder:
    """The shared encoder for ``path`` (default: the MiniLM asset), loaded once."""
    return encoders.load(path or "minilm")


def encode_sentences(texts: Sequence[str]) -> np.ndarray:
    """(n, 384) L2-normalised sentence embeddings with the default MiniLM."""
    return load().encode_sentences(texts)


def encode_words(text: str | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """``(words, (n_words, 384))`` contextual word embeddings with the default MiniLM."""
    return load().encode_words(text)
