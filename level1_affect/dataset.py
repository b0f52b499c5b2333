"""The one data config and its resolver: from ``--data.*`` to an extracted feature store.

``DataConfig`` is what every experiment takes as ``data``: ``root`` (a BAH tree),
``store`` (a ready feature store) or neither (the demo dataset, made once and cached);
``splits`` and ``annomi`` for the text experiments; ``max_*`` for quick subsets.
``extract_dataset(root, out)`` runs level 1 over every video of a tree or folder
(resumable, a failing video reported while the rest go on, on Ray with ``workers > 1``);
``prepare_store``/``open_store`` resolve ``data`` to an extracted store, ``data_stages``
plans that, ``score_videos`` gives the paper's metrics. ``QUICK_DATA``/``QUICK_EXTRACT``
are the small configs every quick run shares. The top of level 1: the core never imports it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tqdm.auto import tqdm

from ahjax.core import metrics as metrics_lib
from ahjax.core.data import demo
from ahjax.core.data.bah import VideoRecord, load_bah
from ahjax.core.data.store import FeatureStore, StoreError
from ahjax.core.progress import Stage, fmt_seconds
from level1_affect import annomi
from level1_affect.distributed import extract_on_ray
from level1_affect.extract import ExtractConfig, Extractor, default_store_dir, extract_record

CUE_KEYS = ("audio", "body", "facial", "inconsistencies", "language")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where every experiment's data is: videos and their features, BAH transcript splits,
    AnnoMI. Each experiment reads the fields of its kind of data and takes the config the
    same way (``--data.<field>=...``)."""
    # Videos (frame-level experiments).
    root: str = ""             # a BAH tree; "" = the embedded demo dataset (synthetic)
    store: str = ""            # feature store; "" = under $AHJAX_CACHE, keyed by root
    demo_seed: int = 0
    demo_participants: int = 8
    demo_questions: tuple = (1, 2, 3, 4, 5, 6, 7)   # BAH question numbers to record
    demo_min_duration: float = 8.0
    demo_max_duration: float = 20.0
    # BAH transcripts with video labels (text_video_level): a folder of split files;
    # "" = $AHJAX_SPLITS, else the BAH transcript splits beside the repository.
    splits: str = ""
    # AnnoMI (talk_type): a folder with AnnoMI-full.csv (or AnnoMI-simple.csv) and, for a
    # held-out test, test_ids.txt; "" = the copy bundled with level 1.
    annomi: str = ""
    # Subsets for quick runs (0 = everything): stratified training / evaluation transcripts
    # drawn with sample_seed, the first AnnoMI conversations.
    max_train: int = 0
    max_eval: int = 0
    max_conversations: int = 0
    sample_seed: int = 0

    def __post_init__(self):
        for name in ("max_train", "max_eval", "max_conversations", "demo_participants"):
            if getattr(self, name) < 0:
                raise ValueError(f"DataConfig: {name} must be >= 0, got {getattr(self, name)}")


def transcript_splits(data: DataConfig) -> Path:
    """The folder of BAH transcript split files for ``data``: ``data.splits``, else
    ``$AHJAX_SPLITS``, else ``../shared/data/bah-video-splits`` beside the repository."""
    if data.splits:
        return Path(data.splits).expanduser().resolve()
    env = os.environ.get("AHJAX_SPLITS")
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).resolve().parents[2] / "shared" / "data"
            / "bah-video-splits").resolve()


def annomi_source(data: DataConfig) -> Path:
    """The AnnoMI CSV for ``data`` (``data.annomi``'s full or simple file, else the bundled
    copy); a clear error when the folder has neither."""
    return annomi.resolve(data.annomi)


#: The quick configs' demo: 4 participants x questions 4 and 7, 6-8 s videos.
QUICK_DATA = DataConfig(demo_participants=4, demo_questions=(4, 7), demo_min_duration=6.0,
                        demo_max_duration=8.0)
#: The quick configs' extraction: no voice embeddings, the face every second frame.
QUICK_EXTRACT = ExtractConfig(voice_embeddings=False, detect_every=2)


