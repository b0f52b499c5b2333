"""The causal two-level model chunk by chunk: a carried state instead of the whole past.

A causal model's frame ``t`` depends on frames ``0..t`` only through what
:func:`init_state` holds and :func:`step` carries from chunk to chunk: ``moments``, the
running sums of every per-video normalisation of ``features.affect_tracks`` in the order
it computes them; ``quantities``, the last frames of the per-frame quantities the widest
causal conflict window sums; ``conv``, each dilated convolution's receptive field into
the past. ``step`` takes a fixed-size block of new frames (the first ``n_valid`` real)
and compiles once per block size. :class:`LiveScorer` runs it over a stream whose newest
rows may still be revised, resuming from the last state whose rows are final. The values
equal ``TrainedTwoLevel.scores`` on the whole prefix up to float32 rounding
(docs/live.md, "How it works").
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from level1_affect.schema import ARRAYS
from level2_conflict import features as feats
from level2_conflict.features import TRACKS
from level2_conflict.model import AFFECT_KEYS, TCN, TwoLevelModel

N_MOMENTS = 6   # running statistics of the causal affect_tracks with every track present


def history_frames(scales, fps: float) -> int:
    """Frames of quantity history the widest causal window needs at ``fps``."""
    return 2 * max(max(1, int(round(s * fps / 2))) for s in scales)


class _Carried:
    """``affect_tracks``' running moments continued from carried sums, in call order."""

    def __init__(self, sums: jax.Array):
        self.sums, self.out = sums, []

    def __call__(self, x, w, causal):
        s0 = self.sums[len(self.out)]
        sw = jnp.cumsum(w, -1) + s0[0]
        sx = jnp.cumsum(x * w, -1) + s0[1]
        sxx = jnp.cumsum(x * x * w, -1) + s0[2]
        # Padding rows have zero weight, so the last row holds the last real frame's sums.
        self.out.append(jnp.stack([sw[..., -1], sx[..., -1], sxx[..., -1]], -1).reshape(3))
        mean = sx / (sw + feats._EPS)
        return mean, jnp.maximum(sxx / (sw + feats._EPS) - mean ** 2, 0.0)


def init_state(model: TwoLevelModel, history: int) -> dict:
    """The state before a stream's first frame (zeros: what the causal padding reads)."""
    tcns = _tcns(model)
    dummy = {k: jnp.zeros((1, 1, d)) for k, d in _widths().items()}
    _, index = feats.frame_quantities(dummy, feats.affect_tracks(dummy), jnp.ones((1, 1)))
    return {"moments": jnp.zeros((N_MOMENTS, 3), jnp.float32),
            "quantities": jnp.zeros((history, len(index)), jnp.float32),
            "conv": {name: [jnp.zeros((conv.span, conv.kernel.shape[1]), jnp.float32)
                            for conv in tcn.convs] for name, tcn in tcns.items()}}


def _widths() -> dict:
    return {k: ARRAYS[k][0] for k in TRACKS}


def _tcns(model: TwoLevelModel) -> dict:
    out = {g: model.branches[g] for g in model.groups}
    if model.remainder is not None:
        out["remainder"] = model.remainder
    return out


def _tcn_step(tcn: TCN, bufs: list, x, mask, n_valid) -> tuple[jax.Array, list]:
    """``TCN.hidden`` (eval) of new frames ``x`` (1, P, k) given the previous inputs of
    each convolution; returns the hidden state and the updated buffers."""
    m = mask[..., None]
    h = tcn.inp(x) * m
    new = []
    for conv, mix, buf in zip(tcn.convs, tcn.mixes, bufs):
        xp = jnp.concatenate([buf[None], h], -2)
        y = nnx.gelu(conv.padded(xp))   # dropout is the identity at inference
        new.append(jax.lax.dynamic_slice_in_dim(xp[0], n_valid, conv.span, 0))
        h = (h + mix(y)) * m
    return h, new


