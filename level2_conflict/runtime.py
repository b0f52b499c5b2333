"""The trained two-level model at run time: loading, the whole-video forward, decoding.

``load_trained(run_dir)`` reads what ``save_trained`` wrote (the ``deploy/`` folder of a
``two_level`` run: orbax parameters and ``level2.json`` with the model config, the
duration prior in seconds and the decoding settings) and returns a
:class:`TrainedTwoLevel`, whose ``predict(arrays, fps)`` gives the A/H probability, the
decoded segments and every named contribution for one video's level-1 tracks.

The duration prior (:class:`Durations`) is fitted in seconds (``fit_durations``) and turned
into frames with each video's own frame rate, so one prior serves 24, 25 and 30 fps videos.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahjax.core.train.checkpoint import save_params
from level2_conflict import deployed, hsmm, stateful
from level2_conflict import features as feats
from level2_conflict.features import TRACKS
from level2_conflict.model import AFFECT_KEYS, TwoLevelConfig, TwoLevelModel

REFERENCE_FPS = 24.0   # the unit of DecodeConfig's per-second evidence rate grid below
_PAD = 128   # whole videos are padded to a multiple of this (fewer compilations)


def padded_length(n: int, bucket: str = "multiple") -> int:
    """Frames a video of ``n`` frames is padded to: the next multiple of 128 ("multiple",
    offline), or the next power of two from 512 on ("pow2": a growing live stream then
    compiles a handful of shapes, not one per 128 frames)."""
    if bucket == "pow2":
        return max(512, 1 << max(0, n - 1).bit_length())
    if bucket != "multiple":
        raise ValueError(f"bucket={bucket!r}: 'multiple' or 'pow2'")
    return -(-n // _PAD) * _PAD


@functools.partial(jax.jit, static_argnames=("causal",))
def _level2_inputs(tracks, mask, fps, causal=False):
    groups = feats.conflict_features(tracks, fps, mask, causal=causal)
    affect = feats.affect_tracks(tracks, mask, causal=causal)
    return groups, {AFFECT_KEYS[m]: a for m, a in affect.items()}


def _padded_inputs(tracks: Mapping[str, np.ndarray], fps: float, causal: bool,
                   bucket: str) -> tuple[dict[str, np.ndarray], int]:
    """``({name: (1, size, k)}, n)``: :func:`video_inputs` padded to :func:`padded_length`
    (zeros after frame ``n``), with ``valid`` (1, size)."""
    n = int(np.asarray(tracks["face_present"]).shape[0])
    if n < 1:
        raise ValueError("video_inputs: a video with no frames")
    for k in TRACKS:
        if k in tracks and not np.all(np.isfinite(np.asarray(tracks[k], np.float32))):
            raise ValueError(f"level-1 track {k!r} holds NaN or inf values")
    size = padded_length(n, bucket)
    padded = {k: np.pad(np.asarray(tracks[k], np.float32).reshape(n, -1),
                        ((0, size - n), (0, 0)))[None] for k in TRACKS if k in tracks}
    mask = np.zeros((1, size), np.float32)
    mask[0, :n] = 1.0
    groups, affect = jax.device_get(_level2_inputs(padded, mask, np.float32(fps),
                                                   causal=causal))
    out = {}
    for name, arr in (*groups.items(), *affect.items()):
        arr = np.array(arr)
        if not np.all(np.isfinite(arr[0, :n])):
            raise ValueError(f"level-2 input {name!r} holds NaN or inf values")
        arr[0, n:] = 0.0
        out[name] = arr
    out["valid"] = mask
    return out, n


def video_inputs(tracks: Mapping[str, np.ndarray], fps: float, causal: bool = False,
                 bucket: str = "multiple") -> dict[str, np.ndarray]:
    """Feature groups and affect tracks ``{name: (n, k)}`` of one whole video's level-1
    ``tracks`` (``n`` frames each), as :class:`TwoLevelModel` computes them (``causal``:
    from the past only; ``bucket``: the padding, :func:`padded_length`)."""
    padded, n = _padded_inputs(tracks, fps, causal, bucket)
    return {k: a[0, :n] for k, a in padded.items() if k != "valid"}


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Reading frame posteriors into segments (durations and rates in seconds)."""
    max_duration_s: float = 20.0   # longest segment the prior represents; longer = chains
    evidence_rate: float = 2.4     # emission weight per second (per frame: rate / fps)
    median_s: float = 1.0          # median-filter width, seconds
    threshold: float = 0.5         # plain thresholding of the posteriors
    video_min_s: float = 2.0       # video is A/H when its longest A/H segment is this long
    # Each reading gets its one hyperparameter by val frame AVGF1 (the video rule by val
    # video AVGF1); the values above are used when this is off or there is no val.
    select_on_val: bool = True
    evidence_rates: tuple = (1.2, 2.4, 4.8, 7.2, 12.0, 16.8, 24.0)
    median_ss: tuple = (0.375, 1.0, 2.0, 4.0)
    thresholds: tuple = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    video_min_ss: tuple = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


