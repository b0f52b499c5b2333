"""Sentence and word encoders of the BERT family (BERT/MiniLM, MPNet) in Flax NNX.

``load("minilm" | "mpnet" | folder)`` gives a :class:`PretrainedEncoder`: weights read from a
folder in transformers' layout (``config.json``, ``model.safetensors``, ``tokenizer.json``),
run by our own NNX :class:`Encoder`. ``encode_sentences`` mean-pools and L2-normalises as
sentence-transformers does; ``encode_words`` gives contextual vectors per word. Batches are
padded to a few bucketed lengths and power-of-two row counts, so jit compiles a handful
of shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from ahjax.core import assets
from level1_affect.loading import LOAD_LOCK

NAMED = ("minilm", "mpnet")          # encoders that ship as assets
_WORD_RE = re.compile(r"\S+")
_BUCKETS = (16, 32, 64, 128, 256, 384, 512)
_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The architecture read from ``config.json`` (``kind``: ``bert`` or ``mpnet``)."""
    kind: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    pad_token_id: int
    type_vocab_size: int = 0
    relative_attention_num_buckets: int = 0

    @classmethod
    def from_file(cls, path: Path) -> "EncoderConfig":
        """Parse a transformers ``config.json``; ValueError naming the file and key."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable JSON config ({err})") from None
        kind = raw.get("model_type")
        if kind not in ("bert", "mpnet"):
            raise ValueError(f"{path}: model_type {kind!r} is not read here (bert or mpnet)")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} (only gelu is read)")
        try:
            return cls(
                kind=kind, vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                pad_token_id=int(raw.get("pad_token_id", 0) or 0),
                type_vocab_size=int(raw.get("type_vocab_size", 0)) if kind == "bert" else 0,
                relative_attention_num_buckets=(
                    int(raw.get("relative_attention_num_buckets", 32)) if kind == "mpnet" else 0))
        except KeyError as err:
            raise ValueError(f"{path}: missing key {err.args[0]!r}") from None


# ------------------------------- network ------------------------------------------------
class Layer(nnx.Module):
    """One post-LayerNorm encoder layer: self-attention, then a GELU feed-forward."""

    def __init__(self, dim: int, hidden: int, heads: int, eps: float, dropout: float,
                 rngs: nnx.Rngs):
        self.heads = heads
        self.query, self.key, self.value, self.attn_out = (
            nnx.Linear(dim, dim, rngs=rngs) for _ in range(4))
        self.attn_norm = nnx.LayerNorm(dim, epsilon=eps, rngs=rngs)
        self.up = nnx.Linear(dim, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, dim, rngs=rngs)
        self.out_norm = nnx.LayerNorm(dim, epsilon=eps, rngs=rngs)
        # No random stream without dropout: a frozen encoder's state is its weights only.
        self.drop = nnx.Dropout(dropout, rngs=rngs if dropout > 0 else None)

    def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        b, n, d = x.shape
        split = lambda z: z.reshape(b, n, self.heads, d // self.heads)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads)
        if bias is not None:
            logits = logits + bias
        logits = logits + jnp.where(mask[:, None, None, :] > 0, 0.0, -1e9)
        att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v).reshape(b, n, d)
        x = self.attn_norm(self.drop(self.attn_out(att)) + x)
        return self.out_norm(self.drop(self.down(jax.nn.gelu(self.up(x), approximate=False))) + x)


def relative_buckets(n: int, num_buckets: int, max_distance: int = 128) -> np.ndarray:
    """(n, n) MPNet's bucket of each key position relative to each query position."""
    rel = np.arange(n)[None, :] - np.arange(n)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half     # the sign of -rel picks the half
    dist = np.abs(rel)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(dist, 1) / exact) / math.log(max_distance / exact)
                         * (half - exact)).astype(np.int64)
    out += np.where(dist < exact, dist, np.minimum(large, half - 1))
    return out


class RelativeBias(nnx.Module):
    """MPNet's learned relative-position bias, shared by every layer: (1, heads, n, n)."""

    def __init__(self, buckets: int, heads: int, rngs: nnx.Rngs):
        self.table = nnx.Embed(buckets, heads, rngs=rngs)
        self.buckets = buckets

    def __call__(self, n: int) -> jax.Array:
        return self.table(jnp.asarray(relative_buckets(n, self.buckets))).transpose(2, 0, 1)[None]


