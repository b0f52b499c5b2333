"""Level 1 while the person is still talking: the tracks level 2 reads, grown chunk by chunk.

``LiveLevel1(fps)`` takes a video's frames and audio as they arrive (``push``) and keeps
the level-1 arrays of every frame so far: face through a ``FaceSession`` (rows equal to
the offline encoder's), prosody of each new stretch with ``voice_context_s`` of audio
before it, words from :class:`LocalAgreement` (Whisper passes in an :class:`AsrWorker`
thread, a word confirmed when two passes agree) and their text features
(:class:`LiveText`, re-encoding only what can still change). ``ready()``: frames whose
face and voice rows exist (their text may still change); ``finish()`` confirms the last
words. docs/live.md tells how it works.
"""

from __future__ import annotations

import itertools
import queue
import re
import threading
import time

import numpy as np

from level1_affect import audio as audio_lib
from level1_affect import schema
from level1_affect.talk_type import sentences
from level1_affect.text import TextEncoder
from level1_affect.whisper.transcribe import transcribe_speech

SAMPLE_RATE = 16000


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


class LocalAgreement:
    """Streaming Whisper: confirmed words from consecutive passes over a growing buffer.

    ``step()`` transcribes the buffer (speech only) and confirms the words two passes agree
    on; ``finish()`` confirms those of a last pass. Times are seconds from the stream's
    start; docs/live.md says how the buffer is trimmed and when words settle without one."""

    def __init__(self, whisper, language: str | None = None, *, trim_s: float = 10.0,
                 max_buffer_s: float = 20.0, settle_s: float = 3.0, min_buffer_s: float = 0.5,
                 overlap_s: float = 0.1, transcribe=None):
        # ``transcribe(audio, language) -> (language, words)`` (times from the buffer's
        # start); default: Whisper where there is speech (``transcribe_speech``).
        self.whisper, self.language = whisper, language
        self._transcribe = transcribe or self._whisper_words
        self.trim_s, self.max_buffer_s = trim_s, max_buffer_s
        self.settle_s, self.min_buffer_s, self.overlap_s = settle_s, min_buffer_s, overlap_s
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0.0            # stream time of buffer[0]
        self.previous: list[dict] = []
        self.confirmed: list[dict] = []
        self.passes = 0

    @property
    def heard_s(self) -> float:
        """Stream time up to which audio was received."""
        return self.offset + len(self.buffer) / SAMPLE_RATE

    @property
    def settled_s(self) -> float:
        """No word confirmed from now on starts before this stream time."""
        if not self.confirmed:
            return self.offset
        return max(self.offset, self.confirmed[-1]["end"] - self.overlap_s)

    def push(self, audio: np.ndarray) -> None:
        self.buffer = np.concatenate([self.buffer, np.asarray(audio, np.float32).reshape(-1)])

    def _whisper_words(self, audio: np.ndarray, language: str | None):
        tr, _notes = transcribe_speech(self.whisper, audio, language=language)
        return tr.language, tr.words

    def _pass(self) -> list[dict]:
        """This pass's words after the confirmed ones (stream times)."""
        self.passes += 1
        language, found = self._transcribe(self.buffer, self.language)
        if language is not None and self.language is None:
            self.language = language      # fixed once speech was heard
        words = [{"word": w["word"], "start": round(float(w["start"]) + self.offset, 3),
                  "end": round(float(w["end"]) + self.offset, 3)} for w in found]
        words = [w for w in words if _norm(w["word"])]
        if not self.confirmed:
            return words
        last = self.confirmed[-1]["end"]
        words = [w for w in words if w["start"] >= last - self.overlap_s]
        # A pass may re-read the last confirmed words with shifted times: drop the repeat.
        tail = [_norm(w["word"]) for w in self.confirmed[-5:]]
        for k in range(min(len(tail), len(words)), 0, -1):
            if ([_norm(w["word"]) for w in words[:k]] == tail[-k:]
                    and words[0]["start"] < last + 1.0):
                return words[k:]
        return words

    def _confirm(self, words: list[dict]) -> list[dict]:
        self.confirmed.extend(words)
        if len(self.buffer) > self.trim_s * SAMPLE_RATE and self.confirmed:
            ends = [w["end"] for w in self.confirmed if w["end"] > self.offset
                    and w["word"].rstrip()[-1:] in ".?!"]
            end = ends[-1] if ends else self.confirmed[-1]["end"]
            self._cut(end)
        # Only the words after the buffer's start (and the last 5) are ever read again.
        recent = sum(1 for w in self.confirmed[-200:] if w["end"] > self.offset)
        self.confirmed = self.confirmed[-max(5, recent):]
        return words

    def _cut(self, t: float) -> None:
        """Drop the buffer's audio before stream time ``t``."""
        cut = min(max(int(round((t - self.offset) * SAMPLE_RATE)), 0), len(self.buffer))
        self.buffer, self.offset = self.buffer[cut:], self.offset + cut / SAMPLE_RATE

    def step(self) -> list[dict]:
        """One pass; the words confirmed by it (possibly none)."""
        if len(self.buffer) < self.min_buffer_s * SAMPLE_RATE:
            return []
        hyp = self._pass()
        n = 0
        while (n < min(len(hyp), len(self.previous))
               and _norm(hyp[n]["word"]) == _norm(self.previous[n]["word"])):
            n += 1
        if n == 0 and len(self.buffer) > self.max_buffer_s * SAMPLE_RATE:
            n = sum(1 for _ in itertools.takewhile(
                lambda w: w["end"] <= self.heard_s - self.settle_s, hyp))
            if n == 0:   # silence (or only unsettled words): keep the buffer bounded
                self._cut(min([self.heard_s - self.settle_s] + [w["start"] for w in hyp[:1]]))
        self.previous = hyp[n:]
        return self._confirm(hyp[:n])

    def finish(self) -> list[dict]:
        """A last pass whose words are all confirmed."""
        if len(self.buffer) < 0.1 * SAMPLE_RATE:
            return []
        self.previous = []
        return self._confirm(self._pass())


