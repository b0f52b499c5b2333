"""Interpretable conflict features from level-1 affect tracks, in JAX.

Input: a dict of level-1 arrays (names and columns from ``level1_affect.schema``), ``(n, d)``
or ``(..., n, d)`` with frames on axis -2, and an optional real-frame ``mask`` ``(..., n)``.
Everything is vectorised over frames and batch and jit-able; ``fps`` may be a number or an
array of the batch shape (windows are cumulative sums indexed per frame, not kernels).

:func:`affect_tracks`: per modality a ``(..., n, 3)`` track of (valence, arousal,
confidence). :func:`conflict_features`: six groups (three cross-modal pairs, three
within-modality), each ``(..., n, k)`` with columns from :func:`feature_columns`, at
time scales :data:`SCALES_S`, confidence-weighted. docs/two_level.md ("Conflict
features") defines every track and column.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from level1_affect.schema import FACE_DESC, FACE_EXPR, TEXT_AFFECT, VOICE_PROSODY

Array = jax.Array

SCALES_S = (0.5, 2.0, 4.0)
MODALITIES = ("face", "voice", "text")
AFFECT_COLUMNS = ("valence", "arousal", "confidence")
CROSS_GROUPS = ("face_voice", "face_text", "voice_text")
WITHIN_GROUPS = ("within_face", "within_voice", "within_text")
GROUPS = CROSS_GROUPS + WITHIN_GROUPS
# Level-1 tracks the features are computed from (raw level-1 units).
TRACKS = ("face_present", "face_desc", "face_expr", "voice_prosody", "text_affect")

# (valence, arousal) per FER class, rounded from Russell's circumplex placements.
EXPR_CIRCUMPLEX = {
    "angry": (-0.6, 0.7), "disgust": (-0.7, 0.3), "fear": (-0.6, 0.7), "happy": (0.8, 0.5),
    "sad": (-0.7, -0.4), "surprise": (0.3, 0.8), "neutral": (0.0, 0.0),
}
#: Face valence is read against each sequence's own baseline by default (affect_tracks).
FACE_BASELINE = "person"
#: Floor on the face valence's standard deviation when it is z-scored (level-1 units).
FACE_VALENCE_FLOOR = 0.05
_TEXT_AROUSAL = ("nrc_anger", "nrc_anticipation", "nrc_fear", "nrc_joy", "nrc_surprise")
_EPS = 1e-6


def scale_name(seconds: float) -> str:
    """'0.5s', '2s', ... as used in column names."""
    return f"{seconds:g}s"


def feature_columns(scales: Sequence[float] = SCALES_S) -> dict[str, tuple[str, ...]]:
    """Group name -> its column names, in the order :func:`conflict_features` returns them."""
    per = {
        "cross": ("dval", "daro", "opp", "conf"),
        "within_face": ("vflip", "vsign", "vstd", "aflip", "astd", "cov"),
        "within_voice": ("vflip", "vsign", "vstd", "aflip", "astd", "pause", "cov"),
        "within_text": ("vflip", "vsign", "vstd", "cochange", "hes", "cov"),
    }
    out = {}
    for group in GROUPS:
        names = per["cross"] if group in CROSS_GROUPS else per[group]
        out[group] = tuple(f"{c}@{scale_name(s)}" for s in scales for c in names)
    return out


def _col(arr: Array, names: Sequence[str], name: str) -> Array:
    return arr[..., names.index(name)]


def _reference(tracks: Mapping[str, Array]) -> Array:
    for name in ("face_present", "face_desc", "face_expr", "voice_prosody", "text_affect"):
        if name in tracks:
            return jnp.asarray(tracks[name])
    raise ValueError(
        "conflict features need at least one of face_present, face_desc, face_expr, "
        f"voice_prosody, text_affect; got {sorted(tracks)}")


def _weighted_moments(x: Array, w: Array, causal: bool) -> tuple[Array, Array]:
    """``w``-weighted mean and variance of ``x`` over axis -1: of the whole sequence, or
    (``causal``) of frames ``0..t`` for each frame ``t`` (running sums: the past only)."""
    if causal:
        sw = jnp.cumsum(w, -1) + _EPS
        mean = jnp.cumsum(x * w, -1) / sw
        var = jnp.maximum(jnp.cumsum(x * x * w, -1) / sw - mean ** 2, 0.0)
        return mean, var
    sw = jnp.sum(w, -1, keepdims=True) + _EPS
    mean = jnp.sum(x * w, -1, keepdims=True) / sw
    return mean, jnp.sum((x - mean) ** 2 * w, -1, keepdims=True) / sw


def _weighted_centre(x: Array, w: Array, causal: bool = False, moments=None) -> Array:
    return x - (moments or _weighted_moments)(x, w, causal)[0]


def _weighted_z(x: Array, w: Array, floor: float = 0.01, causal: bool = False,
                moments=None) -> Array:
    """``x`` centred and scaled by its ``w``-weighted standard deviation over axis -1,
    the deviation floored at ``floor`` (a flat track is not blown up into noise);
    ``causal``: with the running statistics of frames ``0..t``."""
    mean, var = (moments or _weighted_moments)(x, w, causal)
    return (x - mean) / jnp.sqrt(var + floor ** 2)


def affect_tracks(tracks: Mapping[str, Array], mask: Array | None = None, *,
                  face_baseline: str = FACE_BASELINE, causal: bool = False,
                  moments=None) -> dict[str, Array]:
    """Per-modality ``(..., n, 3)`` tracks of (valence, arousal, confidence); a missing
    modality gets zeros with confidence 0, and confidence is multiplied by ``mask``.
    ``face_baseline``: ``"person"`` (face valence against the sequence's own baseline) or
    ``"raw"``; ``causal``: running statistics only; ``moments(x, w, causal) -> (mean,
    var)`` replaces them (a stream's carried state, ``level2_conflict.stateful``)."""
    if face_baseline not in ("person", "raw"):
        raise ValueError(f"face_baseline must be 'person' or 'raw', got {face_baseline!r}")
    ref = _reference(tracks)
    shape = ref.shape[:-1]
    zeros = jnp.zeros(shape, jnp.float32)
    mask = jnp.ones(shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    out = {}

    if "face_desc" in tracks:
        desc = jnp.asarray(tracks["face_desc"], jnp.float32)
        fv, fa = _col(desc, FACE_DESC, "valence"), _col(desc, FACE_DESC, "arousal")
        fc = jnp.ones(shape, jnp.float32)
    elif "face_expr" in tracks:
        probs = jnp.asarray(tracks["face_expr"], jnp.float32)
        coords = jnp.asarray([EXPR_CIRCUMPLEX[c] for c in FACE_EXPR], jnp.float32)
        fv, fa = (probs @ coords)[..., 0], (probs @ coords)[..., 1]
        fc = jnp.ones(shape, jnp.float32)
    else:
        fv, fa, fc = zeros, zeros, zeros
    if "face_present" in tracks:
        fc = fc * jnp.asarray(tracks["face_present"], jnp.float32)[..., 0]
    fc = fc * mask
    if face_baseline == "person":
        # A z-score is shift-invariant: from 0.5 (and energy from 50 dB below) the float32
        # running sums of squares stay near the spread, so the variance keeps its digits.
        fv = jnp.tanh(0.7 * _weighted_z(fv - 0.5, fc, FACE_VALENCE_FLOOR, causal, moments))
    out["face"] = (fv, _weighted_centre(fa, fc, causal, moments), fc)

    if "voice_prosody" in tracks:
        pros = jnp.asarray(tracks["voice_prosody"], jnp.float32)
        vc = _col(pros, VOICE_PROSODY, "voice_active") * mask
        pitch_z = _col(pros, VOICE_PROSODY, "pitch_z")
        if causal:
            # Level 1 z-scores log-pitch over the whole video: redo it with running
            # statistics of the voiced frames so far (scale floored at one semitone).
            hz = _col(pros, VOICE_PROSODY, "pitch_hz")
            voiced = (hz > 0).astype(jnp.float32) * mask
            # Octaves from 180 Hz: running sums of squares near 0, not near 56, so float32
            # keeps the variance (a pitch track's spread is a fraction of an octave).
            log_f0 = jnp.log2(jnp.maximum(hz, 1.0) / 180.0)
            mean, var = (moments or _weighted_moments)(log_f0, voiced, True)
            pitch_z = jnp.where(voiced > 0,
                                (log_f0 - mean) / jnp.maximum(jnp.sqrt(var), 1.0 / 12), 0.0)
        energy_z = _weighted_z(_col(pros, VOICE_PROSODY, "energy") - 50.0, vc, causal=causal,
                               moments=moments)
        vv = jnp.tanh(0.7 * pitch_z)
        va = jnp.tanh(0.7 * energy_z + 0.3 * pitch_z)
        out["voice"] = (vv, _weighted_centre(va, vc, causal, moments), vc)
    else:
        out["voice"] = (zeros, zeros, zeros)

    if "text_affect" in tracks:
        text = jnp.asarray(tracks["text_affect"], jnp.float32)
        tc = _col(text, TEXT_AFFECT, "word_present") * mask
        tv = jnp.clip(_col(text, TEXT_AFFECT, "sentiment"), -1.0, 1.0)
        ta = jnp.tanh(sum(_col(text, TEXT_AFFECT, c) for c in _TEXT_AROUSAL))
        out["text"] = (tv, _weighted_centre(ta, tc, causal, moments), tc)
    else:
        out["text"] = (zeros, zeros, zeros)
    return {m: jnp.stack(v, -1) for m, v in out.items()}


def _window_sums(cum: Array, half: Array, n: int, causal: bool = False) -> dict[str, Array]:
    """Window sums from ``cum`` (..., n + 1, K), a cumulative sum with a leading zero row,
    for half-widths ``half`` (..., S, 1): window -> (..., S, n, K). O(n) whatever the
    width; ``causal``: windows ending at the frame (docs/two_level.md, "Window sums")."""
    t = jnp.arange(n)
    cum = jnp.broadcast_to(cum[..., None, :, :],
                           half.shape[:-1] + cum.shape[-2:])            # (..., S, n+1, K)
    full = half.shape[:-1] + (n, 1)

    def total(lo, hi):
        lo = jnp.broadcast_to(jnp.clip(lo, 0, n)[..., None], full)
        hi = jnp.broadcast_to(jnp.clip(hi, 0, n)[..., None], full)
        return jnp.take_along_axis(cum, hi, -2) - jnp.take_along_axis(cum, lo, -2)

    if causal:   # the window ends at t: its older half against its recent half
        return {"centre": total(t - 2 * half, t + 1), "past": total(t - 2 * half, t - half),
                "future": total(t - half, t + 1)}
    return {"centre": total(t - half, t + half + 1), "past": total(t - half, t + 0 * half),
            "future": total(t + 0 * half, t + half)}


def _stats(sums: Array, count: Array, w: int, wx: int, wxx: int | None = None):
    """Weighted mean, weighted std and coverage from window sums of w, w x, w x^2."""
    sw = sums[..., w]
    ok = sw > _EPS
    safe = jnp.where(ok, sw, 1.0)
    mean = jnp.where(ok, sums[..., wx] / safe, 0.0)
    cov = jnp.clip(sw / jnp.maximum(count, 1.0), 0.0, 1.0)
    if wxx is None:
        return mean, None, cov
    sq = jnp.where(ok, sums[..., wxx] / safe, 0.0)
    # A variance below 1e-5 of the mean square is float32 rounding of sq - mean^2 (sums
    # over windows of a near-constant track): zero, so it does not depend on how the sums
    # were accumulated. sqrt(var + 1e-8) - 1e-4 keeps the gradient finite at zero variance.
    var = sq - mean ** 2
    var = jnp.where(var > 1e-5 * sq, var, 0.0)
    std = jnp.maximum(jnp.sqrt(var + 1e-8) - 1e-4, 0.0)
    return mean, std, cov


def conflict_features(tracks: Mapping[str, Array], fps: float | Array,
                      mask: Array | None = None,
                      scales: Sequence[float] = SCALES_S, *,
                      face_baseline: str = FACE_BASELINE, causal: bool = False
                      ) -> dict[str, Array]:
    """The six conflict feature groups, each ``(..., n, k_group)`` (columns:
    :func:`feature_columns` of ``scales``); padded frames get all-zero features.
    ``fps``: a number or an array of the batch shape; ``causal``: from the past only, so a
    frame's features never change when later frames arrive."""
    affect = affect_tracks(tracks, mask, face_baseline=face_baseline, causal=causal)
    ref = affect["face"]
    batch_shape, n = ref.shape[:-2], ref.shape[-2]
    count = jnp.ones(batch_shape + (n,), jnp.float32) if mask is None else \
        jnp.asarray(mask, jnp.float32)
    stacked, index = frame_quantities(tracks, affect, count)
    cum = jnp.concatenate([jnp.zeros(batch_shape + (1, len(index))), jnp.cumsum(stacked, -2)], -2)
    win = _window_sums(cum, window_halves(fps, scales, batch_shape), n, causal)
    return features_from_windows(win, index, count)


def window_halves(fps: float | Array, scales: Sequence[float], batch_shape=()) -> Array:
    """Half-widths in frames ``(..., S, 1)`` of the windows of ``scales`` at ``fps``."""
    fps = jnp.asarray(fps, jnp.float32)
    seconds = jnp.asarray(scales, jnp.float32)
    half = jnp.maximum(1, jnp.round(seconds * fps[..., None] / 2)).astype(jnp.int32)
    return jnp.broadcast_to(half, tuple(batch_shape) + (len(scales),))[..., None]


def frame_quantities(tracks: Mapping[str, Array], affect: Mapping[str, Array], count: Array
                     ) -> tuple[Array, dict]:
    """Every per-frame quantity a window statistic needs, ``(..., n, K)``, and name -> column."""
    zero = jnp.zeros_like(count)
    text = jnp.asarray(tracks["text_affect"], jnp.float32) if "text_affect" in tracks else None
    pros = jnp.asarray(tracks["voice_prosody"], jnp.float32) if "voice_prosody" in tracks else None
    tcol = (lambda c: _col(text, TEXT_AFFECT, c)) if text is not None else (lambda c: zero)

    # Every per-frame quantity any window statistic needs, stacked so that one cumulative
    # sum and six gathers per scale serve all of them (few ops: fast to compile and run).
    q: dict[str, Array] = {"count": count}
    for m in MODALITIES:
        v, a, w = affect[m][..., 0], affect[m][..., 1], affect[m][..., 2]
        q.update({f"{m}.w": w, f"{m}.wv": w * v, f"{m}.wvv": w * v * v,
                  f"{m}.wa": w * a, f"{m}.waa": w * a * a})
    q["pause"] = (_col(pros, VOICE_PROSODY, "pause") if pros is not None else zero) * count
    q["change"] = tcol("change_talk") * affect["text"][..., 2]
    q["sustain"] = tcol("sustain_talk") * affect["text"][..., 2]
    q["marks"] = jnp.clip(tcol("hedge") + tcol("hesitation"), 0.0, 1.0) * count
    index = {k: i for i, k in enumerate(q)}
    return jnp.stack(list(q.values()), -1), index


def features_from_windows(win: Mapping[str, Array], index: Mapping[str, int], count: Array
                          ) -> dict[str, Array]:
    """The six groups ``(..., n, k)`` from window sums (``_window_sums`` of the
    :func:`frame_quantities`, all scales at once) and the real-frame ``count`` (..., n)."""
    c_all = {k: v[..., index["count"]] for k, v in win.items()}

    def stat(m, x, which="centre", second=True):
        i = lambda k: index[f"{m}.{k}"]
        return _stats(win[which], c_all[which], i("w"), i(f"w{x}"),
                      i(f"w{x}{x}") if second else None)

    groups: dict[str, list[Array]] = {g: [] for g in GROUPS}
    vstat = {m: stat(m, "v") for m in MODALITIES}
    astat = {m: stat(m, "a") for m in MODALITIES}
    for group in CROSS_GROUPS:
        a, b = group.split("_")
        c = vstat[a][2] * vstat[b][2]
        groups[group] += [jnp.abs(vstat[a][0] - vstat[b][0]) * c,
                          jnp.abs(astat[a][0] - astat[b][0]) * c,
                          jax.nn.relu(-vstat[a][0] * vstat[b][0]) * c,
                          c]
    centre, n_real = win["centre"], jnp.maximum(c_all["centre"], 1.0)
    for m in MODALITIES:
        cols = list(_flip(stat, m, "v")) + [vstat[m][1]]
        if m in ("face", "voice"):
            cols += [_flip(stat, m, "a")[0], astat[m][1]]
        if m == "voice":
            cols.append(centre[..., index["pause"]] / n_real)
        if m == "text":
            sw = jnp.maximum(centre[..., index["text.w"]], _EPS)
            change = centre[..., index["change"]] / sw
            sustain = centre[..., index["sustain"]] / sw
            co = jnp.sqrt(jnp.clip(change, 0, None) * jnp.clip(sustain, 0, None) + 1e-8)
            cols += [co - 1e-4, centre[..., index["marks"]] / n_real]
        cols.append(vstat[m][2])
        groups[f"within_{m}"] = cols
    out = {}
    for g, cols in groups.items():
        x = jnp.maximum(jnp.stack(cols, -1), 0.0)                       # (..., S, n, k)
        x = jnp.moveaxis(x, -3, -2)                                     # (..., n, S, k)
        out[g] = x.reshape(x.shape[:-2] + (-1,)) * count[..., None]     # scale-major cols
    return out


def _flip(stat, m: str, x: str):
    """|future mean - past mean| and sign change, both x the smaller side's coverage."""
    mp, _, cp = stat(m, x, "past", second=False)
    mf, _, cf = stat(m, x, "future", second=False)
    c = jnp.minimum(cp, cf)
    return jnp.abs(mf - mp) * c, jax.nn.relu(-mp * mf) * c
