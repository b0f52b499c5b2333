"""Personalising the two-level model with the methods of :mod:`baselines.adapt` (Table 5,
beyond the paper).

:class:`TwoLevelAdaptNet` presents a :class:`~level2_conflict.model.TwoLevelModel` as a
backbone -> features -> linear classifier network without changing what it computes, so an
adapted model is still an ordinary ``TwoLevelModel`` whose frame scores are sums of named
contributions. :func:`conflict_domain` computes the conflict features once per whole video
and :class:`CentredDomain` hands each frame its centred window. How the parts map, and why:
docs/two_level.md, "Personalising the two-level model".
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baselines import adapt as adapt_lib
from baselines.personalise import Network
from level2_conflict import features as feats
from level2_conflict.model import AFFECT_KEYS, REMAINDER, TwoLevelConfig, TwoLevelModel

Array = jax.Array


def receptive_reach(cfg: TwoLevelConfig) -> int:
    """Frames on each side of a frame that its branch outputs depend on, given the
    conflict features: the dilated convolutions' reach (SAME padding: ``kernel // 2``
    per dilation; causal: ``kernel - 1``, an upper bound on the one side it uses)."""
    per = (cfg.kernel - 1) if cfg.causal else cfg.kernel // 2
    return per * sum(2 ** i for i in range(cfg.n_blocks))


def context_frames(cfg: TwoLevelConfig) -> int:
    """Window length (frames) that :class:`CentredDomain` gives each frame: ``2 reach + 1``."""
    return 2 * receptive_reach(cfg) + 1


# ----------------------------------------------------------------------------------------
# Frames.

def _videos(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start row, end row) of each video of a domain, from its ``first`` array."""
    first = np.asarray(first, np.int64)
    n = len(first)
    starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]]) if n else np.zeros(0, int)
    return starts, np.r_[starts[1:], n].astype(int)


@dataclasses.dataclass(frozen=True)
class CentredDomain(adapt_lib.Domain):
    """A :class:`~baselines.adapt.Domain` whose members get *centred* windows.

    ``inputs(positions, context)`` returns ``{key: (B, context, d)}`` centred on each
    member (frame ``context // 2``), plus ``valid`` ``(B, context)``: 0 where the window
    leaves the member's video, whose rows are zeros there. ``end[i]`` is one past the row
    of the last frame of row i's video.
    """
    end: np.ndarray | None = None

    @classmethod
    def of(cls, domain: adapt_lib.Domain) -> "CentredDomain":
        starts, ends = _videos(domain.first)
        end = np.repeat(ends, ends - starts)
        return cls(domain.x, domain.y, np.asarray(domain.first, np.int64), domain.rows,
                   domain.name, end)

    def inputs(self, positions: np.ndarray, context: int) -> dict[str, np.ndarray]:
        rows = self.rows[np.asarray(positions, np.int64)]
        half = context // 2
        idx = rows[:, None] + np.arange(-half, context - half)[None, :]
        valid = (idx >= self.first[rows][:, None]) & (idx < self.end[rows][:, None])
        idx = np.where(valid, idx, rows[:, None])
        out = {m: v[idx] * valid[..., None].astype(v.dtype) for m, v in self.x.items()}
        out["valid"] = valid.astype(np.float32)
        return out


@functools.partial(jax.jit, static_argnames=("scales", "causal"))
def _video_features(tracks: dict, mask: Array, fps: Array, scales: tuple,
                    causal: bool = False) -> dict:
    groups = feats.conflict_features(tracks, fps, mask, scales, causal=causal)
    affect = feats.affect_tracks(tracks, mask, causal=causal)
    return dict(groups, **{AFFECT_KEYS[m]: a for m, a in affect.items()})


def video_features(tracks: Mapping[str, np.ndarray], cfg: TwoLevelConfig
                   ) -> dict[str, np.ndarray]:
    """The conflict feature groups and ``affect_<modality>`` tracks of one whole video
    (``tracks``: level-1 arrays ``(n, d)``, raw units), as ``TwoLevelModel.features``
    computes them with the whole video as one window. Padded to a power of two frames
    (at least 256: few compilations), the padding masked out and cut off again."""
    n = len(next(iter(tracks.values())))
    size = max(256, 1 << max(n - 1, 0).bit_length())
    padded = {k: jnp.asarray(np.pad(np.asarray(v, np.float32), ((0, size - n), (0, 0))))
              for k, v in tracks.items()}
    mask = jnp.asarray(np.arange(size) < n, jnp.float32)
    out = _video_features(padded, mask, jnp.float32(cfg.fps), tuple(cfg.scales),
                          causal=cfg.causal)
    return {k: np.asarray(v[:n]) for k, v in out.items()}