_STOP = object()


class AsrWorker(threading.Thread):
    """:class:`LocalAgreement` in its own thread, so face, voice and level 2 keep pace
    while Whisper runs (on a 2-core machine a pass takes seconds). ``feed(audio)`` hands
    it samples; a pass runs once ``every_s`` seconds of new audio arrived (a slow pass
    simply makes the next one longer); ``collect()`` returns the words confirmed since the
    last call (and sets ``settled_s``: no later word starts before it); ``finish()`` runs
    the last pass and returns every word not collected yet."""

    def __init__(self, asr: LocalAgreement, every_s: float):
        super().__init__(daemon=True, name="ahjax-asr")
        self.asr, self.every_s = asr, every_s
        self.seconds = 0.0
        self.last_pass_s = 0.0     # how long the latest pass took
        self.last_buffer_s = 0.0   # and the audio it read (seconds)
        self.settled_s = 0.0   # no word collected later starts before this stream time
        self.error: BaseException | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        self.start()

    def feed(self, audio: np.ndarray) -> None:
        self._inbox.put(audio)

    def run(self) -> None:
        heard = 0.0
        try:
            while True:
                items = [self._inbox.get()]
                while not self._inbox.empty():
                    items.append(self._inbox.get_nowait())
                if any(item is _STOP for item in items):
                    return
                for item in items:
                    if item is not None:
                        self.asr.push(item)
                t0 = time.perf_counter()
                if any(item is None for item in items):
                    self._out.put((self.asr.finish(), float("inf")))
                    self.seconds += time.perf_counter() - t0
                    return
                if self.asr.heard_s - heard >= self.every_s:
                    heard = self.asr.heard_s
                    buffer_s = len(self.asr.buffer) / SAMPLE_RATE
                    self._out.put((self.asr.step(), self.asr.settled_s))
                    took = time.perf_counter() - t0
                    self.seconds += took
                    self.last_pass_s, self.last_buffer_s = took, buffer_s
        except BaseException as err:   # noqa: BLE001 - reported by collect/finish
            self.error = err
            self._out.put(([], self.settled_s))

    def collect(self) -> list[dict]:
        words = []
        while not self._out.empty():
            got, self.settled_s = self._out.get_nowait()
            words += got
        return words

    def stop(self) -> None:
        """End the thread without a last pass (the stream was abandoned)."""
        self._inbox.put(_STOP)
        self.join()

    def finish(self) -> list[dict]:
        self._inbox.put(None)
        self.join()
        if self.error is not None:
            raise RuntimeError(f"speech recognition failed: {self.error}") from self.error
        return self.collect()


