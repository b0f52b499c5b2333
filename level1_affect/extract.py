"""Level 1 over whole videos and whole datasets: every encoder, into the feature store.

``Extractor.video(path)`` runs face, voice and text on one video and returns the arrays
named in ``level1_affect.schema`` (plus what it learned: fps, transcript, timings).
``extract_dataset(root, out)`` does that for every video of a BAH tree or a plain folder
of videos: a progress bar, resumable (videos already in the store are skipped), atomic
per-video writes, one failing video reported and skipped while the rest go on, and, with
``workers > 1``, the videos spread over Ray actors (:mod:`level1_affect.distributed`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ahjax.core.data.store import FeatureStore
from ahjax.core.progress import fmt_seconds
from level1_affect import schema
from level1_affect.loading import load_once


class LabelLengthError(ValueError):
    """The annotation's frame labels do not fit the video's frame count."""


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What level 1 computes. Every field is a hyperparameter written beside the run."""
    face: bool = True
    voice: bool = True
    text: bool = True
    # "auto": the dataset's transcript when it has one, else our Whisper; "always"; "never".
    asr: str = "auto"
    voice_embeddings: bool = True
    text_embeddings: bool = True
    # Run the face landmarker every k-th frame and interpolate between (1 = every frame).
    # 3: face tracks within a measured tolerance of every frame's (expression probabilities
    # 0.0016 mean |diff|, the same top expression on every frame) for about half the face
    # time (experiments/results/extract_speed.md).
    detect_every: int = 3
    # Tolerated difference between annotated and decoded frame counts (containers round).
    label_slack: int = 3
    # Change/sustain talk on frames: "learned" (the talk-type model trained on AnnoMI),
    # "lexicon" (the phrase rules) or the folder of a saved talk-type model.
    talk_type: str = "learned"
    # The language Whisper transcribes in ("en": the text models read English); "auto":
    # Whisper detects it. Speech in another language keeps its transcript, but the text
    # tracks are marked absent (word_present 0), with a warning.
    language: str = "en"

    def __post_init__(self):
        if self.language != "auto" and not re.fullmatch(r"[a-z]{2,3}", self.language):
            raise ValueError(f"language={self.language!r}: 'auto' or a language code such "
                             "as 'en' or 'fr'")
        if self.detect_every < 1:
            raise ValueError(f"detect_every={self.detect_every}: must be at least 1")
        if self.label_slack < 0:
            raise ValueError(f"label_slack={self.label_slack}: must be at least 0")
        if self.asr not in ("auto", "always", "never"):
            raise ValueError(f"asr={self.asr!r}: one of auto, always, never")
        if self.talk_type not in ("learned", "lexicon") and not Path(self.talk_type).is_dir():
            raise ValueError(f"talk_type={self.talk_type!r}: 'learned', 'lexicon' or the "
                             "folder of a saved talk-type model")


def talk_identity(talk_type: str) -> str:
    """What makes the change/sustain tracks: the phrase rules, the default model's version or
    a saved model's content hash, so a store is never reused across different models."""
    if talk_type == "lexicon":
        return "lexicon"
    from level1_affect import talk_type as tt
    if talk_type == "learned":
        return f"default-v{tt.DEFAULT_VERSION}"
    return tt.model_id(talk_type)