def conflict_domain(domain: adapt_lib.Domain, cfg: TwoLevelConfig) -> CentredDomain:
    """``domain`` (raw level-1 tracks per frame, every frame of its videos present) with
    the tracks replaced by :func:`video_features` of each video (embeddings named in
    ``cfg.emb_keys`` are kept when ``cfg.use_embeddings``), as a :class:`CentredDomain`."""
    bounds = zip(*_videos(domain.first))
    keep = set(cfg.emb_keys) if cfg.use_embeddings else set()
    tracks = {k: v for k, v in domain.x.items() if k not in keep}
    if not tracks:
        raise ValueError(f"{domain.name or 'domain'}: no level-1 track to compute conflict "
                         f"features from (have {sorted(domain.x)})")
    pieces = [video_features({k: v[a:b] for k, v in tracks.items()}, cfg) for a, b in bounds]
    x = {k: np.concatenate([p[k] for p in pieces]) for k in (pieces[0] if pieces else {})}
    x.update({k: domain.x[k] for k in keep if k in domain.x})
    return CentredDomain.of(dataclasses.replace(domain, x=x))


# ----------------------------------------------------------------------------------------
# The network.

def _path(path) -> tuple[str, ...]:
    return tuple(str(p) for p in path)


def _is_head(path, value) -> bool:
    """The read-out of a branch (``.../out/kernel``) or the model's bias."""
    p = _path(path)
    return "out" in p or p[-2:] == ("model", "bias")


def _is_cue(path, value) -> bool:
    return any(q.startswith("cue_") for q in _path(path))


def _is_input_projection(path, value) -> bool:
    return "inp" in _path(path)


class TwoLevelAdaptNet(nnx.Module):
    """A :class:`TwoLevelModel` (``self.model``) as a ``baselines.adapt`` network (module
    docstring): ``__call__(inputs, *, train) -> (logits (B, 2), aux)`` for the centre frame
    of each ``(B, C, ...)`` window, with ``aux``: ``features`` (B, F), ``contributions``
    (name -> (B,)), ``remainder`` (B,), ``bias`` (), ``score`` (B,)."""

    # Which parameters SHOT ("backbone") and Tent ("norm") train (module docstring).
    param_groups = {
        "backbone": nnx.All(nnx.Param, nnx.Not(_is_head), nnx.Not(_is_cue)),
        "norm": nnx.All(nnx.Param, _is_input_projection),
    }

    def __init__(self, model: TwoLevelModel):
        self.model = model
        self.names = tuple(model.groups) + ((REMAINDER,) if model.remainder is not None else ())

    @classmethod
    def create(cls, cfg: TwoLevelConfig, seed: int = 0) -> "TwoLevelAdaptNet":
        """A fresh network around ``TwoLevelModel(cfg)``."""
        return cls(TwoLevelModel(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1)))

    def _branch(self, name: str):
        return self.model.remainder if name == REMAINDER else self.model.branches[name]

    @property
    def classifier(self) -> types.SimpleNamespace:
        """``kernel`` (F, 2) and ``bias`` (2,) with ``features @ kernel + bias == logits``."""
        w = jnp.concatenate([self._branch(g).out.kernel[...][:, 0] for g in self.names])
        b = self.model.bias[...]
        return types.SimpleNamespace(kernel=jnp.stack([-w / 2, w / 2], 1),
                                     bias=jnp.stack([-b / 2, b / 2]))

    def decompose(self, inputs: Mapping[str, Any], *, train: bool = False) -> dict:
        """Every frame's score and its parts over whole windows ``(B, W)``.

        ``TwoLevelModel.__call__`` on :func:`conflict_domain`'s precomputed ``inputs``; returns
        ``contributions`` (group -> (B, W)), ``remainder``, ``bias``, ``score``, ``logits``
        (B, W, 2) and ``hidden`` (name -> (B, W, hidden)).
        """
        missing = [k for k in (*self.model.groups, *AFFECT_KEYS.values()) if k not in inputs]
        if missing:
            raise KeyError(f"TwoLevelAdaptNet reads the features of "
                           f"baselines.adapt.two_level.conflict_domain; inputs lack {missing}")
        # Only the keys the model reads from precomputed features: never cues (no cue
        # loss here), nor "mask" in place of a missing "valid".
        keys = (*self.model.groups, *AFFECT_KEYS.values(), *self.model.emb_keys, "valid")
        logits, aux = self.model({k: inputs[k] for k in keys if k in inputs}, train=train)
        out = {k: aux[k] for k in ("contributions", "remainder", "bias", "score", "hidden")}
        return dict(out, logits=logits)

    def __call__(self, inputs: Mapping[str, Any], *, train: bool = False
                 ) -> tuple[Array, dict]:
        out = self.decompose(inputs, train=train)
        c = out["score"].shape[1] // 2
        features = jnp.concatenate([out["hidden"][g][:, c] for g in self.names], -1)
        aux = {"features": features, "bias": out["bias"], "score": out["score"][:, c],
               "remainder": out["remainder"][:, c],
               "contributions": {g: v[:, c] for g, v in out["contributions"].items()}}
        return out["logits"][:, c], aux


def network(cfg: TwoLevelConfig, label: str = "two-level model"):
    """The two-level model as a ``baselines.personalise.Network``: raw level-1 tracks (not
    standardised), features per whole video, centred windows. Train it with an
    ``AdaptConfig`` whose ``context`` is :func:`context_frames` ``(cfg)``."""
    return Network(label=label, standardise=False,
                   build=lambda dims, adapt_cfg, seed: TwoLevelAdaptNet.create(cfg, seed),
                   wrap=lambda domain: conflict_domain(domain, cfg))
