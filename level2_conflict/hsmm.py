"""Duration prior for A/H segments: duration fitting, semi-Markov Viterbi, median filter.

State 0 = not A/H, state 1 = A/H. A labelling is a sequence of alternating segments; a
segmentation of frames ``0..n-1`` into segments ``(s_j, start_j, d_j)`` scores

    log_init[s_0] + sum_j log_dur[s_j, d_j - 1] + sum_j sum_{t in segment j} e[t, s_j]

where the last segment, cut by the end of the video, takes the survival ``log P(D >= d)``,
and ``e[t, s] = emission_weight * (log_post[t, s] - log_prior[s])`` (scaled likelihoods).
docs/two_level.md ("The semi-Markov model") gives the edge rules and why the evidence is
tempered.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

Array = jax.Array


def segment_lengths(labels: Sequence[int] | np.ndarray) -> dict[int, list[int]]:
    """Run lengths per state, ``{0: [...], 1: [...]}``, of one label sequence.

    Runs of any other value (``-1``: unlabelled) are skipped.
    """
    labels = np.asarray(labels).reshape(-1)
    out: dict[int, list[int]] = {0: [], 1: []}
    if labels.size == 0:
        return out
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [labels.size]])
    for a, b in zip(starts, ends):
        value = int(labels[a])
        if value in out:
            out[value].append(int(b - a))
    return out


def _discretised_gamma(lengths: Sequence[int], max_d: int, floor: float, name: str) -> np.ndarray:
    lengths = np.asarray(lengths, np.float64)
    if lengths.size == 0:
        raise ValueError(f"fit_durations: no {name} segments to fit a duration prior on")
    if np.any(lengths < 1):
        raise ValueError(f"fit_durations: {name} segment lengths must be >= 1")
    mean = lengths.mean()
    # Variance floor: one or a few equal lengths would give a spike that forbids any
    # other duration; a coefficient of variation of at least ~0.3 keeps it plausible.
    var = max(lengths.var(), 0.09 * mean ** 2, 1.0)
    shape, scale = mean ** 2 / var, var / mean
    edges = np.arange(max_d + 1, dtype=np.float64)
    cdf = special.gammainc(shape, edges / scale)
    pmf = np.maximum(np.diff(cdf), 0.0)
    pmf = pmf / pmf.sum() if pmf.sum() > 0 else np.full(max_d, 1.0 / max_d)
    pmf = (1.0 - floor) * pmf + floor / max_d
    return np.log(pmf)


def fit_durations(segment_lengths_pos: Sequence[int], segment_lengths_neg: Sequence[int],
                  max_d: int, floor: float = 1e-3) -> np.ndarray:
    """Duration log-pmfs ``(2, max_d)``: row 0 for state 0 (negative), row 1 for A/H; per
    class a gamma fitted by moments, discretised on 1..max_d and mixed with a uniform of
    weight ``floor`` (docs/two_level.md). Raises ValueError when a class has no segments."""
    if max_d < 1:
        raise ValueError(f"fit_durations: max_d must be >= 1, got {max_d}")
    return np.stack([_discretised_gamma(segment_lengths_neg, max_d, floor, "negative"),
                     _discretised_gamma(segment_lengths_pos, max_d, floor, "positive")]
                    ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DurationPrior:
    """Segment durations in seconds, so one prior serves videos of any frame rate.

    Per state (0: not A/H, 1: A/H) a gamma distribution fitted by moments on segment
    durations in seconds (variance floored at (0.3 mean)^2); :meth:`log_pmf` discretises it
    for a frame rate: ``P(D = d frames) = F(d / fps) - F((d - 1) / fps)`` for
    ``d = 1..ceil(max_s * fps)``, renormalised, mixed with a uniform of weight ``floor``.
    """
    shape: tuple           # (negative, A/H) gamma shapes
    scale_s: tuple         # (negative, A/H) gamma scales, seconds
    max_s: float           # longest duration represented (longer = chains of segments)
    floor: float = 1e-3

    @classmethod
    def fit(cls, pos_seconds: Sequence[float], neg_seconds: Sequence[float], max_s: float,
            floor: float = 1e-3) -> "DurationPrior":
        """Fit both states from segment durations in seconds."""
        if max_s <= 0:
            raise ValueError(f"DurationPrior: max_s must be > 0, got {max_s}")
        shapes, scales = [], []
        for name, lengths in (("negative", neg_seconds), ("positive", pos_seconds)):
            x = np.asarray(lengths, np.float64)
            if x.size == 0:
                raise ValueError(f"DurationPrior.fit: no {name} segments to fit on")
            if np.any(x <= 0):
                raise ValueError(f"DurationPrior.fit: {name} durations must be > 0")
            mean = x.mean()
            var = max(x.var(), 0.09 * mean ** 2)
            shapes.append(float(mean ** 2 / var))
            scales.append(float(var / mean))
        return cls(tuple(shapes), tuple(scales), float(max_s), float(floor))

    def max_frames(self, fps: float) -> int:
        return max(int(math.ceil(self.max_s * fps)), 1)

    def log_pmf(self, fps: float) -> np.ndarray:
        """Duration log-pmfs ``(2, ceil(max_s * fps))`` in frames at ``fps``."""
        if not fps > 0:
            raise ValueError(f"DurationPrior.log_pmf: fps must be > 0, got {fps}")
        max_d = self.max_frames(fps)
        edges = np.arange(max_d + 1, dtype=np.float64) / fps
        rows = []
        for shape, scale in zip(self.shape, self.scale_s):
            pmf = np.maximum(np.diff(special.gammainc(shape, edges / scale)), 0.0)
            pmf = pmf / pmf.sum() if pmf.sum() > 0 else np.full(max_d, 1.0 / max_d)
            rows.append(np.log((1.0 - self.floor) * pmf + self.floor / max_d))
        return np.stack(rows).astype(np.float32)

    def mean_s(self) -> tuple:
        return tuple(a * b for a, b in zip(self.shape, self.scale_s))


def log_post_from_prob(prob: Array, eps: float = 1e-6) -> Array:
    """``(n,)`` A/H probabilities -> ``(n, 2)`` clipped log posteriors."""
    p = jnp.clip(jnp.asarray(prob, jnp.float32), eps, 1.0 - eps)
    return jnp.stack([jnp.log1p(-p), jnp.log(p)], -1)


def hsmm_decode(log_post: Array, log_dur: Array, log_prior: Array, *,
                log_init: Array | None = None, emission_weight: float = 1.0,
                length: Array | int | None = None) -> Array:
    """Most probable alternating segmentation under the module's model -> labels ``(n,)``.
    ``log_post`` (n, 2) frame log posteriors; ``log_dur`` (2, max_d) duration log-pmfs;
    ``log_prior`` (2,) log class priors (also the initial distribution unless ``log_init``).
    ``length`` (may be traced): only the first ``length`` frames are the sequence, the rest
    padding (labelled 0), so videos padded to a few lengths share one compiled decoder;
    their labels equal those of the unpadded call.
    Explicit-duration Viterbi in one ``lax.scan``: O(n max_d) time; jit-able."""
    log_post = jnp.asarray(log_post, jnp.float32)
    log_dur = jnp.asarray(log_dur, jnp.float32)
    log_prior = jnp.asarray(log_prior, jnp.float32)
    log_init = log_prior if log_init is None else jnp.asarray(log_init, jnp.float32)
    n, max_d = log_post.shape[0], log_dur.shape[1]
    end = jnp.asarray(n if length is None else length, jnp.int32) - 1     # the last frame
    emis = emission_weight * (log_post - log_prior)
    cum = jnp.concatenate([jnp.zeros((1, 2)), jnp.cumsum(emis, 0)], 0)       # (n+1, 2)
    log_surv = log_survival(log_dur)
    durs = jnp.arange(1, max_d + 1)

    def forward(buf, t):
        # buf[i, s]: best score of frames 0..t-1-i ending with a complete s segment.
        start = t + 1 - durs                                              # (max_d,)
        seg = cum[t + 1][None, :] - cum[jnp.clip(start, 0, n)]            # (max_d, 2)
        prev = jnp.where((start == 0)[:, None], log_init[None, :], buf[:, ::-1])
        dur = jnp.where(t == end, log_surv, log_dur).T                    # censor the last
        cand = jnp.where((start >= 0)[:, None], prev + dur + seg, -jnp.inf)
        best = jnp.max(cand, 0)
        arg = jnp.argmax(cand, 0).astype(jnp.int32) + 1
        return jnp.concatenate([best[None], buf[:-1]], 0), (best, arg)

    buf0 = jnp.full((max_d, 2), -jnp.inf)
    _, (delta, back) = jax.lax.scan(forward, buf0, jnp.arange(n))
    last = jnp.argmax(delta[end]).astype(jnp.int32)

    def backward(carry, t):
        state, left = carry
        switch = left == 0
        new_state = jnp.where(switch, 1 - state, state)
        new_left = jnp.where(switch, back[t, new_state], left) - 1
        real = t <= end                      # padding keeps the carry and is labelled 0
        return ((jnp.where(real, new_state, state), jnp.where(real, new_left, left)),
                jnp.where(real, new_state, 0))

    _, labels = jax.lax.scan(backward, (1 - last, jnp.int32(0)), jnp.arange(n), reverse=True)
    return labels


def log_survival(log_pmf: Array, axis: int = -1) -> Array:
    """``log P(D >= d)`` from duration log-pmfs ``log P(D = d)`` along ``axis``."""
    return jax.lax.cumlogsumexp(log_pmf, axis=axis % jnp.ndim(log_pmf), reverse=True)


def duration_log_probs(shape: Array, scale_s: Array, fps: Array, n: int, *, max_s: float,
                       floor: float = 1e-3) -> tuple[Array, Array]:
    """:meth:`DurationPrior.log_pmf` in JAX for per-window frame rates ``fps`` (any batch
    shape), cut at ``n``: ``(log_pmf, log_surv)``, each ``fps.shape + (2, n)``, from gamma
    ``shape``, ``scale_s`` (2,) in seconds. Durations beyond ``ceil(max_s * fps)`` get
    about -1e9."""
    fps = jnp.asarray(fps, jnp.float32)[..., None, None]                    # (..., 1, 1)
    shape = jnp.asarray(shape, jnp.float32)[:, None]                        # (2, 1)
    scale = jnp.asarray(scale_s, jnp.float32)[:, None]
    max_d = jnp.maximum(jnp.ceil(max_s * fps), 1.0)
    d = jnp.arange(1, n + 1, dtype=jnp.float32)                             # (n,)
    cdf = lambda frames: jax.scipy.special.gammainc(shape, frames / fps / scale)  # noqa
    total = cdf(max_d)
    inside = d <= max_d
    pmf = (1.0 - floor) * (cdf(d) - cdf(d - 1)) / total + floor / max_d
    surv = (1.0 - floor) * (total - cdf(d - 1)) / total + floor * (max_d - d + 1) / max_d
    never = jnp.float32(-1e9)
    log = lambda x: jnp.where(inside, jnp.log(jnp.maximum(x, 1e-30)), never)  # noqa
    return log(pmf), log(surv)


def segment_log_partition(unary: Array, log_dur: Array, allowed: Array | None = None,
                          log_surv: Array | None = None) -> Array:
    """Log of the sum over alternating segmentations of each window: (B,).
    ``unary`` (B, W, 2) state scores; ``log_dur`` (2, max_d) or (B, 2, max_d); ``allowed``
    (B, W, 2) the states a frame may take (default: both); ``log_surv`` the survival
    (default: from ``log_dur``). A segment cut by either window end takes the survival;
    differentiable (docs/two_level.md, "The semi-Markov model")."""
    unary = jnp.asarray(unary, jnp.float32)
    b, w, _ = unary.shape
    log_dur = jnp.broadcast_to(jnp.asarray(log_dur, jnp.float32),
                               (b,) + jnp.shape(log_dur)[-2:])               # (B, 2, D)
    if log_surv is None:
        log_surv = log_survival(log_dur)
    log_surv = jnp.broadcast_to(jnp.asarray(log_surv, jnp.float32), log_dur.shape)
    # A window of w frames holds no segment longer than w.
    log_dur, log_surv = log_dur[..., :w], log_surv[..., :w]
    max_d = log_dur.shape[-1]
    if allowed is None:
        allowed = jnp.ones(unary.shape, bool)
    # Forbidden frames are counted, not set to -inf, so differences of cumulative sums
    # stay finite (inf - inf would be NaN) and the unaries keep their precision.
    zero = jnp.zeros((b, 1, 2))
    cum = jnp.concatenate([zero, jnp.cumsum(unary, 1)], 1)                     # (B, W+1, 2)
    bad = jnp.concatenate([zero, jnp.cumsum(1.0 - allowed.astype(jnp.float32), 1)], 1)
    durs = jnp.arange(1, max_d + 1)
    never = jnp.float32(-1e9)

    pmf_t, surv_t = jnp.swapaxes(log_dur, 1, 2), jnp.swapaxes(log_surv, 1, 2)  # (B, D, 2)

    def forward(buf, t):
        # buf[:, i, s]: log-sum of frames 0..t-2-i ending with a complete s segment.
        # Scores of the segment covering frames t-d..t-1, for d = 1..max_d: (B, D, 2).
        start = t - durs
        idx = jnp.clip(start, 0, w)
        forbidden = (bad[:, t][:, None] - bad[:, idx]) > 0.5
        ok = (start >= 0)[None, :, None] & ~forbidden
        seg = jnp.where(ok, cum[:, t][:, None] - cum[:, idx], never)
        # A segment starting the window is cut on its left (survival, no predecessor).
        from_start = (start == 0)[None, :, None]
        prev = jnp.where(from_start, 0.0, buf[:, :, ::-1])
        inner = seg + prev + jnp.where(from_start, surv_t, pmf_t)
        # The same frames as the window's last segment, cut on its right: survival.
        last = seg + prev + surv_t
        alpha = jax.nn.logsumexp(inner, axis=1)                               # (B, 2)
        final = jax.nn.logsumexp(last, axis=1)
        return jnp.concatenate([alpha[:, None], buf[:, :-1]], 1), final

    buf0 = jnp.full((b, max_d, 2), never)
    buf, finals = jax.lax.scan(forward, buf0, jnp.arange(1, w + 1))
    return jax.nn.logsumexp(finals[-1], axis=-1)


def semi_markov_nll(score: Array, labels: Array, valid: Array, log_dur: Array,
                    log_surv: Array | None = None) -> Array:
    """Semi-Markov CRF loss: mean over labelled frames of ``log Z - log Z(labels)``, the
    unaries ``(-score/2, score/2)`` of ``score`` (B, W); ``labels`` (B, W) 0/1 or -1
    (unlabelled: either state); ``valid`` (B, W) real frames; ``log_dur`` (2, max_d) at
    the windows' frame rate. Windows without a labelled frame add 0."""
    score = jnp.asarray(score, jnp.float32) * jnp.asarray(valid, jnp.float32)
    unary = jnp.stack([-score / 2, score / 2], -1)
    labels = jnp.asarray(labels)
    labelled = (labels >= 0) & (jnp.asarray(valid) > 0)
    allowed = jnp.stack([~labelled | (labels == 0), ~labelled | (labels == 1)], -1)
    # Both partitions in one scan: the window twice, free and constrained.
    b = unary.shape[0]
    both = lambda x: None if x is None else jnp.concatenate(  # noqa: E731
        [jnp.broadcast_to(x, (b,) + jnp.shape(x)[-2:])] * 2)
    log_z = segment_log_partition(
        jnp.concatenate([unary, unary]), both(log_dur),
        jnp.concatenate([jnp.ones_like(allowed), allowed]), both(log_surv))
    nll = log_z[:b] - log_z[b:]
    n = jnp.sum(labelled)
    return jnp.sum(jnp.where(jnp.any(labelled, 1), nll, 0.0)) / jnp.maximum(n, 1)


