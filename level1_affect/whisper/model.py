"""Whisper weights in the layout of transformers' ``FlaxWhisperForConditionalGeneration``,
and a lean JAX forward pass over them.

Weights come from the CTranslate2 asset (``params_from_ct2``) or from an openai-whisper
state dict (``params_from_openai``); both are checked against the parameter tree that
transformers builds for the same dimensions (``param_shapes``), so every parameter is filled
with the right shape and nothing is left over.

The forward pass (``encode``, ``cross_kv``, ``decode``) is our own rather than the
transformers module because that module recomputes the cross-attention keys and values
of all 1500 encoder frames at every decoding step (about 4.7 GFLOP per token for base);
here they are computed once per window and the decoder step only touches its own cache.
``tests/test_whisper.py`` checks both against the transformers module.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ahjax.core.assets import cache_dir
from level1_affect.errors import MediaError
from level1_affect.whisper.ct2 import read_ct2

Params = dict  # nested {"model": {"encoder": ..., "decoder": ...}} of arrays

_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class WhisperDims:
    """Model dimensions (openai-whisper's ``ModelDimensions``); defaults are Whisper base."""

    n_mels: int = 80
    n_vocab: int = 51865
    n_audio_ctx: int = 1500
    n_audio_state: int = 512
    n_audio_head: int = 8
    n_audio_layer: int = 6
    n_text_ctx: int = 448
    n_text_state: int = 512
    n_text_head: int = 8
    n_text_layer: int = 6


@functools.lru_cache(maxsize=8)
def param_shapes(dims: WhisperDims) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flattened ``{path: shape}`` of the parameter tree, in the layout of transformers'
    Flax Whisper (``tests/test_whisper.py`` checks the two agree)."""
    out: dict[tuple[str, ...], tuple[int, ...]] = {}

    def norm(*path, d):
        out[path + ("scale",)] = out[path + ("bias",)] = (d,)

    def dense(*path, d_in, d_out, bias=True):
        out[path + ("kernel",)] = (d_in, d_out)
        if bias:
            out[path + ("bias",)] = (d_out,)

    def attention(*path, d):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            dense(*path, name, d_in=d, d_out=d, bias=name != "k_proj")

    def mlp(*path, d):
        dense(*path, "fc1", d_in=d, d_out=4 * d)
        dense(*path, "fc2", d_in=4 * d, d_out=d)
        norm(*path, "final_layer_norm", d=d)

    e, t = dims.n_audio_state, dims.n_text_state
    out[("model", "encoder", "conv1", "kernel")] = (3, dims.n_mels, e)
    out[("model", "encoder", "conv2", "kernel")] = (3, e, e)
    out[("model", "encoder", "conv1", "bias")] = out[("model", "encoder", "conv2", "bias")] = (e,)
    out[("model", "encoder", "embed_positions", "embedding")] = (dims.n_audio_ctx, e)
    norm("model", "encoder", "layer_norm", d=e)
    for i in range(dims.n_audio_layer):
        layer = ("model", "encoder", "layers", str(i))
        attention(*layer, "self_attn", d=e)
        norm(*layer, "self_attn_layer_norm", d=e)
        mlp(*layer, d=e)
    out[("model", "decoder", "embed_tokens", "embedding")] = (dims.n_vocab, t)
    out[("model", "decoder", "embed_positions", "embedding")] = (dims.n_text_ctx, t)
    norm("model", "decoder", "layer_norm", d=t)
    for i in range(dims.n_text_layer):
        layer = ("model", "decoder", "layers", str(i))
        for name in ("self_attn", "encoder_attn"):
            attention(*layer, name, d=t)
            norm(*layer, f"{name}_layer_norm", d=t)
        mlp(*layer, d=t)
    return out


def _fill(flat: dict, dims: WhisperDims, source: str) -> Params:
    """Check ``flat`` against the transformers tree exactly and unflatten it (float32)."""
    from flax.traverse_util import unflatten_dict
    want = param_shapes(dims)
    missing = sorted("/".join(k) for k in want if k not in flat)
    extra = sorted("/".join(k) for k in flat if k not in want)
    bad = [f"{'/'.join(k)}: {flat[k].shape} != {s}" for k, s in want.items()
           if k in flat and tuple(flat[k].shape) != s]
    if missing or extra or bad:
        raise MediaError(f"{source}: weights do not fit Whisper {dims}: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {extra[:5]} ({len(extra)}), "
                         f"wrong shapes {bad[:5]}")
    return unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()})


def dims_from_ct2(variables: dict[str, np.ndarray]) -> WhisperDims:
    """Infer the dimensions of a CTranslate2 Whisper model from its tensors."""
    def count(prefix):
        return len({m.group(1) for k in variables
                    if (m := re.match(prefix + r"/layer_(\d+)/", k))})
    n_vocab, d = variables["decoder/embeddings/weight"].shape
    return WhisperDims(
        n_mels=variables["encoder/conv1/weight"].shape[1], n_vocab=n_vocab,
        n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=variables["encoder/conv1/weight"].shape[0],
        n_audio_head=int(variables["encoder/num_heads"]), n_audio_layer=count("encoder"),
        n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0], n_text_state=d,
        n_text_head=int(variables["decoder/num_heads"]), n_text_layer=count("decoder"))


def _split_attn(out: dict, dst: tuple, get, src: str, fused: str, d: int) -> None:
    """CTranslate2 attention -> q/k/v/out_proj; ``fused`` is 'qkv' (self) or 'kv' (cross)."""
    def lin(name):
        return get(f"{src}/{name}/weight").T, get(f"{src}/{name}/bias")
    if fused == "qkv":
        w, b = lin("linear_0")
        (qw, kw, vw), (qb, _kb, vb) = np.split(w, 3, axis=1), np.split(b, 3)
        ow, ob = lin("linear_1")
    else:
        qw, qb = lin("linear_0")
        w, b = lin("linear_1")
        (kw, vw), (_kb, vb) = np.split(w, 2, axis=1), np.split(b, 2)
        ow, ob = lin("linear_2")
    # The key bias is dropped, as in Whisper itself: it adds q.b_k to every logit of a
    # query, which softmax cancels. CTranslate2 stores it as zeros.
    out[dst + ("q_proj", "kernel")], out[dst + ("q_proj", "bias")] = qw, qb
    out[dst + ("k_proj", "kernel")] = kw
    out[dst + ("v_proj", "kernel")], out[dst + ("v_proj", "bias")] = vw, vb
    out[dst + ("out_proj", "kernel")], out[dst + ("out_proj", "bias")] = ow, ob


def _taker(tensors: dict, used: set, source: str):
    """``get(name)``: the tensor as float32, recorded in ``used`` (so leftovers can be
    reported), or a MediaError naming ``source`` when it is missing."""
    def get(name):
        if name not in tensors:
            raise MediaError(f"{source}: tensor {name!r} is missing")
        used.add(name)
        return np.asarray(tensors[name], np.float32)
    return get


def params_from_ct2(variables: dict[str, np.ndarray], dims: WhisperDims | None = None,
                    source: str = "CTranslate2 model") -> Params:
    """Map CTranslate2 Whisper tensors (``ct2.read_ct2(...).variables``) onto the transformers
    Flax parameter tree. Every stored tensor must be used and every parameter filled."""
    dims = dims or dims_from_ct2(variables)
    used: set[str] = set()
    get = _taker(variables, used, source)

    out: dict = {}
    d = dims.n_audio_state
    enc, dec = ("model", "encoder"), ("model", "decoder")
    for i in (1, 2):  # torch Conv1d (out, in, k) -> flax (k, in, out)
        out[enc + (f"conv{i}", "kernel")] = get(f"encoder/conv{i}/weight").transpose(2, 1, 0)
        out[enc + (f"conv{i}", "bias")] = get(f"encoder/conv{i}/bias")
    out[enc + ("embed_positions", "embedding")] = get("encoder/position_encodings/encodings")
    out[dec + ("embed_positions", "embedding")] = get("decoder/position_encodings/encodings")
    out[dec + ("embed_tokens", "embedding")] = get("decoder/embeddings/weight")
    for side, n in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        base = ("model", side)
        out[base + ("layer_norm", "scale")] = get(f"{side}/layer_norm/gamma")
        out[base + ("layer_norm", "bias")] = get(f"{side}/layer_norm/beta")
        for i in range(n):
            src, dst = f"{side}/layer_{i}", base + ("layers", str(i))
            blocks = [("self_attention", "self_attn", "qkv")]
            if side == "decoder":
                blocks.append(("attention", "encoder_attn", "kv"))
            for cname, hname, fused in blocks:
                _split_attn(out, dst + (hname,), get, f"{src}/{cname}", fused, d)
                out[dst + (f"{hname}_layer_norm", "scale")] = get(f"{src}/{cname}/layer_norm/gamma")
                out[dst + (f"{hname}_layer_norm", "bias")] = get(f"{src}/{cname}/layer_norm/beta")
            out[dst + ("final_layer_norm", "scale")] = get(f"{src}/ffn/layer_norm/gamma")
            out[dst + ("final_layer_norm", "bias")] = get(f"{src}/ffn/layer_norm/beta")
            for j, fc in ((0, "fc1"), (1, "fc2")):
                out[dst + (fc, "kernel")] = get(f"{src}/ffn/linear_{j}/weight").T
                out[dst + (fc, "bias")] = get(f"{src}/ffn/linear_{j}/bias")
    # Scalars describe the architecture; check the ones that would change the maths.
    flags = {"decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0,
             "decoder/start_from_zero_embedding": 0}
    for name, want in flags.items():
        if name in variables:
            used.add(name)
            if int(variables[name]) != want:
                raise MediaError(f"{source}: {name}={int(variables[name])}, only {want} is supported")
    # Fully described elsewhere (head counts, GELU, tied output projection, the alignment
    # heads, which config.json lists explicitly).
    used.update({"encoder/num_heads", "decoder/num_heads", "decoder/activation",
                 "decoder/alignment_heads", "decoder/alignment_layer",
                 "decoder/projection/weight"})
    leftover = sorted(set(variables) - used)
    if leftover:
        raise MediaError(f"{source}: tensors not mapped onto the Flax model: {leftover[:8]}")
    return _fill(out, dims, source)


def params_from_openai(state: dict, dims: WhisperDims) -> Params:
    """Map an openai-whisper ``model_state_dict`` (name -> array, torch tensors converted to
    numpy by the caller) onto the transformers Flax tree for ``dims``; raises on leftovers."""
    used: set[str] = set()
    get = _taker(state, used, "openai-whisper checkpoint")

    out: dict = {}
    enc, dec = ("model", "encoder"), ("model", "decoder")
    for i in (1, 2):
        out[enc + (f"conv{i}", "kernel")] = get(f"encoder.conv{i}.weight").transpose(2, 1, 0)
        out[enc + (f"conv{i}", "bias")] = get(f"encoder.conv{i}.bias")
    out[enc + ("embed_positions", "embedding")] = get("encoder.positional_embedding")
    out[dec + ("embed_positions", "embedding")] = get("decoder.positional_embedding")
    out[dec + ("embed_tokens", "embedding")] = get("decoder.token_embedding.weight")
    for side, n, ln in (("encoder", dims.n_audio_layer, "ln_post"), ("decoder", dims.n_text_layer, "ln")):
        base = ("model", side)
        out[base + ("layer_norm", "scale")] = get(f"{side}.{ln}.weight")
        out[base + ("layer_norm", "bias")] = get(f"{side}.{ln}.bias")
        for i in range(n):
            src, dst = f"{side}.blocks.{i}", base + ("layers", str(i))
            blocks = [("attn", "self_attn")] + ([("cross_attn", "encoder_attn")] if side == "decoder" else [])
            for oname, hname in blocks:
                for o, h in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj")):
                    out[dst + (hname, h, "kernel")] = get(f"{src}.{oname}.{o}.weight").T
                    if o != "key":  # Whisper's key projection has no bias
                        out[dst + (hname, h, "bias")] = get(f"{src}.{oname}.{o}.bias")
                out[dst + (f"{hname}_layer_norm", "scale")] = get(f"{src}.{oname}_ln.weight")
                out[dst + (f"{hname}_layer_norm", "bias")] = get(f"{src}.{oname}_ln.bias")
            out[dst + ("final_layer_norm", "scale")] = get(f"{src}.mlp_ln.weight")
            out[dst + ("final_layer_norm", "bias")] = get(f"{src}.mlp_ln.bias")
            for j, fc in ((0, "fc1"), (2, "fc2")):
                out[dst + (fc, "kernel")] = get(f"{src}.mlp.{j}.weight").T
                out[dst + (fc, "bias")] = get(f"{src}.mlp.{j}.bias")
    # Non-persistent buffers some exports still carry; they hold no weights.
    used.update(k for k in state if k in ("decoder.mask", "alignment_heads"))
    leftover = sorted(set(state) - used)
    if leftover:
        raise MediaError(f"openai-whisper checkpoint: tensors not mapped: {leftover[:8]}")
    return _fill(out, dims, "openai-whisper checkpoint")


def save_params(params: Params, dims: WhisperDims, path: Path, stamp: str) -> None:
    """Write converted params as one ``.npz`` (float16, as stored upstream) atomically."""
    from flax.traverse_util import flatten_dict
    arrays = {"/".join(k): np.asarray(v, np.float16) for k, v in flatten_dict(params).items()}
    arrays["__meta__"] = np.array([str(_CACHE_VERSION), stamp, json.dumps(dataclasses.asdict(dims))])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the model itself is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_params(path: Path, stamp: str) -> tuple[Params, WhisperDims] | None:
    """Read a cache written by :func:`save_params`; None when absent, stale or unreadable."""
    from flax.traverse_util import unflatten_dict
    try:
        with np.load(path) as z:
            version, got, dims_json = z["__meta__"].tolist()
            if int(version) != _CACHE_VERSION or got != stamp:
                return None
            flat = {tuple(k.split("/")): z[k].astype(np.float32) for k in z.files if k != "__meta__"}
    except (OSError, ValueError, KeyError):
        return None
    return unflatten_dict(flat), WhisperDims(**json.loads(dims_json))


def load_ct2_params(folder: str | os.PathLike) -> tuple[Params, WhisperDims]:
    """Params and dims of the CTranslate2 Whisper model in ``folder`` (``model.bin``).

    The conversion (about a second) is cached as ``model.flax.npz`` beside the model, or
    under the ahjax cache when that folder is read-only; the cache is keyed by the model
    file's size and modification time.
    """
    src = Path(folder) / "model.bin"
    try:
        st = src.stat()
    except OSError as exc:
        raise MediaError(f"{src}: Whisper model file not found") from exc
    stamp = f"{st.st_size}:{int(st.st_mtime)}"
    candidates = [Path(folder) / "model.flax.npz",
                  cache_dir() / "whisper" / (hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:16]
                                             + ".flax.npz")]
    for cached in candidates:
        hit = load_params(cached, stamp)
        if hit is not None:
            return hit
    ct2 = read_ct2(src)
    dims = dims_from_ct2(ct2.variables)
    params = params_from_ct2(ct2.variables, dims, source=str(src))
    for cached in candidates:
        try:
            save_params(params, dims, cached, stamp)
            break
        except OSError:
            continue  # read-only folder: try the next place
    return params, dims


# ---------------------------------------------------------------- forward pass (pure JAX)

def _ln(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def _heads(x, n_head):
    """(B, T, D) -> (B, H, T, D/H)."""
    b, t, d = x.shape
    return x.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)


def _attend_heads(q, kh, vh, n_head, mask=None):
    """Attention of queries ``q`` (B, T, D) on keys/values already split into heads,
    (B, H, S, D/H); returns (output (B,T,D), logits (B,H,T,S)).

    Keys and values that are reused across decoding steps (the cross-attention ones, the
    self-attention cache) are kept in this layout so a step never copies them: the
    contractions below read them in place."""
    qh = _heads(q, n_head)
    logits = jnp.einsum("bhtd,bhsd->bhts", qh, kh) * (qh.shape[-1] ** -0.5)
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    out = jnp.einsum("bhts,bhsd->bthd", jax.nn.softmax(logits, axis=-1), vh)
    b, t, h, dh = out.shape
    return out.reshape(b, t, h * dh), logits


def _attend(q, k, v, n_head, mask=None):
    """Scaled dot-product attention; returns (output (B,T,D), logits (B,H,T,S))."""
    return _attend_heads(q, _heads(k, n_head), _heads(v, n_head), n_head, mask)


def _mlp(x, p):
    return _dense(jax.nn.gelu(_dense(x, p["fc1"]), approximate=False), p["fc2"])


def _conv(x, p, stride):
    y = jax.lax.conv_general_dilated(x, p["kernel"], (stride,), [(1, 1)],
                                     dimension_numbers=("NWC", "WIO", "NWC"))
    return y + p["bias"]


def encode(params: Params, mel: jax.Array, dims: WhisperDims) -> jax.Array:
    """Encoder: log-mel windows (B, 2*n_audio_ctx, n_mels) -> states (B, n_audio_ctx, d)."""
    p = params["model"]["encoder"]
    x = jax.nn.gelu(_conv(mel, p["conv1"], 1), approximate=False)
    x = jax.nn.gelu(_conv(x, p["conv2"], 2), approximate=False)
    x = x + p["embed_positions"]["embedding"][: x.shape[1]]
    for i in range(dims.n_audio_layer):
        lp = p["layers"][str(i)]
        h = _ln(x, lp["self_attn_layer_norm"])
        a = lp["self_attn"]
        x = x + _dense(_attend(_dense(h, a["q_proj"]), _dense(h, a["k_proj"]), _dense(h, a["v_proj"]),
                               dims.n_audio_head)[0], a["out_proj"])
        x = x + _mlp(_ln(x, lp["final_layer_norm"]), lp)
    return _ln(x, p["layer_norm"])


def cross_kv(params: Params, enc: jax.Array, dims: WhisperDims
             ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Cross-attention keys and values of every decoder layer, split into heads: two
    tuples of L arrays (B, H, S, d/H), computed once per window so decoding steps do not
    redo them. One array per layer (not a stacked one) so a step reads a layer without
    slicing a copy of it out."""
    layers = params["model"]["decoder"]["layers"]
    h = dims.n_text_head
    ks = [_heads(_dense(enc, layers[str(i)]["encoder_attn"]["k_proj"]), h) for i in range(dims.n_text_layer)]
    vs = [_heads(_dense(enc, layers[str(i)]["encoder_attn"]["v_proj"]), h) for i in range(dims.n_text_layer)]
    return tuple(ks), tuple(vs)


def empty_cache(dims: WhisperDims, batch: int, length: int | None = None):
    """Zeroed self-attention key/value cache, split into heads: two arrays
    (L, B, H, length, d/H)."""
    h = dims.n_text_head
    shape = (dims.n_text_layer, batch, h, length or dims.n_text_ctx, dims.n_text_state // h)
    return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)


def decode(params: Params, tokens: jax.Array, offset, cache, xk, xv, dims: WhisperDims,
           want_cross: bool = False):
    """Decoder on ``tokens`` (B, T) at positions ``offset .. offset+T-1``.

    ``cache`` is ``(k, v)`` from :func:`empty_cache` (or a previous call) and is returned
    updated; ``xk, xv`` come from :func:`cross_kv`. Returns ``(logits (B,T,V), cache,
    cross)`` where ``cross`` is the stack of pre-softmax cross-attention logits
    (L, B, H, T, S) when ``want_cross`` (for word timestamps), else None.
    """
    p = params["model"]["decoder"]
    ck, cv = cache
    b, t = tokens.shape
    pos = jax.lax.dynamic_slice_in_dim(p["embed_positions"]["embedding"], offset, t)
    x = p["embed_tokens"]["embedding"][tokens] + pos
    n_ctx = ck.shape[3]
    # query at position offset+i sees cached keys at positions <= offset+i
    mask = (jnp.arange(n_ctx)[None, :] <= (offset + jnp.arange(t))[:, None])[None, None]
    crosses = []
    for i in range(dims.n_text_layer):
        lp = p["layers"][str(i)]
        a = lp["self_attn"]
        h = _ln(x, lp["self_attn_layer_norm"])
        # One dynamic_update_slice on the whole stack, so XLA updates the cache in place
        # inside the decoding loop instead of copying a layer per step.
        at = (i, 0, 0, offset, 0)
        nh = dims.n_text_head
        ck = jax.lax.dynamic_update_slice(ck, _heads(_dense(h, a["k_proj"]), nh)[None], at)
        cv = jax.lax.dynamic_update_slice(cv, _heads(_dense(h, a["v_proj"]), nh)[None], at)
        x = x + _dense(_attend_heads(_dense(h, a["q_proj"]), ck[i], cv[i], nh, mask)[0],
                       a["out_proj"])
        c = lp["encoder_attn"]
        h = _ln(x, lp["encoder_attn_layer_norm"])
        out, logits = _attend_heads(_dense(h, c["q_proj"]), xk[i], xv[i], dims.n_text_head)
        x = x + _dense(out, c["out_proj"])
        if want_cross:
            crosses.append(logits)
        x = x + _mlp(_ln(x, lp["final_layer_norm"]), lp)
    x = _ln(x, p["layer_norm"])
    # output projection tied to the embedding, contracted in place (no transposed copy)
    logits = jnp.einsum("btd,vd->btv", x, p["embed_tokens"]["embedding"])
    return logits, (ck, cv), (jnp.stack(crosses) if want_cross else None)