class EncoderNet(nnx.Module):
    """Embeddings + layers; ``__call__(ids, mask, segments, layer)`` -> states after
    ``layer`` layers (0: the embeddings), (b, n, hidden)."""

    def __init__(self, config: EncoderConfig, rngs: nnx.Rngs, dropout: float = 0.0):
        c = self.config = config
        self.word = nnx.Embed(c.vocab_size, c.hidden_size, rngs=rngs)
        self.position = nnx.Embed(c.max_position_embeddings, c.hidden_size, rngs=rngs)
        self.token_type = (nnx.Embed(c.type_vocab_size, c.hidden_size, rngs=rngs)
                           if c.type_vocab_size else None)
        self.emb_norm = nnx.LayerNorm(c.hidden_size, epsilon=c.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([
            Layer(c.hidden_size, c.intermediate_size, c.num_attention_heads, c.layer_norm_eps,
                  dropout, rngs) for _ in range(c.num_hidden_layers)])
        self.rel = (RelativeBias(c.relative_attention_num_buckets, c.num_attention_heads, rngs)
                    if c.relative_attention_num_buckets else None)

    def embed(self, ids: jax.Array, mask: jax.Array, segments: jax.Array | None) -> jax.Array:
        """(b, n, hidden) input embeddings (positions as the architecture numbers them)."""
        if self.config.kind == "mpnet":   # padding-aware positions after the pad index
            positions = jnp.cumsum(mask, 1) * mask + self.config.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = self.word(ids) + self.position(positions)
        if self.token_type is not None:
            x = x + self.token_type(jnp.zeros_like(ids) if segments is None else segments)
        return self.emb_norm(x)

    def position_bias(self, n: int) -> jax.Array | None:
        """The attention bias every layer adds (MPNet), or None."""
        return None if self.rel is None else self.rel(n)

    def __call__(self, ids, mask, segments=None, layer: int | None = None) -> jax.Array:
        x = self.embed(ids, mask, segments)
        bias = self.position_bias(ids.shape[1])
        for block in list(self.layers)[:self.config.num_hidden_layers if layer is None else layer]:
            x = block(x, mask, bias)
        return x


# ------------------------------- weights ------------------------------------------------
def _torch_names(config: EncoderConfig) -> dict[str, tuple]:
    """``{safetensors name: (module path, attribute)}`` for every weight we read."""
    out: dict[str, tuple] = {
        "embeddings.word_embeddings.weight": (("word",), "embedding"),
        "embeddings.position_embeddings.weight": (("position",), "embedding"),
        "embeddings.LayerNorm.weight": (("emb_norm",), "scale"),
        "embeddings.LayerNorm.bias": (("emb_norm",), "bias"),
    }
    if config.type_vocab_size:
        out["embeddings.token_type_embeddings.weight"] = (("token_type",), "embedding")
    if config.kind == "mpnet":
        out["encoder.relative_attention_bias.weight"] = (("rel", "table"), "embedding")
        att = {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
               "attn_out": "attention.attn.o", "attn_norm": "attention.LayerNorm"}
    else:
        att = {"query": "attention.self.query", "key": "attention.self.key",
               "value": "attention.self.value", "attn_out": "attention.output.dense",
               "attn_norm": "attention.output.LayerNorm"}
    names = {**att, "up": "intermediate.dense", "down": "output.dense",
             "out_norm": "output.LayerNorm"}
    for i in range(config.num_hidden_layers):
        for ours, theirs in names.items():
            norm = ours.endswith("norm")
            out[f"encoder.layer.{i}.{theirs}.weight"] = (("layers", i, ours),
                                                         "scale" if norm else "kernel")
            out[f"encoder.layer.{i}.{theirs}.bias"] = (("layers", i, ours), "bias")
    return out


def load_weights(model: EncoderNet, path: Path) -> None:
    """Fill ``model`` from ``path`` (a safetensors file); ValueError on any mismatch."""
    tensors = load_file(str(path))
    for prefix in ("bert.", "mpnet.", "model."):   # task checkpoints nest the encoder
        if not any(k.startswith("embeddings.") for k in tensors):
            tensors = {k[len(prefix):] if k.startswith(prefix) else k: v
                       for k, v in tensors.items()}
    want = _torch_names(model.config)
    missing = [k for k in want if k not in tensors]
    if missing:
        raise ValueError(f"{path}: lacks {len(missing)} weights of a {model.config.kind} "
                         f"encoder, e.g. {missing[:3]}")
    for name, (where, attr) in want.items():
        module = model
        for step in where:
            module = module[step] if isinstance(step, int) else getattr(module, step)
        array = np.asarray(tensors[name], np.float32)
        if attr == "kernel":
            array = array.T                       # torch Linear stores (out, in)
        param = getattr(module, attr)
        if param.get_value().shape != array.shape:
            raise ValueError(f"{path}: {name} has shape {array.shape}, expected "
                             f"{param.get_value().shape}")
        param.set_value(jnp.asarray(array))
    unset = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model))
             if isinstance(v, jax.ShapeDtypeStruct)]
    if unset:
        raise ValueError(f"{path}: no weights for {len(unset)} arrays of the "
                         f"{model.config.kind} encoder, e.g. {unset[:3]}")