def demo_path(data: DataConfig) -> Path:
    """Where the demo tree for ``data`` is cached (it may not exist yet)."""
    qs = demo_questions(data)
    tag = (f"p{data.demo_participants}-q{''.join(map(str, qs))}-"
           f"d{data.demo_min_duration:g}-{data.demo_max_duration:g}")
    cache = demo.default_cache_dir(data.demo_seed)
    return cache.parent / f"{cache.name}-{tag}"


def demo_questions(data: DataConfig) -> tuple:
    """``data.demo_questions`` as a tuple of question numbers (an int n: 1..n)."""
    qs = data.demo_questions
    return tuple(range(1, qs + 1)) if isinstance(qs, int) else tuple(int(q) for q in qs)


def demo_root(data: DataConfig, progress: bool = False) -> Path:
    """The cached demo tree for ``data`` (generated on first use, with a bar when
    ``progress``)."""
    target = demo_path(data)
    print(f"demo dataset: {target}", flush=True)
    return demo.ensure_demo(target, seed=data.demo_seed, participants=data.demo_participants,
                            questions=demo_questions(data),
                            min_duration=data.demo_min_duration,
                            max_duration=data.demo_max_duration, progress=progress)


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def folder_records(root: str | Path) -> list:
    """Records of every video under a plain folder (not a BAH tree): id = the path relative
    to ``root`` without its suffix, no labels, no split, no transcript (Whisper decides)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)}) in "
                                "this folder, and it is not a BAH tree (no split/ folder)")
    return [VideoRecord(video_id=p.relative_to(root).with_suffix("").as_posix(),
                        participant="", question=0, split="", video_path=p,
                        frame_labels=None, video_label=-1) for p in paths]


def dataset_records(root: str | Path, splits: Sequence[str] = ("train", "val", "test"),
                    only: Sequence[str] | None = None) -> list:
    """The videos to extract: a BAH tree's (it has a ``split/`` folder) in ``splits``, else
    every video file of a plain folder; ``only`` restricts them to those ids."""
    root = Path(root)
    if (root / "split").is_dir():
        index = load_bah(root, splits=splits)
        for warning in index.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        records = [r for r in index.videos if r.split in splits]
    else:
        records = folder_records(root)
    return [r for r in records if only is None or r.video_id in only]


def _stored_sound(store: FeatureStore, video_id: str) -> bool:
    """Whether ``video_id`` is in ``store`` and passes :meth:`FeatureStore.verify`."""
    if not store.has(video_id):
        return False
    try:
        store.verify(video_id)
        return True
    except StoreError:
        return False


def _add(summary: dict, res: dict, progress: bool) -> None:
    vid = res["video_id"]
    if "reextracted" in res:
        summary["reextracted"][vid] = res["reextracted"]
    if res["status"] == "skipped":
        summary["skipped"] += 1
    elif res["status"] == "done":
        summary["done"] += 1
        summary["video_seconds"] += res["video_seconds"]
        for k, v in res["seconds"].items():
            summary["seconds"][k] = summary["seconds"].get(k, 0.0) + v
    else:
        summary["failed"][vid] = res["error"]
        n = len(summary["failed"])
        if n <= SHOW_FAILURES:   # the first few in full; the rest are counted at the end
            first = (res["error"].splitlines() or [""])[0]
            tqdm.write(f"failed: {vid}: {first}", file=sys.stderr)
            if not progress:
                print(res["traceback"], file=sys.stderr)
        elif n == SHOW_FAILURES + 1:
            tqdm.write("failed: more videos; every failure is listed in failures.json",
                       file=sys.stderr)


#: How many failed videos ``extract_dataset`` names as they fail (all go to failures.json).
SHOW_FAILURES = 5
#: Videos ``extract_dataset`` works on at once in one process (Ray spreads wider).
VIDEOS_IN_FLIGHT = 3


def extract_dataset(root: str | Path, out: str | Path, config: ExtractConfig = ExtractConfig(),
                    splits: Sequence[str] = ("train", "val", "test"),
                    progress: bool = True, only: Sequence[str] | None = None,
                    workers: int = 1, ray_address: str | None = None,
                    extractor: Extractor | None = None) -> dict:
    """Extract every video of ``root`` (a BAH tree or a folder of videos; ``only``: those
    ids) into the feature store ``out``; videos stored and sound are skipped, a failing one
    is reported and the rest go on. Returns ``{"done", "skipped", "failed": {id: message},
    "reextracted": {id: why}, "seconds"}`` (failures also in ``out/failures.json``).
    ``workers > 1`` or ``ray_address``: on Ray, same results (docs/distributed.md).
    ``extractor``: an :class:`Extractor` of ``config`` whose models may already be loaded
    (or be loading in another thread: its loads are once, under a lock)."""
    records = dataset_records(root, splits, only)
    store = FeatureStore(out)
    summary = {"done": 0, "skipped": 0, "failed": {}, "seconds": {}, "video_seconds": 0.0,
               "reextracted": {}}
    if workers < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    if extractor is not None and extractor.config != config:
        raise ValueError("extract_dataset: the extractor was made for another ExtractConfig")
    desc = f"extracting level 1 of {Path(root).name}"
    if workers > 1 or ray_address:
        for res in extract_on_ray(records, out, config, root, workers=workers,
                                              address=ray_address, progress=progress,
                                              desc=desc):
            _add(summary, res, progress)
    else:
        # Videos already stored and sound are counted first, and the models are loaded
        # before the bar starts, so that its rate and estimate are those of real work.
        todo = []
        for rec in records:
            if _stored_sound(store, rec.video_id):
                _add(summary, {"video_id": rec.video_id, "status": "skipped"}, progress)
            else:
                todo.append(rec)
        if todo:
            extractor = extractor or Extractor(config)
            if progress and summary["skipped"]:
                print(f"{summary['skipped']} of {len(records)} videos already extracted",
                      file=sys.stderr, flush=True)
            if any(rec.video_path is not None for rec in todo):
                if progress:
                    print("loading the level-1 models this config uses", file=sys.stderr,
                          flush=True)
                t0 = time.perf_counter()
                extractor.load(asr=any(not rec.chunks for rec in todo))
                summary["seconds"]["load"] = time.perf_counter() - t0
                if progress:
                    print(f"level-1 models loaded in {fmt_seconds(summary['seconds']['load'])}",
                          file=sys.stderr, flush=True)
            # Several videos in flight: each one's face track and its voice and text leave
            # a core idle part of the time, which the others' work fills (three finished
            # 14 demo videos 5% sooner than two). Results are those of one video at a
            # time (each video's arrays are its own).
            with concurrent.futures.ThreadPoolExecutor(
                    VIDEOS_IN_FLIGHT, thread_name_prefix="ahjax-video") as pool, tqdm(
                    total=len(todo), desc=desc, unit="video", disable=not progress) as bar:
                results = pool.map(lambda rec: extract_record(extractor, rec, store, config,
                                                              root), todo)
                for rec, res in zip(todo, results):
                    bar.set_postfix_str(Path(rec.video_id).name[-40:])
                    _add(summary, res, progress)
                    bar.update(1)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "failures.json").write_text(json.dumps(summary["failed"], indent=1))
    if len(summary["failed"]) > SHOW_FAILURES:
        print(f"{len(summary['failed'])} of {len(records)} videos failed; every one with its "
              f"error: {Path(out) / 'failures.json'}", file=sys.stderr)
    return summary


def store_dir(root: Path, extract: ExtractConfig) -> Path:
    """The default feature-store folder of ``root`` under one extraction config."""
    return default_store_dir(root, extract)


def prepare_store(data: DataConfig, extract: ExtractConfig = ExtractConfig(),
                  progress: bool = True, root: Path | None = None,
                  extractor: Extractor | None = None) -> tuple[FeatureStore, Path, dict]:
    """(feature store, dataset root, extraction summary) for ``data``; ``root``: the
    dataset root when the caller resolved it already (:func:`data_root`); ``extractor``:
    as :func:`extract_dataset` takes it.

    Videos already extracted are skipped, so a second run costs only the index build.
    Raises RuntimeError when no video could be extracted at all.
    """
    root = data_root(data, progress) if root is None else Path(root)
    out = Path(data.store).expanduser() if data.store else store_dir(root, extract)
    summary = extract_dataset(root, out, extract, progress=progress, extractor=extractor)
    if summary["failed"]:
        print(f"{len(summary['failed'])} video(s) failed extraction; see {out}/failures.json",
              flush=True)
    store = FeatureStore(out)
    if not store.video_ids():
        raise RuntimeError(f"no video of {root} could be extracted; see {out}/failures.json")
    add_cue_tracks(store)
    return store, root, summary


def data_root(data: DataConfig, progress: bool = False) -> Path:
    """The dataset root of ``data``: ``data.root``, or the demo tree (made on first use)."""
    return Path(data.root).expanduser() if data.root else demo_root(data, progress)


# Rough seconds on an idle 2-core CPU, from a fresh-clone run of the default config
# (2026-12-07 evening, experiments/results/first_run.md: 56 demo videos, 954 s of video;
# the demo 70 s with the level-1 models loading beside it, extraction 131 s with the
# landmarker on every 5th frame and three videos in flight). The face track is most of
# extraction when transcripts come with the data.
DEMO_S_PER_VIDEO_S = 0.073
EXTRACT_S_PER_VIDEO = 1.0          # opening, writing, per-length compilation
EXTRACT_S_PER_VIDEO_S = 0.164      # at detect_every=1; the face share shrinks with k
EXTRACT_FACE_SHARE = 0.65
EXTRACT_LOAD_S = 25.0


def demo_video_seconds(data: DataConfig) -> float:
    """About how many seconds of video ``data``'s demo holds: its answers run to about 3/4
    of the way from the shortest to the longest (the default's 56 videos: 954 s, 8 to 20 s
    each)."""
    n = data.demo_participants * len(demo_questions(data))
    return n * (data.demo_min_duration + 0.75 * (data.demo_max_duration - data.demo_min_duration))


def data_stages(data: DataConfig, extract: ExtractConfig = ExtractConfig(), *,
                load_beside_demo: bool = False) -> list:
    """The plan's data stages for ``data`` (:class:`ahjax.core.progress.Stage`): the demo
    dataset (unless ``data.root`` is given) and the level-1 extraction, each with a rough
    estimate, or ``cached`` for what is already on disk. ``load_beside_demo``: the caller
    loads the level-1 models while the demo is made, so a demo made in this run hides
    their loading. Reads no video."""
    stages = []
    if data.root:
        root = Path(data.root).expanduser()
        records = _records(root)
        n = len(records)
        # Durations from the annotation (BAH: about 24 fps), else 15 s a video.
        video_s = sum(len(r.frame_labels) / 24.0 if r.frame_labels is not None else 15.0
                      for r in records)
        ids = {r.video_id for r in records}
    else:   # as prepare_store: the demo tree, extracted into data.store when named
        root = demo_path(data)
        n = data.demo_participants * len(demo_questions(data))
        video_s = demo_video_seconds(data)
        ids = None
        cached = (root / "ground_truth.json").is_file()
        stages.append(Stage("demo dataset", f"{n} synthetic videos, "
                            f"{video_s / 60:.0f} min of video",
                            0.0 if cached else DEMO_S_PER_VIDEO_S * video_s, cached=cached))
    out = Path(data.store).expanduser() if data.store else store_dir(root, extract)
    stored = set(FeatureStore(out).video_ids())
    done = len(stored) if ids is None else len(stored & ids)
    done = min(done, n)
    left = n - done
    per_s = EXTRACT_S_PER_VIDEO_S * (1 - EXTRACT_FACE_SHARE
                                    + EXTRACT_FACE_SHARE / extract.detect_every)
    hidden = load_beside_demo and bool(stages) and not stages[0].cached
    seconds = ((0.0 if hidden else EXTRACT_LOAD_S) + left * EXTRACT_S_PER_VIDEO
               + per_s * video_s * left / max(n, 1)) if left else 0.0
    what = f"{n} videos, face landmarker every " + (
        "frame" if extract.detect_every == 1 else f"{extract.detect_every} frames")
    stages.append(Stage("level-1 extraction", what, seconds, cached=n > 0 and not left,
                        note=f"{done} of {n} videos cached" if 0 < done < n else ""))
    return stages


def _records(root: Path) -> list:
    try:
        return dataset_records(root)
    except (OSError, ValueError):   # the extraction stage reports it with the file named
        return []


def open_store(data: DataConfig, extract: ExtractConfig = ExtractConfig(),
               progress: bool = True) -> FeatureStore:
    """The feature store of ``data``, the one resolver every experiment uses: a ready store
    named by ``data.store`` (and no ``data.root``) as it is; otherwise ``prepare_store``
    (the BAH tree at ``data.root``, or the demo dataset, extracted once and cached)."""
    if data.store and not data.root:
        path = Path(data.store).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"feature store {path} does not exist")
        store = FeatureStore(path)
        if store.video_ids():
            return store
    return prepare_store(data, extract, progress=progress)[0]


def add_cue_tracks(store: FeatureStore) -> None:
    """Write a ``cues`` (n, 5) array per video from its annotated segments' ``all_cues``.

    A frame inside the j-th A/H segment gets the j-th cue dict's non-empty keys as 1
    (``CUE_KEYS`` order); frames outside segments are 0. Videos with no cue annotation
    get no array, and models then train without the auxiliary cue loss.
    """
    for vid in store.video_ids():
        path = store.path(vid) / "cues.npy"
        if path.is_file():
            continue
        meta = store.meta(vid)
        cues, segments = meta.get("cues") or [], meta.get("segments") or []
        n = int(meta["n_frames"])
        arr = np.zeros((n, len(CUE_KEYS)), np.float32)
        for j, (start, end) in enumerate(segments):
            cue = cues[j] if j < len(cues) and isinstance(cues[j], dict) else {}
            for k, key in enumerate(CUE_KEYS):
                if cue.get(key):
                    arr[max(start, 0):min(end + 1, n), k] = 1.0
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)
        meta.setdefault("shapes", {})["cues"] = list(arr.shape)
        meta_path = store.path(vid) / "meta.json"
        tmp_meta = meta_path.with_suffix(".tmp")
        tmp_meta.write_text(json.dumps(meta, indent=1))
        tmp_meta.replace(meta_path)


def video_labels(store: FeatureStore, video_ids: Sequence[str]) -> np.ndarray:
    """Video-level labels from the store's meta."""
    return np.asarray([int(store.meta(v)["video_label"]) for v in video_ids])


