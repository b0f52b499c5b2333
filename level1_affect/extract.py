"""Level 1 over whole videos and whole datasets: every encoder, into the feature store.

``Extractor.video(path)`` runs face, voice and text on one video and returns the arrays
named in ``level1_affect.schema`` (plus what it learned: fps, transcript, timings).
``extract_dataset(root, out)`` does that for every video of a BAH tree: a progress bar,
resumable (videos already in the store are skipped), atomic per-video writes, and one
failing video reported and skipped while the rest go on.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ahjax.data.store import FeatureStore
from level1_affect import schema


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
    detect_every: int = 1
    # Tolerated difference between annotated and decoded frame counts (containers round).
    label_slack: int = 3
    # Change/sustain talk on frames: "learned" (the talk-type model trained on AnnoMI),
    # "lexicon" (the phrase rules) or the folder of a saved talk-type model.
    talk_type: str = "learned"

    def __post_init__(self):
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
    ``python -m ahjax.extract`` and the experiments find the same cached features. The key
    includes which talk-type model makes the change/sustain tracks (``talk_identity``)."""
    import hashlib
    from ahjax import assets
    key = json.dumps([str(Path(root).resolve()), dataclasses.asdict(config),
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

    # Encoders are built on first use so that a text-only run never loads MediaPipe.
    def _face_encoder(self, fps):
        from level1_affect.face import FaceEncoder
        if self._face is None:
            self._face = FaceEncoder(detect_every=self.config.detect_every)
        return self._face

    def _whisper_model(self):
        from level1_affect.whisper.transcribe import WhisperJax
        if self._whisper is None:
            self._whisper = WhisperJax.load()
        return self._whisper

    def _text_encoder(self):
        from level1_affect.text import TextEncoder
        if self._text is None:
            self._text = TextEncoder(embeddings=self.config.text_embeddings,
                                     talk_type=self.config.talk_type)
        return self._text

    def video(self, path: str | Path, chunks: Sequence | None = None) -> tuple[dict, dict]:
        """Level-1 arrays for one video file and an info dict.

        ``chunks`` are transcript chunks (``ahjax.data.transcript.Chunk``) on the video's
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
        t0 = time.perf_counter()
        frames, fps, n_frames = read_video_frames(path)
        if cfg.face:
            face = self._face_encoder(fps).encode(frames, fps)
            arrays.update({k: face[k] for k in ("face_present", "face_expr", "face_blend",
                                               "face_desc")})
            n_frames = len(arrays["face_present"])
        else:
            n_frames = n_frames or sum(1 for _ in frames)
        timings["face"] = time.perf_counter() - t0

        info: dict = {"fps": float(fps), "n_frames": int(n_frames), "warnings": []}
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
        audio = None
        if cfg.voice or cfg.asr != "never":
            try:
                audio = audio_lib.load_audio(path, sr=16000)
            except audio_lib.NoAudioError as err:
                info["warnings"].append(str(err))
        t0 = time.perf_counter()
        if cfg.voice:
            voice = self._voice_arrays(audio, fps, grid_n)
            arrays.update({k: v if take is None else v[take] for k, v in voice.items()})
        timings["voice"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        words, language, source = self._words(audio, chunks, info["warnings"])
        timings["asr"] = time.perf_counter() - t0
        info.update(language=language, transcript_source=source,
                    transcript=" ".join(w["word"] for w in words).strip())
        t0 = time.perf_counter()
        if cfg.text:
            text = self._text_encoder().encode(words, fps, grid_n)
            if take is not None:
                text = {k: v[take] for k, v in text.items()}
            arrays["text_affect"] = text["text_affect"]
            if cfg.text_embeddings:
                arrays["text_emb"] = text["text_emb"]
        timings["text"] = time.perf_counter() - t0
        info["seconds"] = timings
        info["words"] = words
        return {k: np.asarray(v, np.float32) for k, v in arrays.items()}, info

    def _voice_arrays(self, audio, fps, n_frames) -> dict:
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
            out["voice_emb"] = self._whisper_model().embed(audio, fps, n_frames)
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
        tr, notes = transcribe_speech(self._whisper_model(), audio)
        warnings.extend(notes)
        if tr.language is None:
            return [], None, "none"
        words = [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"])}
                 for w in tr.words]
        return words, tr.language, "whisper"


def extract_dataset(root: str | Path, out: str | Path, config: ExtractConfig = ExtractConfig(),
                    splits: Sequence[str] = ("train", "val", "test"),
                    progress: bool = True, only: Sequence[str] | None = None) -> dict:
    """Extract every video of the BAH tree at ``root`` into the feature store ``out``.

    ``only`` restricts the run to those video ids. Videos already in the store are
    skipped; a video that fails is reported in the
    returned summary (and ``out/failures.json``) and the others go on. Returns
    ``{"done": n, "skipped": n, "failed": {video_id: message}, "reextracted": {video_id:
    why}, "seconds": {...}}``; a stored video whose arrays no longer pass
    :meth:`FeatureStore.verify` (NaN, wrong shape, unreadable) is extracted again.
    """
    from ahjax.data.bah import load_bah
    from ahjax.data.store import StoreError

    index = load_bah(root, splits=splits)
    store = FeatureStore(out)
    extractor = Extractor(config)
    summary = {"done": 0, "skipped": 0, "failed": {}, "seconds": {}, "video_seconds": 0.0,
               "reextracted": {}}
    todo = [r for r in index.videos if r.split in splits and (only is None or r.video_id in only)]
    bar = tqdm(todo, desc=f"extracting level 1 of {Path(root).name}", unit="video",
               disable=not progress)
    for rec in bar:
        if store.has(rec.video_id):
            try:
                store.verify(rec.video_id)
                summary["skipped"] += 1
                continue
            except StoreError as err:   # corrupt since it was written: extract it again
                summary["reextracted"][rec.video_id] = str(err)
        bar.set_postfix_str(Path(rec.video_id).name[-40:])
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
            summary["done"] += 1
            summary["video_seconds"] += n / info["fps"]
            for k, v in info["seconds"].items():
                summary["seconds"][k] = summary["seconds"].get(k, 0.0) + v
        except Exception as err:  # one bad video must not stop a 1,400-video extraction
            summary["failed"][rec.video_id] = f"{type(err).__name__}: {err}"
            tqdm.write(f"failed: {rec.video_id}: {type(err).__name__}: {err}")
            if not progress:
                traceback.print_exc()
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "failures.json").write_text(json.dumps(summary["failed"], indent=1))
    return summary
