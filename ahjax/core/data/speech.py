"""Offline text-to-speech with espeak-ng, loaded through ctypes from ``espeakng-loader``.

The C API runs in synchronous mode; WORD events give true word timestamps for the demo
transcripts. Calls are serialised by a lock (the library keeps global state), and
``synthesize(..., deterministic=True)`` speaks in a clean helper process, since espeak-ng's
output length depends on what was spoken before in a process (docs/bah_format.md,
"Demo speech").
"""

from __future__ import annotations

import ctypes
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np

__all__ = ["WordTiming", "Speech", "synthesize", "SpeechError"]

# espeak_AUDIO_OUTPUT / espeak_EVENT_TYPE / espeak_PARAMETER values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_SAMPLERATE = 8
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7


class SpeechError(RuntimeError):
    """espeak-ng could not be loaded, initialised or asked to speak."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # Mirrors espeak_EVENT in speak_lib.h (espeak-ng 1.52).
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass(frozen=True)
class WordTiming:
    """One spoken word: its text, character span in the input and start/end in seconds."""

    word: str
    char_start: int
    char_end: int
    start: float
    end: float


@dataclass(frozen=True)
class Speech:
    """Synthesised speech: float32 mono samples in [-1, 1], sample rate and word timings."""

    samples: np.ndarray
    sample_rate: int
    words: tuple[WordTiming, ...]

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return len(self.samples) / float(self.sample_rate)

    def __iter__(self):
        # Lets callers unpack ``samples, sr = synthesize(...)`` as well as use attributes.
        return iter((self.samples, self.sample_rate))


class _Engine:
    """The process-wide espeak-ng instance (the C library is a singleton)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - dependency is pinned
            raise SpeechError("espeakng-loader is not installed (pip install espeakng-loader)") from exc
        try:
            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise SpeechError(f"cannot load libespeak-ng: {exc}") from exc
        data_path = espeakng_loader.get_data_path()
        lib = self.lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                     ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        # buflength 0 = espeak's default 200 ms blocks; options 0 = no phoneme events.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if rate <= 0:
            raise SpeechError(f"espeak_Initialize failed (returned {rate}) with data at {data_path}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int]] = []
        self._n_samples = 0
        # Keep a reference to the ctypes callback: if it were collected, espeak would call
        # freed memory.
        self._cb = _CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._cb)
        self.voice: str | None = None

    def _on_audio(self, wav, n, events) -> int:
        # Events in this block refer to audio positions counted from the start of the
        # utterance; we also record how many samples preceded the block, which is exact
        # even where audio_position is rounded to milliseconds.
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_WORD:
                self._events.append((ev.text_position, ev.length, ev.audio_position, self._n_samples))
            elif ev.type == _EVENT_SAMPLERATE:
                self.sample_rate = int(ev.id.number)
            i += 1
        if n > 0 and wav:
            block = np.ctypeslib.as_array(wav, shape=(n,)).copy()
            self._chunks.append(block)
            self._n_samples += n
        return 0  # 0 = continue synthesis

    def speak(self, text: str, rate_wpm: int, pitch: int, voice: str, pitch_range: int,
              volume: int, word_gap: int) -> Speech:
        lib = self.lib
        # Reload the voice on every call: espeak carries state from one utterance to the
        # next (the same text came out a few samples longer or shorter depending on what
        # was said before), and the demo dataset must not depend on call order.
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SpeechError(f"espeak-ng has no voice named {voice!r}")
        self.voice = voice
        for param, value in ((_PARAM_RATE, rate_wpm), (_PARAM_PITCH, pitch),
                             (_PARAM_RANGE, pitch_range), (_PARAM_VOLUME, volume),
                             (_PARAM_WORDGAP, word_gap)):
            if lib.espeak_SetParameter(param, int(value), 0) != 0:
                raise SpeechError(f"espeak_SetParameter({param}, {value}) failed")
        self._chunks, self._events, self._n_samples = [], [], 0
        raw = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise SpeechError(f"espeak_Synth failed with code {err}")
        lib.espeak_Synchronize()
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        samples = pcm.astype(np.float32) / 32768.0
        words = _word_timings(text, self._events, samples, self.sample_rate)
        return Speech(samples, self.sample_rate, words)


_WORD_RE = re.compile(r"[A-Za-z0-9'\u00C0-\u024F]+(?:[-'][A-Za-z0-9\u00C0-\u024F]+)*")