def frame_labels(store: FeatureStore, video_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Frame labels per video (int, -1 unlabelled)."""
    return {v: np.asarray(store.read(v, "labels"), np.int64) for v in video_ids}


def score_videos(labels: Mapping[str, np.ndarray], probs: Mapping[str, np.ndarray],
                 vlabels: np.ndarray, decoded: Mapping[str, np.ndarray] | None = None) -> dict:
    """Frame-level AVGF1/AP/WAR (+ F1s) and video-level AVGF1/AP for one method.

    ``probs``: video id -> (n,) A/H probabilities; with ``decoded`` (id -> (n,) 0/1) the
    hard-decision metrics come from the decoded labels and AP stays the probabilities'.
    Video level: the mean frame probability (or vote), thresholded at 0.5 and ranked."""
    ids = list(probs)
    y = np.concatenate([labels[v] for v in ids])
    p = np.concatenate([probs[v] for v in ids])
    out = metrics_lib.bah_metrics(y, p)
    if decoded is not None:
        hard = metrics_lib.bah_metrics(y, np.concatenate([decoded[v] for v in ids]).astype(float))
        for k in ("AVGF1", "WAR", "F1_POS", "F1_NEG", "W_F1", "CONF"):
            out[k] = hard[k]
        frame_votes = [np.asarray(decoded[v], float) for v in ids]
    else:
        frame_votes = [np.asarray(probs[v], float) for v in ids]
    vprob = np.asarray([x.mean() for x in frame_votes])
    if len(set(vlabels.tolist())) == 2:
        vm = metrics_lib.bah_metrics(vlabels, vprob)
        out["VIDEO_AVGF1"], out["VIDEO_AP"] = vm["AVGF1"], vm["AP"]
    out.pop("CONF", None)
    return out
