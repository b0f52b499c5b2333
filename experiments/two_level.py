"""The interpretable two-level conflict model against its ablations and fusion baselines.

``python -m experiments.run two_level`` with no arguments makes the embedded demo dataset
(cached), extracts level 1 (cached), then trains in one run, on the same features and
splits: the two-level model; its ablations (no cross-modal features, no within-modality
features); the concatenation TCN baseline; a text-only TCN; and the best fusion baseline
(by validation AP among the configured ones). The two-level model's frame posteriors are
read three ways: with the duration prior (semi-Markov decoding; the full model), with no
decoding, and with a median filter. ``--data.root PATH`` does the same on a real BAH tree.

Writes ``results.{json,md}``, one figure per test video and ``report.html`` into the run
folder, and the trained models' checkpoints under ``models/<method>/``.

The baselines are reference points that do not change between runs, and at the paper's
widths they are most of a run's time on a CPU. With ``reuse_baselines`` (default) a
baseline whose features (train and val), configs and code are byte-identical to an earlier
run's is read back from ``$AHJAX_CACHE/trained/`` instead of being retrained; the run log
and ``results["reused_trained"]`` say which, and ``--config.reuse_baselines=False``
retrains them. The two-level model and its ablations are always trained.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahjax.assets import cache_dir
from ahjax.data.store import FeatureStore
from ahjax.data.windows import WindowConfig
from ahjax.metrics import bah_metrics
from ahjax.train import trainer as trainer_lib
from ahjax.train.trainer import TrainConfig
from experiments.common import DataConfig, prepare_store, score_videos, video_labels, frame_labels
from level1_affect.extract import ExtractConfig
from level1_affect.schema import MODALITIES
from level2_conflict import hsmm, plots
from level2_conflict.model import TwoLevelConfig, TwoLevelModel

# Level-1 tracks the two-level model reads (raw, not standardised: they are interpretable).
TRACKS = ("face_present", "face_desc", "face_expr", "voice_prosody", "text_affect")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Reading frame posteriors into segments."""
    max_duration: int = 480        # frames; longer segments are chains of shorter ones
    emission_weight: float = 0.3   # tempering of correlated frame evidence
    median_k: int = 25             # median-filter width (frames), the simple alternative
    threshold: float = 0.5         # plain thresholding of the posteriors
    # Each reading of the posteriors gets one hyperparameter chosen by val frame AVGF1 (the
    # values above are used when this is off or there is no val): the semi-Markov decoder
    # its emission weight, the median filter its width, plain thresholding its threshold.
    select_on_val: bool = True
    emission_weights: tuple = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    median_ks: tuple = (9, 25, 49, 97)
    thresholds: tuple = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool = False
    data: DataConfig = DataConfig()
    extract: ExtractConfig = ExtractConfig()
    windows: WindowConfig = WindowConfig(window=240, hop=48, batch_size=8, standardize=False)
    train: TrainConfig = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=25,
                                     clip_norm=1.0)
    model: TwoLevelConfig = TwoLevelConfig(fps=24.0)
    # The paper's supervised recipe for the baselines (SGD, Nesterov) at the paper's widths,
    # with fewer epochs: on the demo their validation AP peaks within the first few epochs
    # and they dominate the run's time on a CPU.
    baseline_windows: WindowConfig = WindowConfig(window=240, hop=48, batch_size=8)
    baseline_train: TrainConfig = TrainConfig(epochs=10)
    fusions: tuple = ("can", "lfan")   # fusion baselines tried; the best by val AP is kept
    reuse_baselines: bool = True       # reuse identical earlier baseline trainings (module doc)
    decode: DecodeConfig = DecodeConfig()
    max_figures: int = 12


def get_config(quick: bool = False) -> Config:
    """Default config; ``quick`` is a smoke-sized run for tests (tiny demo, few epochs)."""
    cfg = Config()
    if not quick:
        return cfg
    return dataclasses.replace(
        cfg, quick=True,
        data=dataclasses.replace(cfg.data, demo_participants=4, demo_questions=(4, 7),
                                 demo_min_duration=6.0, demo_max_duration=8.0),
        extract=dataclasses.replace(cfg.extract, voice_embeddings=False, detect_every=2),
        windows=dataclasses.replace(cfg.windows, window=96, hop=48, batch_size=4),
        train=dataclasses.replace(cfg.train, epochs=2, progress=False),
        model=dataclasses.replace(cfg.model, hidden=8, n_blocks=2),
        baseline_windows=dataclasses.replace(cfg.baseline_windows, window=96, hop=48,
                                             batch_size=4),
        baseline_train=dataclasses.replace(cfg.baseline_train, epochs=1, progress=False),
        fusions=("can",), max_figures=2, reuse_baselines=False)