def check_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it holds an encoder we can load; FileNotFoundError naming
    what it lacks."""
    path = Path(path)
    for name in _FILES:
        if not (path / name).exists():
            raise FileNotFoundError(f"encoder folder {path} lacks {name} (a BERT or MPNet "
                                    "model in transformers' format is needed)")
    return path


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """The folder of ``minilm``/``mpnet`` (the cached assets) or of a user's encoder."""
    name = str(name_or_path or "minilm")
    if name in NAMED:
        return assets.fetch(name)
    return check_folder(name)


# ------------------------------- encoder with its tokenizer -----------------------------
class PretrainedEncoder:
    """An encoder with its tokenizer and jitted, bucketed forward passes.

    ``config.num_hidden_layers``, ``tokenizer``, ``cls_id``/``sep_id`` and ``model`` (the
    NNX :class:`EncoderNet`) are public; ``dim`` is the vector size.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = 32,
                 max_length: int | None = None):
        self.path = check_folder(path)
        self.config = EncoderConfig.from_file(self.path / "config.json")
        # Built abstract (shapes only), then filled from the file: no random initialisation
        # of ~100M parameters that the weights would overwrite (6 s of a first load).
        self.model = nnx.eval_shape(lambda: EncoderNet(self.config, nnx.Rngs(0)))
        load_weights(self.model, self.path / "model.safetensors")
        self.dim = self.config.hidden_size
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        mpnet = self.config.kind == "mpnet"
        self.cls_id = self._token_id("<s>" if mpnet else "[CLS]")
        self.sep_id = self._token_id("</s>" if mpnet else "[SEP]")
        self.batch_size = batch_size
        limit = self.config.max_position_embeddings - (self.config.pad_token_id + 1 if mpnet else 0)
        st = self.path / "sentence_bert_config.json"
        if max_length is None and st.exists():
            max_length = int(json.loads(st.read_text()).get("max_seq_length", limit))
        self.max_length = min(max_length or limit, limit)
        self.buckets = tuple(b for b in _BUCKETS if b < self.max_length) + (self.max_length,)
        self.id = f"{self.config.kind}:{_digest(self.path / 'model.safetensors')}"
        graph, state = nnx.split(self.model)

        @functools.partial(jax.jit, static_argnames="layer")
        def hidden(state, ids, mask, segments, layer):
            return nnx.merge(graph, state)(ids, mask, segments, layer)

        self._state, self._hidden = state, hidden

    def _token_id(self, token: str) -> int:
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"{self.path}/tokenizer.json has no {token!r} token")
        return found

    def pair(self, first: Sequence[int], second: Sequence[int]) -> tuple[list[int], list[int]]:
        """Ids of a sequence pair with the architecture's specials, and segment ids (1 on
        ``second`` and its closing separator)."""
        if self.config.kind == "mpnet":   # <s> A </s></s> B </s>
            ids = [self.cls_id, *first, self.sep_id, self.sep_id, *second, self.sep_id]
            return ids, [0] * (len(first) + 3) + [1] * (len(second) + 1)
        ids = [self.cls_id, *first, self.sep_id, *second, self.sep_id]
        return ids, [0] * (len(first) + 2) + [1] * (len(second) + 1)

    def token_states(self, seqs: Sequence[Sequence[int]], segments: Sequence[Sequence[int]],
                     layer: int) -> list[np.ndarray]:
        """Token vectors (len_i, dim) after ``layer`` layers (0: embeddings) for id
        sequences that already hold their specials; longer than ``max_length`` is refused."""
        if not 0 <= layer <= self.config.num_hidden_layers:
            raise ValueError(f"layer={layer}: the encoder has {self.config.num_hidden_layers} layers")
        if any(len(s) > self.max_length for s in seqs):
            raise ValueError(f"a sequence is longer than {self.max_length} tokens")
        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        pad = self.config.pad_token_id
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            length = next(L for L in self.buckets if L >= max(len(seqs[i]) for i in idx))
            rows = min(self.batch_size, 1 << (len(idx) - 1).bit_length())
            ids = np.full((rows, length), pad, np.int32)
            mask, seg = np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32)
            for row, i in enumerate(idx):
                ids[row, :len(seqs[i])] = seqs[i]
                mask[row, :len(seqs[i])] = 1
                seg[row, :len(seqs[i])] = segments[i]
            hidden = np.asarray(self._hidden(self._state, ids, mask, seg, layer), np.float32)
            for row, i in enumerate(idx):
                out[i] = hidden[row, :len(seqs[i])]
        return out  # type: ignore[return-value]

    def _run(self, seqs: list[list[int]]) -> list[np.ndarray]:
        return self.token_states(seqs, [[0] * len(s) for s in seqs],
                                 self.config.num_hidden_layers)

    def encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 mean-pooled, L2-normalised embeddings (truncated to max_length)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        room = self.max_length - 2
        seqs = [[self.cls_id] + e.ids[:room] + [self.sep_id]
                for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        pooled = np.stack([h.mean(axis=0) for h in self._run(seqs)])
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)

    def encode_words(self, text: str | Sequence[str]) -> tuple[list[str], np.ndarray]:
        """``(words, (n_words, dim))``: each word's mean sub-token vector (zero if it has
        no token); ``text`` is split on whitespace, or is a list of words."""
        if isinstance(text, str):
            spans = [(m.start(), m.end()) for m in _WORD_RE.finditer(text)]
            words, joined = [text[a:b] for a, b in spans], text
        else:
            words = [w.strip() for w in text if w and w.strip()]
            spans, pos = [], 0
            for w in words:
                spans.append((pos, pos + len(w)))
                pos += len(w) + 1
            joined = " ".join(words)
        vectors = np.zeros((len(words), self.dim), np.float32)
        if not words:
            return words, vectors
        enc = self.tokenizer.encode(joined, add_special_tokens=False)
        if not enc.ids:
            return words, vectors
        starts = np.array([a for a, _ in spans])
        tok_word = np.searchsorted(starts, [o[0] for o in enc.offsets], side="right") - 1
        counts = np.bincount(tok_word, minlength=len(words)).astype(np.float32)
        np.add.at(vectors, tok_word, self._token_vectors(enc.ids))
        vectors /= np.maximum(counts, 1.0)[:, None]
        return words, vectors

    def cached_sentences(self, texts: Sequence[str], cache: str | os.PathLike) -> np.ndarray:
        """:meth:`encode_sentences` through an on-disk cache (``cache/<encoder id>``, one
        row per text), so each text is encoded once across runs."""
        return cached_rows(texts, Path(cache) / self.id, self.id, self.dim, self.encode_sentences)

    def _token_vectors(self, ids: list[int]) -> np.ndarray:
        """(len(ids), dim) contextual vectors for a token stream of any length: overlapping
        windows, each token taken from the window where it sits most centrally."""
        room = self.max_length - 2
        if len(ids) <= room:
            return self._run([[self.cls_id] + ids + [self.sep_id]])[0][1:-1]
        stride = room * 3 // 4
        starts = list(range(0, len(ids) - room, stride)) + [len(ids) - room]
        hidden = self._run([[self.cls_id] + ids[s:s + room] + [self.sep_id] for s in starts])
        out = np.zeros((len(ids), self.dim), np.float32)
        best = np.full(len(ids), -1)
        for s, h in zip(starts, hidden):
            pos = np.arange(s, s + room)
            centrality = np.minimum(pos - s, s + room - 1 - pos)
            take = centrality > best[pos]
            out[pos[take]] = h[1:-1][take]
            best[pos[take]] = centrality[take]
        return out


def _digest(path: Path) -> str:
    """A short content id of a weight file (size and the sha256 of its first 4 MB)."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 22))
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _load(path: str) -> PretrainedEncoder:
    return PretrainedEncoder(path)


def load(name_or_path: str | os.PathLike | None = None) -> PretrainedEncoder:
    """The shared encoder ``minilm`` (default), ``mpnet`` or a folder, loaded once per
    process (thread-safe)."""
    path = str(resolve(name_or_path))
    with LOAD_LOCK:
        return _load(path)


def cached_rows(texts: Sequence[str], cache: str | os.PathLike, salt: str, dim: int,
                compute) -> np.ndarray:
    """(n, dim) rows for ``texts``, one ``.npy`` per text in ``cache`` keyed by ``salt`` and
    the text; ``compute(distinct missing texts) -> (m, dim)`` runs only for what is
    missing. Writes are atomic."""
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