def step(model: TwoLevelModel, state: dict, rows: Mapping[str, jax.Array], n_valid,
         half) -> tuple[dict, dict]:
    """New frames through the causal model: ``rows`` (track -> (P, d), frames from
    ``n_valid`` on padding), ``half`` (S,) window half-widths in frames. Returns the new
    state (after the ``n_valid`` real frames) and ``prob``, ``remainder`` (P,) and
    ``contributions`` (group -> (P,))."""
    p = next(iter(rows.values())).shape[0]
    mask = (jnp.arange(p) < n_valid).astype(jnp.float32)[None]
    tracks = {k: jnp.asarray(v, jnp.float32)[None] for k, v in rows.items()}
    carried = _Carried(state["moments"])
    affect = feats.affect_tracks(tracks, mask, causal=True, moments=carried)
    moments = jnp.stack(carried.out + [state["moments"][k]
                                       for k in range(len(carried.out), N_MOMENTS)])
    q, index = feats.frame_quantities(tracks, affect, mask)
    hist = state["quantities"]
    length = hist.shape[0]
    allq = jnp.concatenate([hist[None], q], -2)
    cum = jnp.concatenate([jnp.zeros((1, 1, allq.shape[-1])), jnp.cumsum(allq, -2)], -2)
    win = feats._window_sums(cum, jnp.asarray(half, jnp.int32).reshape(1, -1, 1),
                             length + p, causal=True)
    win = {k: v[..., length:, :] for k, v in win.items()}
    groups = feats.features_from_windows(win, index, mask)
    inputs = {**{g: groups[g] for g in model.groups},
              **{AFFECT_KEYS[m]: a for m, a in affect.items()}, "valid": mask}
    groups, affect = model.features(inputs, mask)
    conv = {}
    contributions = {}
    for g in model.groups:
        h, conv[g] = _tcn_step(model.branches[g], state["conv"][g], groups[g], mask, n_valid)
        contributions[g] = model.branches[g].readout(h)[0]
    if model.remainder is not None:
        parts = [groups[g] for g in model.groups] + [affect[m] for m in feats.MODALITIES]
        h, conv["remainder"] = _tcn_step(model.remainder, state["conv"]["remainder"],
                                         jnp.concatenate(parts, -1), mask, n_valid)
        remainder = model.remainder.readout(h)[0]
    else:
        remainder = jnp.zeros(p)
    score = sum(contributions.values(), remainder) + model.bias[...]
    new_state = {"moments": moments,
                 "quantities": jax.lax.dynamic_slice_in_dim(allq[0], n_valid, length, 0),
                 "conv": conv}
    return new_state, {"prob": jax.nn.sigmoid(score), "remainder": remainder,
                       "contributions": contributions}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _step(graphdef, params, state, rows, n_valid, half):
    return step(nnx.merge(graphdef, params), state, rows, n_valid, half)


class LiveScorer:
    """:func:`step` over a stream, in blocks of ``block`` frames (one compilation).

    ``history_fps``: the widest window is sized for ``max(fps, history_fps)``, so every
    stream up to that rate shares one compiled step (compiled before a source is opened).
    """

    def __init__(self, model: TwoLevelModel, fps: float, block: int = 64,
                 history_fps: float = 30.0):
        if not model.cfg.causal:
            raise ValueError("LiveScorer needs a causal model (TwoLevelConfig.causal)")
        if model.cfg.use_embeddings:
            raise ValueError("LiveScorer: a model reading embeddings is not supported live")
        self.graphdef, self.params = nnx.split(model)
        self.names = tuple(model.groups) + ("remainder",)
        self.fps, self.block = float(fps), int(block)
        self.half = np.array([max(1, int(round(s * fps / 2))) for s in model.cfg.scales],
                             np.int32)
        history = history_frames(model.cfg.scales, max(fps, history_fps))
        # (frame, state after frames < frame): the first is settled (rows before it final).
        self.snaps = [(0, init_state(model, history))]
        self.resumed = 0   # chunks that went back to recompute revised frames

    @property
    def settled(self) -> int:
        """Rows of frames before this are not needed any more (their state is carried)."""
        return self.snaps[0][0]

    def warm_up(self) -> None:
        """Compile the step (on a throwaway state)."""
        rows = {k: np.zeros((self.block, d), np.float32) for k, d in _widths().items()}
        jax.block_until_ready(_step(self.graphdef, self.params, self.snaps[0][1], rows,
                                    np.int32(0), self.half))

    def scores(self, rows: Mapping[str, np.ndarray], n: int, final: int,
               revised_from: int) -> tuple[int, dict]:
        """Scores of frames ``[start, n)`` and ``start``, the frame the step resumed from.

        ``rows``: level-1 tracks of frames ``[settled, n)``; ``final``: rows before it will
        not change any more; ``revised_from``: the first frame whose rows changed since
        the last call (>= the last call's ``n`` when none did)."""
        base, latest = self.settled, self.snaps[-1][0]
        while len(self.snaps) > 1 and self.snaps[-1][0] > revised_from:
            self.snaps.pop()
        start, state = self.snaps[-1]
        self.resumed += int(start < latest)
        parts = []
        a = start
        while a < n:
            b = min(a + self.block, n)
            if a < final < b:   # stop at ``final``: the state there is never revised
                b = final
            m = b - a
            block = {k: np.pad(np.asarray(rows[k][a - base:a - base + m], np.float32),
                               ((0, self.block - m), (0, 0))) for k in TRACKS}
            state, out = _step(self.graphdef, self.params, state, block, np.int32(m), self.half)
            parts.append(jax.tree.map(lambda x: np.asarray(x)[:m], jax.device_get(out)))
            if b == final < n:
                # Without this state, a revision that reaches behind the newest chunk end
                # goes back to an ever older state, and each chunk recomputes more.
                self.snaps.append((b, state))
            a = b
        if n > start:
            self.snaps.append((n, state))
        keep = max(i for i, (f, _) in enumerate(self.snaps) if f <= max(final, base))
        self.snaps = self.snaps[keep:]
        if not parts:
            empty = np.zeros(0, np.float32)
            return start, {"prob": empty, "contributions": dict.fromkeys(self.names, empty)}
        out = jax.tree.map(lambda *x: np.concatenate(x), *parts)
        out["contributions"]["remainder"] = out.pop("remainder")
        return start, out
