"""The voice encoder of level 1: log-mel, prosody and Whisper embeddings on video frames.

``VoiceEncoder(fps).encode(audio, sr, n_frames)`` returns the arrays named in
``level1_affect.schema`` (``voice_mel``, ``voice_prosody``, ``voice_emb``) and, when asked,
the transcript. Whisper is the bundled base model by default; ``load_openai_whisper``
loads any multilingual size from an openai-whisper checkpoint the user already has
(``~/.cache/whisper/<size>.pt``) through the optional ``openai-whisper`` extra.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from pathlib import Path

import numpy as np

from ahjax.core.assets import fetch
from level1_affect import audio as audio_lib
from level1_affect.errors import MediaError
from level1_affect.schema import ARRAYS, VOICE_PROSODY
from level1_affect.whisper import model as wm
from level1_affect.whisper.transcribe import WhisperJax, transcribe_speech

SAMPLE_RATE = 16000


def _resample(audio: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return np.asarray(audio, np.float32)
    import librosa
    return librosa.resample(np.asarray(audio, np.float32), orig_sr=sr, target_sr=SAMPLE_RATE)


class VoiceEncoder:
    """Per-frame voice features for videos at ``fps`` frames per second."""

    def __init__(self, fps: float, whisper=None, embeddings: bool = True, transcribe: bool = False):
        """``whisper`` is a ``WhisperJax`` (default: the bundled base model, loaded on first
        use); ``embeddings=False`` skips Whisper entirely, ``transcribe=True`` adds the
        transcript to :meth:`encode`'s result."""
        self.fps = float(fps)
        self._whisper = whisper
        self.embeddings = embeddings
        self.transcribe = transcribe

    @property
    def whisper(self):
        """The Whisper model, loaded on first use."""
        if self._whisper is None:
            self._whisper = WhisperJax.load()
        return self._whisper

    def encode(self, audio: np.ndarray, sr: int, n_frames: int) -> dict:
        """Features of mono ``audio`` at ``sr`` Hz for a video of ``n_frames`` frames.

        Returns ``{"voice_mel": (n, 80), "voice_prosody": (n, 6), "voice_emb": (n, 512)}``
        float32 (``voice_emb`` only with ``embeddings``) plus, with ``transcribe``,
        ``"transcript"`` (a ``Transcript``, from speech only) and ``"warnings"``. Audio is resampled to 16 kHz first.
        """
        x = _resample(audio, sr)
        out = {"voice_mel": audio_lib.log_mel(x, SAMPLE_RATE, self.fps, n_frames),
               "voice_prosody": audio_lib.prosody(x, SAMPLE_RATE, self.fps, n_frames)}
        if self.embeddings:
            out["voice_emb"] = self.whisper.embed(x, self.fps, n_frames)
        for name, arr in out.items():  # the schema is the contract with level 2
            width = ARRAYS[name][0]
            if arr.shape != (n_frames, width) or not np.all(np.isfinite(arr)):
                raise AssertionError(f"{name}: shape {arr.shape}, want ({n_frames}, {width}), "
                                     f"finite={bool(np.all(np.isfinite(arr)))}")
        assert out["voice_prosody"].shape[1] == len(VOICE_PROSODY)
        if self.transcribe:
            if len(x):
                out["transcript"], out["warnings"] = transcribe_speech(self.whisper, x)
            else:
                out["transcript"], out["warnings"] = None, ["no audio samples"]
        return out


def voice_arrays(audio: np.ndarray | None, fps: float, n_frames: int, embeddings: bool,
                 whisper=None, states: np.ndarray | None = None) -> dict:
    """``voice_mel``, ``voice_prosody`` and (with ``embeddings``) ``voice_emb`` of 16 kHz
    ``audio`` on ``n_frames`` frames; zeros without audio. ``states``: ``whisper``'s encoder
    states computed beforehand (``embed_states``), used when they cover the frames."""
    if audio is None or len(audio) == 0:
        # No audio track: zero features and voice_active 0, so level 2 sees no voice.
        out = {"voice_mel": np.zeros((n_frames, 80), np.float32),
               "voice_prosody": np.zeros((n_frames, len(VOICE_PROSODY)), np.float32)}
        if embeddings:
            out["voice_emb"] = np.zeros((n_frames, 512), np.float32)
        return out
    out = {"voice_mel": audio_lib.log_mel(audio, SAMPLE_RATE, fps, n_frames),
           "voice_prosody": audio_lib.prosody(audio, SAMPLE_RATE, fps, n_frames)}
    if embeddings:
        # States computed beside the face track cover the guessed length; a longer video
        # than guessed encodes them again.
        emb = None if states is None else whisper.states_on_frames(states, fps, n_frames)
        out["voice_emb"] = emb if emb is not None else whisper.embed(audio, fps, n_frames)
    return out


# ------------------------------------------------------------ openai-whisper checkpoints

def openai_checkpoint_path(name: str) -> Path:
    """Where openai-whisper keeps checkpoint ``name`` (``base``, ``small``, ``large-v2``...)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
    return root / f"{name}.pt"


def _openai_alignment_heads(name: str, dims) -> list[tuple[int, int]] | None:
    """openai-whisper's alignment heads for a named model (base85 + gzip boolean mask)."""
    try:
        import whisper
        blob = whisper._ALIGNMENT_HEADS[name]
    except (ImportError, AttributeError, KeyError):
        return None  # WhisperJax falls back to every head of the second half of the layers
    mask = np.frombuffer(gzip.decompress(base64.b85decode(blob)), dtype=bool)
    mask = mask.reshape(dims.n_text_layer, dims.n_text_head)
    return [(int(l), int(h)) for l, h in zip(*np.nonzero(mask))]


def state_dict_to_numpy(state: dict) -> dict[str, np.ndarray]:
    """torch tensors (any dtype) -> float32 numpy arrays."""
    return {k: v.detach().float().cpu().numpy() for k, v in state.items()}


def load_openai_whisper(name_or_path: str | os.PathLike = "base", **kwargs):
    """A ``WhisperJax`` from an openai-whisper ``.pt`` checkpoint already on disk.

    ``name_or_path`` is a size name looked up in ``~/.cache/whisper`` or a file path.
    Needs torch (``pip install 'ahjax[openai-whisper]'``); nothing is downloaded. The
    bundled tokenizer serves every multilingual size except large-v3; other vocabularies
    load for ``embed`` only.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = openai_checkpoint_path(str(name_or_path))
    if not path.is_file():
        raise MediaError(f"{path}: no openai-whisper checkpoint here (ahjax does not download "
                         "them; the bundled Whisper base needs none)")
    try:
        import torch
    except ImportError as exc:
        raise ImportError("loading openai-whisper checkpoints needs torch: "
                          "pip install 'ahjax[openai-whisper]'") from exc
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise MediaError(f"{path}: not an openai-whisper checkpoint (no dims/model_state_dict)")
    dims = wm.WhisperDims(**ckpt["dims"])
    params = wm.params_from_openai(state_dict_to_numpy(ckpt["model_state_dict"]), dims)
    heads = _openai_alignment_heads(path.stem, dims)
    asset = fetch("whisper_base")  # tokenizer and token suppression lists are shared by sizes
    cfg = json.loads((asset / "config.json").read_text())
    return WhisperJax(params, dims, asset / "tokenizer.json", heads, cfg.get("suppress_ids"),
                      cfg.get("suppress_ids_begin"), **kwargs)