def _two_level_spec(store: FeatureStore, use_cues: bool) -> dict:
    spec = {k: (k,) for k in TRACKS}
    if use_cues:
        spec["cues"] = ("cues",)
    return spec


def _has_cues(store: FeatureStore) -> bool:
    ids = store.video_ids("train")
    return bool(ids) and all("cues" in store.meta(v).get("shapes", {}) for v in ids) and any(
        float(np.asarray(store.read(v, "cues")).sum()) > 0 for v in ids)


def _baseline_spec(store: FeatureStore, modalities=("video", "audio", "text")) -> dict:
    shapes = store.meta(store.video_ids()[0])["shapes"]
    spec = {m: tuple(a for a in MODALITIES[m] if a in shapes) for m in modalities}
    return {m: names for m, names in spec.items() if names}


def full_video_outputs(model: TwoLevelModel, store: FeatureStore, vid: str, spec: dict,
                       pad_to: int = 128) -> tuple[np.ndarray, dict]:
    """(A/H probability (n,), aux as numpy) of the two-level model over one whole video.

    The model is convolutional, so a whole video is one window: padded to a multiple of
    ``pad_to`` frames (fewer recompilations), with ``valid`` marking the real frames.
    """
    n = int(store.meta(vid)["n_frames"])
    arrays = {k: np.asarray(store.read(vid, names[0]), np.float32).reshape(n, -1)
              for k, names in spec.items() if k != "cues"}
    size = -(-n // pad_to) * pad_to
    # Padding and cropping in numpy: as jax ops outside the jit each would compile once
    # per video length.
    inputs = {k: np.pad(a, ((0, size - n), (0, 0)))[None] for k, a in arrays.items()}
    valid = np.zeros((1, size), np.float32)
    valid[0, :n] = 1.0
    inputs["valid"] = valid
    prob, aux = jax.device_get(_forward(model, inputs))
    out = {"contributions": {g: c[0, :n] for g, c in aux["contributions"].items()},
           "remainder": aux["remainder"][0, :n]}
    return prob[0, :n], out


@nnx.jit
def _forward(model, inputs):
    logits, aux = model(inputs, train=False)
    prob = jax.nn.softmax(logits, -1)[..., 1]
    return prob, {"contributions": aux["contributions"], "remainder": aux["remainder"]}


@jax.jit
def _decode_one(prob, log_dur, log_prior, emission_weight):
    # One jitted function for every call (compiled once per video length), rather than a
    # fresh jit of a closure per call, which recompiled for every split and variant.
    return hsmm.hsmm_decode(hsmm.log_post_from_prob(prob), log_dur, log_prior,
                            emission_weight=emission_weight)


def _decode(probs: dict, log_dur: np.ndarray, prior: np.ndarray, cfg: DecodeConfig) -> dict:
    log_dur = jnp.asarray(log_dur, jnp.float32)
    log_prior = jnp.log(jnp.asarray(prior, jnp.float32))
    weight = jnp.float32(cfg.emission_weight)   # traced: a new weight does not recompile
    return {v: np.asarray(_decode_one(jnp.asarray(p, jnp.float32), log_dur, log_prior, weight))
            for v, p in probs.items()}


# One compiled filter per video length, instead of a few dozen eager ops each.
_median_one = jax.jit(hsmm.median_filter, static_argnames=("k", "axis"))


def _median(probs: dict, k: int) -> dict:
    return {v: (np.asarray(_median_one(jnp.asarray(p), k=k)) >= 0.5).astype(np.int64)
            for v, p in probs.items()}


def _threshold(probs: dict, t: float) -> dict:
    return {v: (np.asarray(p) >= t).astype(np.int64) for v, p in probs.items()}


def read_posteriors(probs: dict, reading: str, log_dur, prior, cfg: DecodeConfig) -> dict:
    """0/1 decisions per video from frame posteriors, by ``reading`` with ``cfg``'s value."""
    if reading == "hsmm":
        return _decode(probs, log_dur, prior, cfg)
    if reading == "median":
        return _median(probs, cfg.median_k)
    if reading == "threshold":
        return _threshold(probs, cfg.threshold)
    raise ValueError(f"unknown reading {reading!r}; known: {READINGS}")


# Each reading of the posteriors (duration prior, median filter, plain threshold) and its
# DecodeConfig field and grid.
_READING_FIELD = {"hsmm": ("emission_weight", "emission_weights"),
                  "median": ("median_k", "median_ks"), "threshold": ("threshold", "thresholds")}
READINGS = tuple(_READING_FIELD)


def select_decoding(probs: dict, labels: dict, reading: str, log_dur, prior,
                    cfg: DecodeConfig) -> tuple[DecodeConfig, dict]:
    """``cfg`` with ``reading``'s hyperparameter set to its best val frame AVGF1 (first of
    ties), and ``{value: AVGF1}`` for the grid. ``cfg`` unchanged when selection is off."""
    field, grid = _READING_FIELD[reading]
    if not cfg.select_on_val or not probs:
        return cfg, {}
    y = np.concatenate([labels[v] for v in probs])
    scores = {}
    for value in getattr(cfg, grid):
        trial = dataclasses.replace(cfg, **{field: value})
        hard = read_posteriors(probs, reading, log_dur, prior, trial)
        scores[value] = float(bah_metrics(y, np.concatenate([hard[v] for v in probs])
                                          .astype(np.float64))["AVGF1"])
    best = max(scores, key=lambda k: scores[k])
    return dataclasses.replace(cfg, **{field: best}), scores


def _softmax_pos(logits: np.ndarray) -> np.ndarray:
    """P(class 1) of (n, 2) logits, in numpy (a jax softmax would compile per length)."""
    logits = np.asarray(logits, np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e[:, 1] / e.sum(-1)).astype(np.float32)


def fit_duration_prior(store: FeatureStore, max_d: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(duration log-pmfs (2, max_d), class prior (2,), stats) from the train split's labels."""
    pos, neg, counts = [], [], np.zeros(2)
    for vid in store.video_ids("train"):
        labels = np.asarray(store.read(vid, "labels"))
        runs = hsmm.segment_lengths(labels)
        pos += runs[1]
        neg += runs[0]
        counts += [np.sum(labels == 0), np.sum(labels == 1)]
    log_dur = hsmm.fit_durations(pos, neg, max_d)
    prior = counts / counts.sum()
    stats = {"pos_segments": len(pos), "pos_mean_frames": float(np.mean(pos)) if pos else None,
             "neg_mean_frames": float(np.mean(neg)) if neg else None,
             "pos_frame_share": float(prior[1])}
    return log_dur, prior, stats


def run(config: Config, workdir: Path) -> dict:
    """Train and compare everything; returns ``{split: {method: metrics}}`` and extras."""
    t_start = time.time()
    store, root, extraction = prepare_store(config.data, config.extract)
    t_data = time.time() - t_start
    test_ids, val_ids = store.video_ids("test"), store.video_ids("val")
    if not test_ids:
        raise RuntimeError(f"{store.root}: no test videos")
    labels = {s: frame_labels(store, ids) for s, ids in (("test", test_ids), ("val", val_ids))}
    vlabels = {s: video_labels(store, ids) for s, ids in (("test", test_ids), ("val", val_ids))}
    fps = float(store.meta(test_ids[0])["fps"])
    models_dir = workdir / "models"
    results: dict = {"test": {}, "val": {}}
    timings: dict = {"data_seconds": t_data}

    use_cues = _has_cues(store)
    spec = _two_level_spec(store, use_cues)
    log_dur, prior, dur_stats = fit_duration_prior(store, config.decode.max_duration)

    variants = {"two_level": {}, "no_cross_modal": {"use_cross": False},
                "no_within_modality": {"use_within": False}}
    outputs, selected, val_grids = {}, {}, {}
    for name, change in variants.items():
        mcfg = dataclasses.replace(config.model, fps=fps, **change)
        t0 = time.time()
        res = trainer_lib.train(
            lambda dims, rngs, mcfg=mcfg: TwoLevelModel(mcfg, rngs=rngs), store, spec,
            config.windows, config.train, models_dir / name)
        timings[f"{name}_train_seconds"] = time.time() - t0
        split_probs = {}
        for split, ids in (("val", val_ids), ("test", test_ids)):
            probs, aux = {}, {}
            for vid in ids:
                probs[vid], aux[vid] = full_video_outputs(res.model, store, vid, spec)
            split_probs[split] = (probs, aux)
        # Each reading's hyperparameter from val, then applied unchanged to both splits.
        readings = READINGS if name == "two_level" else ("hsmm",)
        decode = {}
        for reading in readings:
            decode[reading], grid = select_decoding(split_probs["val"][0], labels["val"],
                                                    reading, log_dur, prior, config.decode)
            if grid:
                field = _READING_FIELD[reading][0]
                selected.setdefault(name, {})[reading] = getattr(decode[reading], field)
                val_grids.update({f"{name}/{reading} {field}={k}": {"val_AVGF1": v}
                                  for k, v in grid.items()})
        if name == "two_level":
            save_trained(res.model, mcfg, log_dur, prior, decode["hsmm"], workdir / "deploy")
        for split, (probs, aux) in split_probs.items():
            decoded = read_posteriors(probs, "hsmm", log_dur, prior, decode["hsmm"])
            outputs[(name, split)] = (probs, aux, decoded)
            results[split][name] = score_videos(labels[split], probs, vlabels[split], decoded)
            if name == "two_level":
                results[split]["two_level/no_duration_prior"] = score_videos(
                    labels[split], probs, vlabels[split])
                for reading, row in (("threshold", "threshold_on_val"), ("median", "median_filter")):
                    results[split][f"two_level/{row}"] = score_videos(
                        labels[split], probs, vlabels[split],
                        read_posteriors(probs, reading, log_dur, prior, decode[reading]))

    baselines = {"concat_tcn": (_concat_builder, _baseline_spec(store), _concat_describe()),
                 "text_only": (_concat_builder, _baseline_spec(store, ("text",)),
                               _concat_describe())}
    for fusion in config.fusions:
        baselines[f"fusion_{fusion}"] = (_fusion_builder(fusion, config.quick),
                                         _baseline_spec(store), _fusion_describe(fusion, config.quick))
    fusion_val_ap, reused = {}, {}
    cache = cache_dir() / "trained" if config.reuse_baselines else None
    mesh = trainer_lib.make_mesh(config.baseline_train.num_devices)
    for name, (builder, bspec, describe) in baselines.items():
        t0 = time.time()
        res = trainer_lib.train_or_reuse(builder, store, bspec, config.baseline_windows,
                                         config.baseline_train, models_dir / name,
                                         describe=dict(describe, method=name), cache_dir=cache)
        timings[f"{name}_train_seconds"] = time.time() - t0
        if res.reused_from is not None:
            reused[name] = str(res.reused_from)
            print(f"reused trained {name} from cache {res.reused_from} (best epoch "
                  f"{res.best_epoch}); --config.reuse_baselines=False retrains it", flush=True)
        for split, ids in (("test", test_ids), ("val", val_ids)):
            # The batch size of training's validation, so its compiled eval step is reused.
            logits = trainer_lib.predict_videos(
                res.model, store, ids, bspec, config.baseline_windows.window, stats=res.stats,
                batch_size=config.baseline_windows.batch_size, mesh=mesh)
            probs = {v: _softmax_pos(l) for v, l in logits.items()}
            results[split][name] = score_videos(labels[split], probs, vlabels[split])
        if name.startswith("fusion_"):
            fusion_val_ap[name] = results["val"][name]["AP"]
    if fusion_val_ap:  # keep only the best fusion by validation AP, as the paper selects
        best = max(fusion_val_ap, key=fusion_val_ap.get)
        for split in ("test", "val"):
            for name in fusion_val_ap:
                row = results[split].pop(name)
                if name == best:
                    results[split][f"best_fusion ({name[7:]})"] = row

    figures = _figures(store, test_ids, outputs[("two_level", "test")], config,
                       workdir / "plots", fps)
    results["reused_trained"] = reused
    if reused:
        results["notes"] = [f"Reused from an identical earlier training (not retrained): "
                            f"{', '.join(reused)}; --config.reuse_baselines=False retrains."]
    results["duration_prior"] = dur_stats
    results["decoding_selected_on_val"] = {k: {r: float(x) for r, x in v.items()}
                                           for k, v in selected.items()}
    results["decoding_val_grids"] = val_grids
    results["cues_used"] = use_cues
    results["extraction"] = {k: v for k, v in extraction.items() if k != "failed"}
    results["extraction"]["failed"] = len(extraction["failed"])
    timings["total_seconds"] = time.time() - t_start
    results["timing"] = timings
    results["dataset"] = {"root": str(root), "store": str(store.root),
                          "synthetic_demo": not bool(config.data.root)}
    results["notes"] = results.get("notes", []) + [
        "two_level = duration-prior (semi-Markov) decoding of the two-level posteriors "
        "(and of each ablation's); no_duration_prior = argmax (0.5); threshold_on_val and "
        "median_filter = a threshold and a median width chosen on val. Every reading's one "
        "hyperparameter (emission weight, width, threshold) is chosen by val frame AVGF1 "
        "(decoding_selected_on_val); AP is always from the undecoded probabilities.",
        "VIDEO_AVGF1: a video is A/H when the mean frame decision/probability is >= 0.5 "
        "(the paper's mean-probability rule).",
    ]
    from ahjax.results import to_markdown
    plots.report_html(to_markdown(results, "two_level"), figures, workdir / "report.html",
                      title="ahjax two_level report")
    return results


def _concat_builder(dims, rngs):
    from baselines.tcn import ConcatTCN
    return ConcatTCN(dims, rngs=rngs)


def _concat_describe() -> dict:
    from baselines.tcn import TCNConfig
    return {"builder": "ConcatTCN", "model": dataclasses.asdict(TCNConfig())}


def _fusion_describe(name: str, quick: bool) -> dict:
    from baselines import fusion
    cfg = fusion.quick() if quick else fusion.FusionConfig()
    return {"builder": f"fusion.FUSION_MODELS[{name!r}]", "model": dataclasses.asdict(cfg)}


def _fusion_builder(name: str, quick: bool):
    from baselines import fusion

    def build(dims, rngs):
        cfg = fusion.quick() if quick else fusion.FusionConfig()
        return fusion.FUSION_MODELS[name](dict(dims), cfg, rngs)
    return build


def _figures(store, test_ids, outputs, config, folder: Path, fps) -> list[Path]:
    probs, aux, decoded = outputs
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for vid in test_ids[: config.max_figures]:
        tracks = {k: np.asarray(store.read(vid, k)) for k in TRACKS}
        contributions = dict(aux[vid]["contributions"])
        contributions["remainder"] = aux[vid]["remainder"]
        path = folder / f"{Path(vid).stem[:80].replace(' ', '_')}.png"
        plots.plot_video(tracks, contributions, probs[vid], np.asarray(store.read(vid, "labels")),
                         decoded[vid], fps, Path(vid).name, path)
        paths.append(path)
    return paths


class TrainedTwoLevel:
    """A trained two-level model with its duration prior, ready for new videos."""

    def __init__(self, model: TwoLevelModel, log_dur: np.ndarray, prior: np.ndarray,
                 decode: DecodeConfig):
        self.model, self.log_dur, self.prior, self.decode = model, log_dur, prior, decode

    def predict(self, arrays: dict, fps: float) -> dict:
        """A/H ``prob`` (n,), ``decoded`` (n,) 0/1 and ``contributions`` (name -> (n,))
        for one video's level-1 ``arrays`` (schema names)."""
        from ahjax.data.store import FeatureStore
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(tmp)
            store.write("video", {k: arrays[k] for k in TRACKS}, {"fps": fps})
            prob, aux = full_video_outputs(self.model, store, "video", {k: (k,) for k in TRACKS})
        decoded = _decode({"v": prob}, self.log_dur, self.prior, self.decode)["v"]
        contributions = dict(aux["contributions"], remainder=aux["remainder"])
        return {"prob": prob, "decoded": decoded, "contributions": contributions}


def save_trained(model: TwoLevelModel, model_cfg: TwoLevelConfig, log_dur, prior,
                 decode: DecodeConfig, folder: Path) -> Path:
    """Save what :func:`load_trained` needs into ``folder`` (params via orbax)."""
    from ahjax.train.checkpoint import save_params
    folder.mkdir(parents=True, exist_ok=True)
    save_params(model, folder / "params")
    np.save(folder / "log_dur.npy", np.asarray(log_dur))
    (folder / "level2.json").write_text(json.dumps({
        "model": dataclasses.asdict(model_cfg), "prior": [float(x) for x in prior],
        "decode": dataclasses.asdict(decode)}, indent=1))
    return folder


def load_trained(run_dir: str | Path) -> TrainedTwoLevel:
    """The two-level model of a ``two_level`` run folder (or of its ``deploy`` folder)."""
    from ahjax.train.checkpoint import load_params
    run_dir = Path(run_dir)
    folder = run_dir if (run_dir / "level2.json").is_file() else run_dir / "deploy"
    if not (folder / "level2.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a two_level run folder (no deploy/level2.json)")
    saved = json.loads((folder / "level2.json").read_text())
    mcfg = saved["model"]
    mcfg["scales"] = tuple(mcfg["scales"])
    mcfg["emb_keys"] = tuple(mcfg["emb_keys"])
    cfg = TwoLevelConfig(**mcfg)
    model = load_params(lambda: TwoLevelModel(cfg, rngs=nnx.Rngs(0)), folder / "params")
    return TrainedTwoLevel(model, np.load(folder / "log_dur.npy"), np.asarray(saved["prior"]),
                           DecodeConfig(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in saved["decode"].items()}))