class LiveText:
    """Text features of a growing transcript on frames, as ``TextEncoder.encode`` places
    them, re-encoding only the words whose features can still change: the sentence still
    open and the last :attr:`REACH` words (a word's features read the words around it),
    with the sentence before them as context. Earlier words' features are kept, and words
    no longer needed for a frame that can change are dropped."""

    REACH = 8   # words back a new word can change (window of 5 plus a hedge phrase)

    def __init__(self, encoder, fps: float):
        self.encoder, self.fps = encoder, float(fps)
        self.w0 = 0                    # index of words[0] in the whole transcript
        self.n = 0                     # words added so far
        self.words: list[dict] = []    # timed words from w0
        self.tokens: list[str] = []
        self.talk = np.zeros((0, 2), np.float32)   # per word P(change), P(sustain)
        self.feats = np.zeros((0, len(schema.TEXT_AFFECT)), np.float32)
        self.starts = [0]              # sentence starts from w0 on; the last one is open

    def _frame(self, i: int) -> int:
        return int(np.floor(self.words[i - self.w0]["start"] * self.fps + 1e-6))

    def first_open_frame(self) -> float:
        """The first frame whose features a word added later could change (inf: none)."""
        if self.n == 0:
            return float("inf")
        return self._frame(max(self.w0, min(self.starts[-1], self.n - self.REACH)))

    def add(self, words: list[dict]) -> int | None:
        """Add confirmed words (stream seconds); the first frame whose rows changed."""
        words = [{"word": str(w["word"]), "start": float(w["start"]), "end": float(w["end"])}
                 for w in words if str(w["word"]).strip()]
        if not words:
            return None
        before, open_start = self.n, self.starts[-1]
        self.words += words
        self.tokens += [w["word"].strip() for w in words]
        self.n += len(words)
        tail = self.tokens[open_start - self.w0:]
        spans = sentences(tail)
        closed = sentences(tail + ["_"])[-1][0] == len(tail)
        self.starts = (self.starts[:-1] + [open_start + a for a, _ in spans]
                       + ([self.n] if closed else []))
        model = self.encoder.talk_model()
        self.talk = np.concatenate([self.talk[:open_start - self.w0],
                                    np.zeros((self.n - open_start, 2), np.float32)])
        if model is not None:   # the talk type of the sentences from the open one on
            probs = model.predict_proba([" ".join(tail[a:b]) for a, b in spans],
                                        [""] * len(spans))
            for (a, b), pr in zip(spans, probs):
                self.talk[open_start - self.w0 + a:open_start - self.w0 + b] = pr[[0, 2]]
        first = max(self.w0, min(open_start, before - self.REACH))
        # Context from a sentence start REACH words before the first changed word.
        lo = max([self.w0] + [st for st in self.starts if st <= first - self.REACH])
        rows = self.encoder.lexicons.word_features(
            self.tokens[lo - self.w0:], self.talk[lo - self.w0:] if model is not None else None)
        self.feats = np.concatenate([self.feats[:first - self.w0], rows[first - lo:]])
        return self._frame(first)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """``text_affect`` of frames ``[lo, hi)``: the mean of the words covering each."""
        out = np.zeros((max(0, hi - lo), len(schema.TEXT_AFFECT)), np.float32)
        count = np.zeros(len(out), np.float32)
        for w, f in zip(self.words, self.feats):
            # A word occupies the frames whose start lies in [start, end); at least one.
            a = int(np.floor(w["start"] * self.fps + 1e-6))
            b = max(a + 1, int(np.ceil(w["end"] * self.fps - 1e-6)))
            a, b = max(a, lo), min(b, hi)
            if a < b:
                out[a - lo:b - lo] += f
                count[a - lo:b - lo] += 1
        spoken = count > 0
        out[spoken] /= count[spoken, None]
        return out

    def forget(self, frame: int) -> None:
        """Drop the words no longer needed once frames before ``frame`` are final."""
        need = min(self.starts[-1], self.n - self.REACH)
        keep = max([self.w0] + [st for st in self.starts if st <= need - self.REACH])
        for i in range(self.w0, keep):   # still needed while it covers a frame after ``frame``
            if np.ceil(self.words[i - self.w0]["end"] * self.fps - 1e-6) > frame:
                keep = i
                break
        if keep > self.w0:
            k = keep - self.w0
            self.words, self.tokens = self.words[k:], self.tokens[k:]
            self.talk, self.feats = self.talk[k:], self.feats[k:]
            self.starts = [st for st in self.starts if st >= keep] or [self.starts[-1]]
            self.w0 = keep