def default_store_dir(root: str | Path, config: ExtractConfig) -> Path:
    """The feature store used for ``root`` under ``config`` when none is named: under
    ``$AHJAX_CACHE/features``, keyed by the root's absolute path and the config, so that
    ``python -m ahjax extract`` and the experiments find the same cached features. The key
    includes which talk-type model makes the change/sustain tracks (``talk_identity``)."""
    import hashlib
    from ahjax.core import assets
    fields = dataclasses.asdict(config)
    if config.language == "en":   # the default: stores keyed before the field stay valid
        del fields["language"]
    key = json.dumps([str(Path(root).resolve()), fields,
                      talk_identity(config.talk_type)], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return assets.cache_dir() / "features" / f"{Path(root).resolve().name}-{digest}"


def fit_labels(labels: np.ndarray | None, n_frames: int, slack: int, where: str) -> np.ndarray:
    """Frame labels of length ``n_frames``: -1 fills missing frames, within ``slack``.

    A BAH annotation can differ from the decoded frame count by a frame or two (container
    rounding); beyond ``slack`` frames it is a different video or a broken annotation and
    raises :class:`LabelLengthError` naming the video.
    """
    if labels is None:
        return np.full(n_frames, -1, np.int8)
    labels = np.asarray(labels, np.int8)
    if abs(len(labels) - n_frames) > slack:
        raise LabelLengthError(
            f"{where}: {len(labels)} frame labels for a video of {n_frames} frames "
            f"(more than {slack} apart)")
    out = np.full(n_frames, -1, np.int8)
    m = min(n_frames, len(labels))
    out[:m] = labels[:m]
    return out


class Extractor:
    """All level-1 encoders, loaded lazily once and reused across videos."""

    def __init__(self, config: ExtractConfig = ExtractConfig()):
        self.config = config
        self._face = self._voice = self._text = self._whisper = None

    # Encoders are built on first use (once, under a lock: threads may share an Extractor)
    # so that a text-only run never loads MediaPipe.
    def _face_encoder(self, fps):
        from level1_affect.face import FaceEncoder
        return load_once(self, "_face",
                         lambda: FaceEncoder(detect_every=self.config.detect_every))

    def _whisper_model(self):
        from level1_affect.whisper.transcribe import WhisperJax
        return load_once(self, "_whisper", WhisperJax.load)

    def _text_encoder(self):
        from level1_affect.text import TextEncoder
        return load_once(self, "_text", lambda: TextEncoder(
            embeddings=self.config.text_embeddings, talk_type=self.config.talk_type))

    def load(self, asr: bool = True) -> None:
        """Load every encoder this config uses now (Whisper for the voice embeddings, and for
        transcription when ``asr``), so that the first video's time is its own."""
        cfg = self.config
        if cfg.face:
            self._face_encoder(None)
        if (cfg.voice and cfg.voice_embeddings) or (asr and cfg.asr != "never"):
            self._whisper_model()
        if cfg.text:
            self._text_encoder().load()

    def video(self, path: str | Path, chunks: Sequence | None = None) -> tuple[dict, dict]:
        """Level-1 arrays for one video file and an info dict.

        ``chunks`` are transcript chunks (``ahjax.core.data.transcript.Chunk``) on the video's
        timeline, used for text when given (and ``asr`` is not "always"); otherwise the
        words come from Whisper. Returns ``(arrays, info)`` where ``arrays`` maps schema
        names to float32 (n_frames, d) arrays and ``info`` holds fps, n_frames, the
        transcript used and per-encoder seconds.
        """
        from level1_affect import audio as audio_lib
        from level1_affect.face import frame_times, is_variable_rate, read_video_frames

        cfg = self.config
        timings: dict[str, float] = {}
        arrays: dict[str, np.ndarray] = {}
        frames, fps, n_guess = read_video_frames(path)
        warnings: list[str] = []

        # The face track (MediaPipe on one core) runs in a thread while this one decodes the
        # audio, transcribes it and encodes it for the voice embeddings (Whisper in XLA):
        # the two sides overlap on two cores. Their results are those of the sequential
        # order; ``timings`` then holds overlapping seconds.
        def face_track():
            t0 = time.perf_counter()
            face = self._face_encoder(fps).encode(frames, fps)
            timings["face"] = time.perf_counter() - t0
            return face

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ahjax-face") as pool:
            face_job = pool.submit(face_track) if cfg.face else None
            audio = None
            if cfg.voice or cfg.asr != "never":
                try:
                    audio = audio_lib.load_audio(path, sr=16000)
                except audio_lib.NoAudioError as err:
                    warnings.append(str(err))
            t0 = time.perf_counter()
            words, language, source = self._words(audio, chunks, warnings)
            timings["asr"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            states = None
            if cfg.voice and cfg.voice_embeddings and audio is not None and len(audio):
                states = self._whisper_model().embed_states(audio, n_guess / fps)
            timings["voice"] = time.perf_counter() - t0
            if face_job is not None:
                face = face_job.result()
                arrays.update({k: face[k] for k in ("face_present", "face_expr", "face_blend",
                                                   "face_desc")})
                n_frames = len(arrays["face_present"])
                if n_frames and not arrays["face_present"].any():
                    warnings.append("no face detected in the whole video: the face "
                                    "features are zero and face_present is 0")
            else:
                timings["face"] = 0.0
                n_frames = n_guess or sum(1 for _ in frames)

        info: dict = {"fps": float(fps), "n_frames": int(n_frames), "warnings": warnings}
        # Voice and text are computed on a constant grid at ``fps`` that spans the video's
        # real duration; a variable-frame-rate video's frames then take the grid rows at
        # their presentation times (for a constant rate this is the identity).
        times = frame_times(path, n_frames, fps)
        grid_n, take = n_frames, None
        if is_variable_rate(times, fps):
            grid_n = int(np.ceil(times[-1] * fps)) + 1
            take = np.clip(np.round(times * fps).astype(int), 0, grid_n - 1)
            info["warnings"].append(f"variable frame rate: frames placed by their presentation "
                                    f"times ({times[-1]:.2f} s for {n_frames} frames at a mean "
                                    f"{fps:.2f} fps)")
        info["frame_times"] = times
        t0 = time.perf_counter()
        if cfg.voice:
            voice = self._voice_arrays(audio, fps, grid_n, states)
            arrays.update({k: v if take is None else v[take] for k, v in voice.items()})
        timings["voice"] += time.perf_counter() - t0
        info.update(language=language, transcript_source=source,
                    transcript=" ".join(w["word"] for w in words).strip())
        t0 = time.perf_counter()
        if cfg.text:
            # Our Whisper's words in another language: the text tracks stay absent.
            readable = source != "whisper" or english(language)
            text = self._text_encoder().encode(words if readable else [], fps, grid_n)
            if take is not None:
                text = {k: v[take] for k, v in text.items()}
            arrays["text_affect"] = text["text_affect"]
            if cfg.text_embeddings:
                arrays["text_emb"] = text["text_emb"]
        timings["text"] = time.perf_counter() - t0
        info["seconds"] = timings
        info["words"] = words
        return {k: np.asarray(v, np.float32) for k, v in arrays.items()}, info

    def _voice_arrays(self, audio, fps, n_frames, states=None) -> dict:
        from level1_affect import audio as audio_lib
        if audio is None or len(audio) == 0:
            # No audio track: zero features and voice_active 0, so level 2 sees no voice.
            out = {"voice_mel": np.zeros((n_frames, 80), np.float32),
                   "voice_prosody": np.zeros((n_frames, len(schema.VOICE_PROSODY)), np.float32)}
            if self.config.voice_embeddings:
                out["voice_emb"] = np.zeros((n_frames, 512), np.float32)
            return out
        out = {"voice_mel": audio_lib.log_mel(audio, 16000, fps, n_frames),
               "voice_prosody": audio_lib.prosody(audio, 16000, fps, n_frames)}
        if self.config.voice_embeddings:
            # Encoder states computed beside the face track cover the guessed length; a
            # longer video than guessed encodes them again.
            emb = None if states is None else self._whisper_model().states_on_frames(
                states, fps, n_frames)
            out["voice_emb"] = (emb if emb is not None
                                else self._whisper_model().embed(audio, fps, n_frames))
        return out

    def _words(self, audio, chunks, warnings: list) -> tuple[list[dict], str | None, str]:
        """Timed words: from the dataset's chunks, else from Whisper where there is speech
        (warnings appended to ``warnings``), else none."""
        cfg = self.config
        if chunks and cfg.asr != "always":
            from level1_affect.text import words_from_chunks
            return words_from_chunks(chunks), (chunks[0].language or None), "dataset"
        if cfg.asr == "never" or audio is None or len(audio) == 0:
            return [], None, "none"
        from level1_affect.whisper.transcribe import transcribe_speech
        whisper = self._whisper_model()
        forced = None if cfg.language == "auto" else cfg.language
        if forced is not None and forced not in whisper.lang_ids:
            raise ValueError(f"language={forced!r}: not a language Whisper knows")
        tr, notes = transcribe_speech(whisper, audio, language=forced)
        warnings.extend(notes)
        if tr.language is None:
            return [], None, "none"
        words = [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"])}
                 for w in tr.words]
        if not english(tr.language):
            how = "detected" if forced is None else "set by language="
            warnings.append(f"speech in language {tr.language!r} ({how}): the text models "
                            "read English, so the text evidence is not used (text tracks "
                            "marked absent)")
        return words, tr.language, "whisper"


def english(language: str | None) -> bool:
    """Whether the text models can read a transcript in ``language`` (None: no words)."""
    return language is None or language.lower() in ("en", "english")


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def folder_records(root: str | Path) -> list:
    """Records of every video under a plain folder (not a BAH tree): id = the path relative
    to ``root`` without its suffix, no labels, no split, no transcript (Whisper decides)."""
    from ahjax.core.data.bah import VideoRecord
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
        from ahjax.core.data.bah import load_bah
        index = load_bah(root, splits=splits)
        for warning in index.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        records = [r for r in index.videos if r.split in splits]
    else:
        records = folder_records(root)
    return [r for r in records if only is None or r.video_id in only]


def extract_record(extractor: "Extractor", rec, store: FeatureStore, config: ExtractConfig,
                   root: str | Path) -> dict:
    """Extract one video record into ``store`` (atomic). Returns ``{"status": "done" |
    "skipped" | "failed", ...}`` with the error message, the re-extraction reason, its
    duration and per-encoder seconds; never raises for a bad video."""
    from ahjax.core.data.store import StoreError
    out: dict = {"video_id": rec.video_id}
    if store.has(rec.video_id):
        try:
            store.verify(rec.video_id)
            return dict(out, status="skipped")
        except StoreError as err:   # corrupt since it was written: extract it again
            out["reextracted"] = str(err)
    try:
        if rec.video_path is None:
            raise FileNotFoundError(f"{rec.video_id}: video file not found under {root}")
        arrays, info = extractor.video(rec.video_path, chunks=rec.chunks)
        n = info["n_frames"]
        arrays["labels"] = fit_labels(rec.frame_labels, n, config.label_slack, rec.video_id)
        meta = {"split": rec.split, "participant": rec.participant, "question": rec.question,
                "fps": info["fps"], "video_label": int(rec.video_label),
                "segments": [list(map(int, s)) for s in rec.segments],
                "cues": rec.cues, "language": info["language"],
                "transcript_source": info["transcript_source"], "words": info["words"],
                "warnings": info["warnings"], "seconds": info["seconds"],
                "columns": {k: list(c) for k, (_, c) in schema.ARRAYS.items() if c}}
        store.write(rec.video_id, arrays, meta)
        return dict(out, status="done", video_seconds=n / info["fps"],
                    seconds=dict(info["seconds"]))
    except Exception as err:  # one bad video must not stop a 1,400-video extraction
        return dict(out, status="failed", error=f"{type(err).__name__}: {err}",
                    traceback=traceback.format_exc())


def _stored_sound(store: FeatureStore, video_id: str) -> bool:
    """Whether ``video_id`` is in ``store`` and passes :meth:`FeatureStore.verify`."""
    from ahjax.core.data.store import StoreError
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


def extract_dataset(root: str | Path, out: str | Path, config: ExtractConfig = ExtractConfig(),
                    splits: Sequence[str] = ("train", "val", "test"),
                    progress: bool = True, only: Sequence[str] | None = None,
                    workers: int = 1, ray_address: str | None = None) -> dict:
    """Extract every video of ``root`` (a BAH tree, or a plain folder of videos) into the
    feature store ``out``.

    ``only`` restricts the run to those video ids. Videos already in the store are
    skipped; a video that fails is reported in the
    returned summary (and ``out/failures.json``) and the others go on. Returns
    ``{"done": n, "skipped": n, "failed": {video_id: message}, "reextracted": {video_id:
    why}, "seconds": {...}}``; a stored video whose arrays no longer pass
    :meth:`FeatureStore.verify` (NaN, wrong shape, unreadable) is extracted again.

    ``workers > 1`` (or a ``ray_address``) runs the videos on Ray: ``workers`` actors, each
    loading the models once, on a local Ray started here (``ray.init()``) or on the
    cluster at ``ray_address`` (``"auto"``: the one this machine belongs to). The workers
    write into ``out`` themselves, so on a cluster it must be a path every node sees (a
    network file system). Results are the same as the sequential path's.
    """
    records = dataset_records(root, splits, only)
    store = FeatureStore(out)
    summary = {"done": 0, "skipped": 0, "failed": {}, "seconds": {}, "video_seconds": 0.0,
               "reextracted": {}}
    if workers < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    desc = f"extracting level 1 of {Path(root).name}"
    if workers > 1 or ray_address:
        from level1_affect import distributed
        for res in distributed.extract_on_ray(records, out, config, root, workers=workers,
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
            extractor = Extractor(config)
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
            bar = tqdm(todo, desc=desc, unit="video", disable=not progress)
            for rec in bar:
                bar.set_postfix_str(Path(rec.video_id).name[-40:])
                _add(summary, extract_record(extractor, rec, store, config, root), progress)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "failures.json").write_text(json.dumps(summary["failed"], indent=1))
    if len(summary["failed"]) > SHOW_FAILURES:
        print(f"{len(summary['failed'])} of {len(records)} videos failed; every one with its "
              f"error: {Path(out) / 'failures.json'}", file=sys.stderr)
    return summary