def _word_timings(text: str, events, samples: np.ndarray, sr: int) -> tuple[WordTiming, ...]:
    """One timing per word of ``text`` from espeak's WORD events.

    Words without their own event (espeak may speak ``I am`` as one) share the preceding span
    by length; a word ends where the next begins, its trailing silence (a comma's pause)
    trimmed by a short-time energy threshold.
    """
    total = len(samples) / float(sr) if sr else 0.0
    tokens = [(m.start(), m.end(), m.group(0)) for m in _WORD_RE.finditer(text)]
    if not tokens:
        return ()
    # text_position is 1-based in characters (UTF-8 mode counts code points).
    ev_start = {max(tp - 1, 0): min(ms / 1000.0, total) for tp, _ln, ms, _blk in events}
    starts: list[float | None] = [ev_start.get(c0) for c0, _c1, _w in tokens]
    if starts[0] is None:
        starts[0] = min(ev_start.values()) if ev_start else 0.0
    # Group each run of event-less words with the word before it and split the run's span.
    i = 0
    while i < len(tokens):
        j = i + 1
        while j < len(tokens) and starts[j] is None:
            j += 1
        if j > i + 1:
            t0 = starts[i]
            t1 = starts[j] if j < len(tokens) else total
            lens = np.array([c1 - c0 for c0, c1, _w in tokens[i:j]], float)
            cum = np.concatenate([[0.0], np.cumsum(lens) / lens.sum()])
            for k in range(i + 1, j):
                starts[k] = t0 + (t1 - t0) * cum[k - i]
        i = j
    starts = [float(np.clip(t, 0.0, total)) for t in starts]
    # 10 ms frame energies to trim each word's trailing pause.
    hop = max(sr // 100, 1)
    n_fr = len(samples) // hop
    active = np.zeros(max(n_fr, 1), bool)
    if n_fr:
        rms = np.sqrt(np.mean(samples[: n_fr * hop].reshape(n_fr, hop) ** 2, axis=1))
        active = rms > max(0.02 * float(rms.max()), 1e-4)
    out = []
    for k, (c0, c1, word) in enumerate(tokens):
        t0 = starts[k]
        t1 = starts[k + 1] if k + 1 < len(tokens) else total
        f0, f1 = int(t0 * 100), int(np.ceil(t1 * 100))
        act = np.nonzero(active[f0:f1])[0]
        if len(act):
            t1 = min(t1, float(f0 + act[-1] + 1) / 100.0)
        out.append(WordTiming(word, c0, c1, float(t0), float(max(t1, t0))))
    return tuple(out)


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def _read_exact(f, n: int) -> bytes:
    buf = f.read(n)
    if buf is None or len(buf) != n:
        raise SpeechError("the espeak helper process stopped unexpectedly")
    return buf


def _serve(fin, fout) -> None:
    """Helper-process loop: initialise once, then fork a child per request so every
    utterance starts from the same library state. Messages are length-prefixed pickles."""
    _engine()
    while True:
        head = fin.read(4)
        if len(head) < 4:
            return
        req = pickle.loads(_read_exact(fin, struct.unpack("<I", head)[0]))
        pid = os.fork()
        if pid == 0:  # child: speak, answer, exit without running any cleanup
            try:
                sp = _engine().speak(*req)
                # Plain types only: the client's module has another name than ours.
                res = ("ok", (sp.samples, sp.sample_rate,
                              [(w.word, w.char_start, w.char_end, w.start, w.end) for w in sp.words]))
            except BaseException as exc:  # noqa: BLE001 - sent back to the caller
                res = ("error", f"{type(exc).__name__}: {exc}")
            data = pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL)
            fout.write(struct.pack("<I", len(data)) + data)
            fout.flush()
            os._exit(0)
        os.waitpid(pid, 0)


class _Helper:
    """Client side of the clean helper process (started lazily, once per process)."""

    def __init__(self) -> None:
        code = ("import sys, importlib.util as u; "
                f"s = u.spec_from_file_location('_ahjax_speech', {__file__!r}); "
                "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
                "m._serve(sys.stdin.buffer, sys.stdout.buffer)")
        # Loaded by file path so the helper imports neither the ahjax package nor JAX.
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.owner = os.getpid()

    def speak(self, req: tuple) -> Speech:
        data = pickle.dumps(req, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()
        n = struct.unpack("<I", _read_exact(self.proc.stdout, 4))[0]
        status, value = pickle.loads(_read_exact(self.proc.stdout, n))
        if status != "ok":
            raise SpeechError(f"espeak helper: {value}")
        samples, rate, words = value
        return Speech(samples, int(rate), tuple(WordTiming(*w) for w in words))


_HELPER: _Helper | None = None


def _helper() -> _Helper:
    global _HELPER
    # A helper inherited through fork belongs to the parent: start our own.
    if _HELPER is None or _HELPER.owner != os.getpid() or _HELPER.proc.poll() is not None:
        _HELPER = _Helper()
    return _HELPER


def synthesize(text: str, rate_wpm: int = 175, pitch: int = 50, voice: str = "en", *,
               pitch_range: int = 50, volume: int = 100, word_gap: int = 0,
               deterministic: bool = False) -> Speech:
    """Speak ``text`` with espeak-ng: a :class:`Speech` (``samples, sample_rate``, ``.words``).

    ``rate_wpm`` 80..450; ``pitch`` and ``pitch_range`` 0..100; ``word_gap`` pauses in 10 ms
    units. ``deterministic=True`` speaks in a clean helper process (POSIX ``os.fork``) so the
    result does not depend on earlier calls (the module doc says why). Calls hold a lock.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpeechError("synthesize() needs non-empty text")
    rate_wpm = int(np.clip(rate_wpm, 80, 450))
    pitch = int(np.clip(pitch, 0, 100))
    pitch_range = int(np.clip(pitch_range, 0, 100))
    volume = int(np.clip(volume, 0, 200))
    req = (text, rate_wpm, pitch, voice, pitch_range, volume, max(int(word_gap), 0))
    with _LOCK:
        if deterministic and hasattr(os, "fork"):
            return _helper().speak(req)
        return _engine().speak(*req)