class LiveLevel1:
    """The level-1 arrays of a stream, grown as frames and audio arrive (see the module).

    ``whisper`` (None: no words) runs in an :class:`AsrWorker` thread; ``text_encoder``
    defaults to the learned talk type without embeddings; ``audio=False``: voice rows are
    zero. Rows are kept from :meth:`release`'s frame on; docs/live.md has every argument."""

    _FACE = ("face_present", "face_expr", "face_blend", "face_desc")

    def __init__(self, fps: float, face_encoder, *, whisper=None, text_encoder=None,
                 audio: bool = True, asr_every_s: float = 2.0, voice_context_s: float = 3.0,
                 language: str | None = None, pending_s: float = 30.0):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps, self.has_audio = float(fps), bool(audio)
        self.face = face_encoder.session(fps)
        self.asr = LocalAgreement(whisper, language) if (whisper is not None and audio) else None
        self._worker = AsrWorker(self.asr, asr_every_s) if self.asr is not None else None
        self.words: list[dict] = []             # every word confirmed so far (stream seconds)
        if text_encoder is None:
            text_encoder = TextEncoder(embeddings=False)
        self.text_encoder = text_encoder
        self._text = LiveText(text_encoder, self.fps) if self.asr is not None else None
        self.voice_context_s, self.pending_s = voice_context_s, pending_s
        # Only the audio the next voice rows need (their context onwards) is kept.
        self._audio = np.zeros(0, np.float32)
        self._audio_start = 0                   # stream sample index of _audio[0]
        self.audio_ended = not audio
        self.finished = False                   # the last words are in
        self.n_frames = 0                       # frames pushed
        # Rows of frames from row0 on; count: rows made so far (from frame 0).
        self.row0 = 0
        self._rows = {k: [np.zeros((0, schema.ARRAYS[k][0]), np.float32)]
                      for k in (*self._FACE, "voice_prosody")}
        self._count = dict.fromkeys(self._rows, 0)
        self._text_rows = np.zeros((0, len(schema.TEXT_AFFECT)), np.float32)
        self._final = 0           # text rows before this frame are final
        self._revised = None      # first frame whose text rows changed since revised()
        self.seconds = {"face": 0.0, "voice": 0.0, "asr": 0.0, "text": 0.0}

    @property
    def asr_every_s(self) -> float | None:
        """New audio between Whisper passes (None without speech recognition)."""
        return self._worker.every_s if self._worker is not None else None

    @asr_every_s.setter
    def asr_every_s(self, value: float) -> None:
        if self._worker is not None:
            self._worker.every_s = value

    def asr_status(self) -> dict | None:
        """Whisper's thread now: passes so far, the latest pass's seconds and audio seconds,
        and how far the confirmed words lag the audio received (None without speech)."""
        if self._worker is None:
            return None
        w = self._worker
        heard = self._audio_start / SAMPLE_RATE + len(self._audio) / SAMPLE_RATE
        return {"passes": self.asr.passes, "pass_s": w.last_pass_s, "buffer_s": w.last_buffer_s,
                "words_lag_s": max(0.0, heard - w.settled_s)}

    def _add_face(self, face: dict) -> None:
        for k in self._FACE:
            self._rows[k].append(face[k])
            self._count[k] += len(face[k])

    def push(self, frames=(), audio: np.ndarray | None = None) -> list[dict]:
        """Add frames (RGB uint8) and audio samples (16 kHz mono); the words confirmed since
        the last push."""
        t0 = time.perf_counter()
        frames = list(frames)
        self.n_frames += len(frames)
        self._add_face(self.face.push(frames))
        self.seconds["face"] += time.perf_counter() - t0
        if audio is not None and self.has_audio:
            audio = np.asarray(audio, np.float32).reshape(-1)
            self._audio = np.concatenate([self._audio, audio])
            if self._worker is not None:
                self._worker.feed(audio)
        self._voice()
        return self._collect(self._worker.collect() if self._worker is not None else [])

    def _collect(self, words: list[dict]) -> list[dict]:
        self.words += words
        if self._worker is not None:
            self.seconds["asr"] = self._worker.seconds
        if self._text is not None and words:
            t0 = time.perf_counter()
            final = self.text_final()
            first = self._text.add(words)
            if first is not None and first < self.n_frames:
                lo = max(first, final)
                self._text_rows = np.concatenate([
                    self._text_rows[:max(0, lo - self.row0)],
                    np.zeros((max(0, self.row0 - lo), self._text_rows.shape[1]), np.float32),
                    self._text.rows(max(lo, self.row0), self.n_frames)])
                self._revised = lo if self._revised is None else min(self._revised, lo)
            self.seconds["text"] += time.perf_counter() - t0
        return words

    def text_final(self) -> int:
        """Frames before this have their final text rows (no word changes them any more)."""
        if self._text is None:
            return self.n_frames
        if self.finished:
            cand = self.n_frames
        else:
            settled = self._worker.settled_s if self._worker is not None else 0.0
            cand = min(self._text.first_open_frame(), np.floor(settled * self.fps + 1e-6))
        cand = max(cand, self.n_frames - int(round(self.pending_s * self.fps)))
        self._final = max(self._final, int(min(cand, self.n_frames)))
        return self._final

    def revised(self) -> int | None:
        """The first frame whose text rows changed since the last call (None: none)."""
        out, self._revised = self._revised, None
        return out

    def release(self, frame: int) -> None:
        """Drop the rows of frames before ``frame`` (at most :meth:`text_final`, ready)."""
        frame = min(frame, self.text_final(), self.ready())
        if frame <= self.row0:
            return
        k = frame - self.row0
        for name, parts in self._rows.items():
            self._rows[name] = [np.concatenate(parts)[k:]]
        self._text_rows = self._text_rows[k:]
        self.row0 = frame
        if self._text is not None:
            self._text.forget(frame)

    def end_audio(self) -> None:
        """No more audio will come (frames past its end get silent voice rows)."""
        self.audio_ended = True
        self._voice()

    def finish(self) -> list[dict]:
        """End of the stream: the face's last frames and the speech's last words."""
        self._add_face(self.face.close())
        self.end_audio()
        words = self._collect(self._worker.finish() if self._worker is not None else [])
        self.finished = True
        return words

    def close(self) -> None:
        """Abandon the stream: stop the Whisper thread and release the face landmarker."""
        if self._worker is not None and self._worker.is_alive():
            self._worker.stop()
        self.face.close()

    def _voice(self) -> None:
        """Prosody rows for the frames whose audio has fully arrived."""
        t0 = time.perf_counter()
        heard = self._audio_start + len(self._audio)
        have = (self.n_frames if self.audio_ended
                else min(self.n_frames, int(heard / SAMPLE_RATE * self.fps + 1e-6)))
        first = self._count["voice_prosody"]
        if have <= first:
            return
        if not self.has_audio or heard == 0:
            rows = np.zeros((have - first, len(schema.VOICE_PROSODY)), np.float32)
        else:
            start = max(0, first - int(round(self.voice_context_s * self.fps)))
            a = int(round(start / self.fps * SAMPLE_RATE)) - self._audio_start
            b = int(round(have / self.fps * SAMPLE_RATE)) - self._audio_start
            rows = audio_lib.prosody(self._audio[a:b], SAMPLE_RATE, self.fps,
                                     have - start)[first - start:]
            # The next rows' context starts no earlier than this: drop what comes before.
            keep = int(round(max(0, have - int(round(self.voice_context_s * self.fps)))
                             / self.fps * SAMPLE_RATE)) - self._audio_start
            if keep > 0:
                self._audio, self._audio_start = self._audio[keep:], self._audio_start + keep
        self._rows["voice_prosody"].append(rows.astype(np.float32))
        self._count["voice_prosody"] += len(rows)
        self.seconds["voice"] += time.perf_counter() - t0

    def ready(self) -> int:
        """Frames whose face and voice rows exist."""
        return min(self._count["face_present"], self._count["voice_prosody"])

    def arrays(self, n: int | None = None, start: int | None = None) -> dict[str, np.ndarray]:
        """The level-1 arrays of frames ``start..n`` (default: the first kept row, and
        ``ready()``), text as known now."""
        n = self.ready() if n is None else n
        start = self.row0 if start is None else start
        if n > self.ready() or start < self.row0:
            raise ValueError(f"frames {start}..{n} asked, {self.row0}..{self.ready()} kept")
        out = {}
        for k, parts in self._rows.items():
            if len(parts) > 1:   # joined once, so the next call does not join them again
                self._rows[k] = parts = [np.concatenate(parts)]
            out[k] = parts[0][start - self.row0:n - self.row0]
        text = self._text_rows[start - self.row0:n - self.row0]
        if len(text) < n - start:   # frames no word reached yet: zero rows
            text = np.concatenate([text, np.zeros((n - start - len(text), text.shape[1]),
                                                  np.float32)])
        out["text_affect"] = text
        return out