def median_filter(x, k: int, axis: int = 0) -> np.ndarray:
    """Running median of width ``k`` (odd) along ``axis``, edges replicated.

    Works for labels (result cast back to their integer dtype: with odd ``k`` the median
    is one of the window's values) and for probabilities. NumPy, not jitted: it runs once
    per video and a jit would compile once per video length.
    """
    if k < 1 or k % 2 == 0:
        raise ValueError(f"median_filter: k must be a positive odd number, got {k}")
    x = np.asarray(x)
    if k == 1:
        return x
    r = k // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad, mode="edge"), k, axis=axis)
    med = np.median(windows.astype(np.float32), axis=-1)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        med = np.round(med).astype(x.dtype)
    return med


class OnlineDecoder:
    """Fixed-lag semi-Markov decoding of a stream of frame posteriors (NumPy, incremental):
    :func:`hsmm_decode`'s model. ``push(prob_chunk)`` returns the labels of the frames now
    ``lag`` or more behind the newest (never revised), ``finish()`` the rest; with ``lag``
    at least the stream's length it equals the offline decoding. O(max_d) work per frame.
    """

    def __init__(self, log_dur, log_prior, *, lag: int, emission_weight: float = 1.0,
                 eps: float = 1e-6):
        if lag < 0:
            raise ValueError(f"lag={lag}: must be >= 0 frames")
        self.log_dur = np.asarray(log_dur, np.float64)
        self.log_prior = np.asarray(log_prior, np.float64)
        self.max_d = self.log_dur.shape[1]
        rev = np.logaddexp.accumulate(self.log_dur[:, ::-1], axis=1)[:, ::-1]
        self.log_surv = rev
        self.lag, self.w, self.eps = int(lag), float(emission_weight), eps
        # Frames from ``base`` on, grown by doubling, older ones dropped: cum[t - base] =
        # summed emissions of frames < t; delta[t - base] = best score of frames 0..t
        # ending a complete segment per state; back[t - base] its last duration.
        self.n = 0
        self.base = 0
        self.cum = np.zeros((1025, 2))
        self.delta = np.zeros((1024, 2))
        self.back = np.zeros((1024, 2), np.int64)
        self.n_committed = 0   # frames whose labels were returned (final)

    def _best_ending_at(self, t: int, log_dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        durs = np.arange(1, min(self.max_d, t + 1) + 1)
        start = t + 1 - durs
        b = self.base
        seg = self.cum[t + 1 - b][None, :] - self.cum[start - b]
        prev = np.where((start == 0)[:, None], self.log_prior[None, :],
                        self.delta[np.maximum(start - 1 - b, 0), ::-1])
        cand = prev + log_dur[:, :len(durs)].T + seg
        return cand.max(0), cand.argmax(0) + 1

    def _path(self, t: int) -> np.ndarray:
        """The best labels of frames ``n_committed..t`` with the last segment unfinished."""
        best, arg = self._best_ending_at(t, self.log_surv)
        state = int(np.argmax(best))
        lo = self.n_committed
        labels = np.empty(t + 1 - lo, np.int64)
        end, d = t, int(arg[state])
        while end >= lo:   # back through the segments, as far as the uncommitted frames
            labels[max(end - d + 1, lo) - lo:end + 1 - lo] = state
            end -= d
            state = 1 - state
            if end >= lo:
                d = int(self.back[end - self.base][state])
        return labels

    def _make_room(self, k: int) -> None:
        """Drop the frames no decision reads any more; grow for ``k`` more frames."""
        keep = max(0, min(self.n_committed, self.n - self.max_d - 1))
        if self.n + k - self.base > len(self.delta) and keep > self.base:
            shift, used = keep - self.base, self.n - self.base
            self.cum[:used + 1 - shift] = self.cum[shift:used + 1]
            self.delta[:used - shift] = self.delta[shift:used]
            self.back[:used - shift] = self.back[shift:used]
            self.base = keep
        if self.n + k - self.base > len(self.delta):
            size = max(2 * len(self.delta), self.n + k - self.base)
            self.cum = np.resize(self.cum, (size + 1, 2))
            self.delta = np.resize(self.delta, (size, 2))
            self.back = np.resize(self.back, (size, 2))

    def push(self, prob) -> np.ndarray:
        """Add frames; the labels newly committed (possibly none)."""
        p = np.clip(np.asarray(prob, np.float64).reshape(-1), self.eps, 1.0 - self.eps)
        self._make_room(len(p))
        emis = self.w * (np.log(np.stack([1.0 - p, p], -1)) - self.log_prior)
        i = self.n - self.base
        self.cum[i + 1:i + 1 + len(p)] = self.cum[i] + np.cumsum(emis, 0)
        for t in range(self.n, self.n + len(p)):   # each frame needs the scores before it
            self.delta[t - self.base], self.back[t - self.base] = \
                self._best_ending_at(t, self.log_dur)
        self.n = n = self.n + len(p)
        upto = n - self.lag
        if upto <= self.n_committed or n == 0:
            return np.zeros(0, np.int64)
        new = self._path(n - 1)[:upto - self.n_committed]
        self.n_committed = upto
        return new

    def finish(self) -> np.ndarray:
        """The labels of every frame not committed yet."""
        if self.n == 0 or self.n_committed == self.n:
            return np.zeros(0, np.int64)
        new = self._path(self.n - 1)
        self.n_committed = self.n
        return new