@jax.jit
def _decode_one(prob, log_dur, log_prior, emission_weight, length):
    # One jitted function for every call, compiled once per padded length and prior size.
    return hsmm.hsmm_decode(hsmm.log_post_from_prob(prob), log_dur, log_prior,
                            emission_weight=emission_weight, length=length)


class Durations:
    """A :class:`hsmm.DurationPrior` with the class prior, turned into frames per fps."""

    def __init__(self, prior: hsmm.DurationPrior, class_prior):
        self.prior = prior
        self.class_prior = np.asarray(class_prior, np.float64)
        self._log_pmf: dict = {}

    def log_pmf(self, fps: float):
        if fps not in self._log_pmf:
            self._log_pmf[fps] = jnp.asarray(self.prior.log_pmf(fps))
        return self._log_pmf[fps]

    def to_json(self) -> dict:
        return {"shape": list(self.prior.shape), "scale_s": list(self.prior.scale_s),
                "max_s": self.prior.max_s, "floor": self.prior.floor,
                "class_prior": self.class_prior.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Durations":
        return cls(hsmm.DurationPrior(tuple(d["shape"]), tuple(d["scale_s"]), d["max_s"],
                                      d["floor"]), d["class_prior"])


def fit_durations(store_labels: dict, fps: dict, max_s: float) -> tuple[Durations, dict]:
    """(Durations, stats) from training videos' frame labels, durations in seconds."""
    pos, neg, counts = [], [], np.zeros(2)
    for vid, labels in store_labels.items():
        runs = hsmm.segment_lengths(labels)
        pos += [d / fps[vid] for d in runs[1]]
        neg += [d / fps[vid] for d in runs[0]]
        counts += [np.sum(labels == 0), np.sum(labels == 1)]
    prior = hsmm.DurationPrior.fit(pos, neg, max_s)
    stats = {"pos_segments": len(pos), "pos_mean_s": float(np.mean(pos)) if pos else None,
             "neg_mean_s": float(np.mean(neg)) if neg else None,
             "pos_frame_share": float(counts[1] / counts.sum())}
    return Durations(prior, counts / counts.sum()), stats


def decode_hsmm(prob: np.ndarray, fps: float, durations: Durations, rate: float) -> np.ndarray:
    """0/1 per frame: semi-Markov decoding with evidence ``rate`` per second."""
    log_prior = jnp.log(jnp.asarray(durations.class_prior, jnp.float32))
    n = len(prob)
    padded = np.zeros(padded_length(max(n, 1)), np.float32)
    padded[:n] = prob
    return np.asarray(_decode_one(jnp.asarray(padded), durations.log_pmf(fps), log_prior,
                                  jnp.float32(rate / fps), jnp.int32(n)))[:n]


class TrainedTwoLevel:
    """A trained two-level model with its duration prior, ready for new videos."""

    def __init__(self, model: TwoLevelModel, durations: Durations, decode: DecodeConfig):
        self.model, self.durations, self.decode = model, durations, decode

    @property
    def causal(self) -> bool:
        return bool(self.model.cfg.causal)

    def scores(self, arrays: dict, fps: float, bucket: str = "multiple") -> dict:
        """A/H ``prob`` (n,) and ``contributions`` (name -> (n,), ``remainder`` included)
        for one video's level-1 ``arrays`` (schema names), before decoding. ``bucket``:
        the padding (:func:`padded_length`); for a causal model, frame t's values do
        not depend on frames after t, so a growing stream's prefix gives the same values."""
        batch, n = _padded_inputs({k: arrays[k] for k in TRACKS}, fps, self.causal, bucket)
        prob, aux = jax.device_get(_forward(self.model, batch))
        contributions = {g: c[0, :n] for g, c in aux["contributions"].items()}
        contributions["remainder"] = aux["remainder"][0, :n]
        return {"prob": prob[0, :n], "contributions": contributions}

    def predict_arrays(self, arrays: dict, fps: float) -> dict:
        """A/H ``prob`` (n,), ``decoded`` (n,) 0/1 and ``contributions`` (name -> (n,),
        ``remainder`` included) for one video's level-1 ``arrays`` (schema names)."""
        out = self.scores(arrays, fps)
        out["decoded"] = decode_hsmm(out["prob"], fps, self.durations, self.decode.evidence_rate)
        return out

    def live_scorer(self, fps: float, block: int = 64):
        """Scores of a growing stream chunk by chunk (``scores(rows, n, final,
        revised_from)``): a causal model carries its state (:class:`stateful.LiveScorer`,
        bounded work per chunk); an offline one re-reads the whole prefix each time."""
        if self.causal and not self.model.cfg.use_embeddings:
            return stateful.LiveScorer(self.model, fps, block)
        return _PrefixScorer(self, fps)

    def online_decoder(self, fps: float, lag_s: float) -> hsmm.OnlineDecoder:
        """Fixed-lag decoding with this model's duration prior and evidence rate: a frame's
        label is final ``lag_s`` seconds after it (``lag_s`` = inf: the offline decoding)."""
        lag = int(round(lag_s * fps)) if np.isfinite(lag_s) else 2 ** 62
        return hsmm.OnlineDecoder(np.asarray(self.durations.log_pmf(fps)),
                                  np.log(self.durations.class_prior), lag=lag,
                                  emission_weight=self.decode.evidence_rate / fps)


class _PrefixScorer:
    """``LiveScorer``'s interface over the whole prefix (a model that cannot carry state:
    its rows are all kept and the cost of a chunk grows with the stream)."""
    settled = 0

    def __init__(self, trained: TrainedTwoLevel, fps: float):
        self.trained, self.fps = trained, fps

    def warm_up(self) -> None:
        blank = {k: np.zeros((1, stateful._widths()[k]), np.float32) for k in TRACKS}
        self.trained.scores(blank, self.fps, bucket="pow2")

    def scores(self, rows, n: int, final: int, revised_from: int) -> tuple[int, dict]:
        return 0, self.trained.scores(rows, self.fps, bucket="pow2")


@nnx.jit
def _forward(model, inputs):
    logits, aux = model(inputs, train=False)
    return jax.nn.sigmoid(aux["score"]), {"contributions": aux["contributions"],
                                          "remainder": aux["remainder"]}


def save_trained(model: TwoLevelModel, model_cfg: TwoLevelConfig, durations: Durations,
                 decode: DecodeConfig, folder: Path) -> Path:
    """Save what :func:`load_trained` needs into ``folder`` (params via orbax)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_params(model, folder / "params")
    deployed.seal(folder)
    (folder / "level2.json").write_text(json.dumps({
        "model": dataclasses.asdict(model_cfg), "durations": durations.to_json(),
        "decode": dataclasses.asdict(decode)}, indent=1))
    return folder


def load_trained(run_dir: str | Path) -> TrainedTwoLevel:
    """The two-level model of a ``two_level`` run folder (or of its ``deploy`` folder);
    its files checked (:mod:`level2_conflict.deployed`): ValueError naming a damaged one."""
    run_dir = Path(run_dir)
    folder = run_dir if (run_dir / "level2.json").is_file() else run_dir / "deploy"
    if not (folder / "level2.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a two_level run folder (no deploy/level2.json)")
    cfg, durations, decode = deployed.read_level2(folder, DecodeConfig)
    model = deployed.read_params(lambda: TwoLevelModel(cfg, rngs=nnx.Rngs(0)), folder)
    return TrainedTwoLevel(model, Durations.from_json(durations), decode)
