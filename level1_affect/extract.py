"""Level 1 of one video: every encoder, from the media read once to the feature store.

``Extractor.video(path)`` reads a video once (``level1_affect.media``) and runs face, voice
and text on its frames and audio; it returns the arrays named in ``level1_affect.schema``
(plus what it learned: fps, transcript, timings). ``extract_record`` writes one video into
a feature store; ``level1_affect.dataset.extract_dataset`` does that for a whole dataset.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import re
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np

from ahjax.core import assets
from ahjax.core.data.store import FeatureStore, StoreError
from level1_affect import media, schema
from level1_affect import talk_type as tt
from level1_affect.face import FaceEncoder
from level1_affect.loading import load_once
from level1_affect.text import TextEncoder, words_from_chunks
from level1_affect.voice import voice_arrays
from level1_affect.whisper.transcribe import WhisperJax, english, transcript_words


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
    # 5: face tracks within a measured tolerance of every frame's (expression probabilities
    # 0.004 mean |diff|, the same top expression on 99.7% of frames) for 0.38x the face time
    # of every frame (docs/performance.md, "The first run").
    detect_every: int = 5
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
    if talk_type == "learned":
        return f"default-v{tt.DEFAULT_VERSION}"
    return tt.model_id(talk_type)


def default_store_dir(root: str | Path, config: ExtractConfig) -> Path:
    """The feature store used for ``root`` under ``config`` when none is named: under
    ``$AHJAX_CACHE/features``, keyed by the root's absolute path and the config, so that
    ``python -m ahjax extract`` and the experiments find the same cached features. The key
    includes which talk-type model makes the change/sustain tracks (``talk_identity``)."""
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
    def _face_encoder(self) -> FaceEncoder:
        return load_once(self, "_face", lambda: FaceEncoder(detect_every=self.config.detect_every))

    def _whisper_model(self) -> WhisperJax:
        return load_once(self, "_whisper", WhisperJax.load)

    def _text_encoder(self) -> TextEncoder:
        return load_once(self, "_text", lambda: TextEncoder(
            embeddings=self.config.text_embeddings, talk_type=self.config.talk_type))

    def load(self, asr: bool = True) -> None:
        """Load every encoder this config uses now (Whisper for the voice embeddings, and for
        transcription when ``asr``), so that the first video's time is its own."""
        cfg = self.config
        if cfg.face:
            self._face_encoder()
        if (cfg.voice and cfg.voice_embeddings) or (asr and cfg.asr != "never"):
            self._whisper_model()
        if cfg.text:
            self._text_encoder().load()

    def video(self, path: str | Path, chunks: Sequence | None = None) -> tuple[dict, dict]:
        """Level-1 arrays (schema name -> float32 (n_frames, d)) and an info dict (fps,
        n_frames, frame times, transcript, warnings, per-encoder seconds) of one video file,
        read once. ``chunks``: the dataset's transcript (``ahjax.core.data.transcript.Chunk``),
        used for text unless ``asr`` is "always"; otherwise Whisper's words."""
        cfg = self.config
        needs_audio = cfg.voice or cfg.asr != "never"
        frames, pts, audio, fps, n_guess = media.read(path, audio=needs_audio)
        warnings = [f"{Path(path)}: no audio track"] if needs_audio and audio is None else []
        has_audio = audio is not None and len(audio) > 0
        timings: dict[str, float] = {}
        arrays: dict[str, np.ndarray] = {}

        # The face track (MediaPipe on one core) runs in a thread while this one transcribes
        # the audio and encodes it for the voice embeddings (Whisper in XLA): the two sides
        # overlap on two cores. Their results are those of the sequential order; ``timings``
        # then holds overlapping seconds.
        def face_track():
            t0 = time.perf_counter()
            face = self._face_encoder().encode(frames, fps)
            timings["face"] = time.perf_counter() - t0
            return face

        with contextlib.closing(frames), concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="ahjax-face") as pool:
            face_job = pool.submit(face_track) if cfg.face else None
            t0 = time.perf_counter()
            if chunks and cfg.asr != "always":
                words, language, source = (words_from_chunks(chunks),
                                           chunks[0].language or None, "dataset")
            elif cfg.asr == "never" or not has_audio:
                words, language, source = [], None, "none"
            else:
                words, language = transcript_words(self._whisper_model(), audio, cfg.language,
                                                   warnings)
                source = "whisper" if language is not None else "none"
            timings["asr"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            states = None
            if cfg.voice and cfg.voice_embeddings and has_audio:
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

        # Voice and text are computed on a constant grid at ``fps`` that spans the video's
        # real duration; a variable-frame-rate video's frames then take the grid rows at
        # their presentation times (for a constant rate this is the identity).
        times = media.frame_times(pts, n_frames, fps)
        grid_n, take = n_frames, None
        if media.is_variable_rate(times, fps):
            grid_n = int(np.ceil(times[-1] * fps)) + 1
            take = np.clip(np.round(times * fps).astype(int), 0, grid_n - 1)
            warnings.append(f"variable frame rate: frames placed by their presentation "
                            f"times ({times[-1]:.2f} s for {n_frames} frames at a mean "
                            f"{fps:.2f} fps)")
        t0 = time.perf_counter()
        if cfg.voice:
            whisper = self._whisper_model() if cfg.voice_embeddings and has_audio else None
            voice = voice_arrays(audio, fps, grid_n, cfg.voice_embeddings, whisper, states)
            arrays.update({k: v if take is None else v[take] for k, v in voice.items()})
        timings["voice"] += time.perf_counter() - t0
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
        info = {"fps": float(fps), "n_frames": int(n_frames), "warnings": warnings,
                "frame_times": times, "language": language, "transcript_source": source,
                "transcript": " ".join(w["word"] for w in words).strip(),
                "seconds": timings, "words": words}
        return {k: np.asarray(v, np.float32) for k, v in arrays.items()}, info


def extract_record(extractor: "Extractor", rec, store: FeatureStore, config: ExtractConfig,
                   root: str | Path) -> dict:
    """Extract one video record into ``store`` (atomic). Returns ``{"status": "done" |
    "skipped" | "failed", ...}`` with the error message, the re-extraction reason, its
    duration and per-encoder seconds; never raises for a bad video."""
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
