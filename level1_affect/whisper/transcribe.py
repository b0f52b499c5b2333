"""Whisper in JAX: encoder embeddings on video frames, and transcription with word times.

``WhisperJax.load()`` reads the Whisper-base asset (CTranslate2 weights, see
``ct2.py``/``model.py``). ``embed`` runs the encoder on 30 s windows, batched and jitted,
and averages its 50 Hz states onto video frames. ``transcribe`` follows openai-whisper's
``transcribe`` with greedy decoding: language from the first window, timestamp tokens on,
sequential 30 s windows seeking to the last complete segment, and word timestamps by
dynamic time warping over the cross-attention of the alignment heads. The whole greedy
loop, timestamp rules included, is one jitted ``lax.while_loop``.

Not implemented from openai-whisper: temperature fallback, conditioning on the previous
window's text, beam search, translation; English-only (``.en``) vocabularies.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import string
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ahjax.core.assets import fetch
from level1_affect.audio import speech_regions
from level1_affect.whisper import model as wm

SAMPLE_RATE = 16000
HOP = 160                   # mel hop: 100 frames per second
N_FFT = 400
CHUNK_S = 30
N_FRAMES = CHUNK_S * SAMPLE_RATE // HOP   # 3000 mel frames per window
TIME_PRECISION = 0.02       # seconds per timestamp token and per encoder state
MAX_INITIAL_TS = 1.0        # openai's max_initial_timestamp
SAMPLE_LEN = 224            # openai's default maximum tokens per window
_PREPENDED = "\"'“¿([{-"
_APPENDED = "\"'.。,，!！?？:：”)]}、"
_NO_SPACE_LANGS = {"zh", "ja", "th", "lo", "my", "yue"}


@functools.lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> np.ndarray:
    import librosa
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32)


def log_mel_whisper(audio: np.ndarray, n_mels: int = 80, pad: int = 0) -> np.ndarray:
    """openai-whisper's ``log_mel_spectrogram`` in numpy: (frames, n_mels), 100 frames/s.

    ``pad`` zero samples are appended first (openai appends 30 s so the last window is
    complete). Periodic Hann window of 400, centred reflect-padded STFT, Slaney mel
    filters, log10 clamped to 8 decades below the maximum, scaled to about [-1, 1].
    """
    x = np.asarray(audio, np.float32)
    if pad:
        x = np.pad(x, (0, pad))
    if len(x) <= N_FFT // 2:  # reflect padding needs more samples than the half window
        x = np.pad(x, (0, N_FFT // 2 + 1 - len(x)))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power[:-1] @ _mel_filters(n_mels).T  # openai drops the last STFT frame
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def states_to_frames(states: np.ndarray, fps: float, n_frames: int,
                     rate: float = 1.0 / TIME_PRECISION) -> np.ndarray:
    """Average states at ``rate`` Hz (state k covers [k/rate, (k+1)/rate)) onto video frames.

    Each frame takes the mean of the states whose centres fall inside it; a frame too
    short to contain a centre (fps above ``rate``) takes the state nearest its centre.
    """
    n = len(states)
    centres = (np.arange(n) + 0.5) / rate
    edges = np.searchsorted(centres, np.arange(n_frames + 1) / fps)
    csum = np.concatenate([np.zeros((1, states.shape[1])), np.cumsum(states, 0, dtype=np.float64)])
    lo, hi = edges[:-1], edges[1:]
    count = (hi - lo)[:, None]
    mean = (csum[hi] - csum[lo]) / np.maximum(count, 1)
    nearest = np.clip(((np.arange(n_frames) + 0.5) / fps * rate).astype(int), 0, n - 1)
    return np.where(count > 0, mean, states[nearest]).astype(np.float32)


@dataclasses.dataclass
class Transcript:
    """Result of :meth:`WhisperJax.transcribe`; times in seconds from the start of the audio.

    ``segments``: ``[{"start", "end", "text"}]``; ``words``: ``[{"word", "start", "end",
    "prob"}]`` (words without surrounding spaces, punctuation attached).
    """

    language: str | None  # None only for empty audio
    text: str
    segments: list[dict]
    words: list[dict]


def normalise_text(text: str) -> list[str]:
    """Lower-case words with punctuation removed (apostrophes kept), for WER."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    return text.split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance / number of reference words."""
    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    row = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, row = row, np.empty_like(row)
        row[0] = i
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return float(row[-1]) / len(ref)


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic path through cost matrix ``x`` (N, M), as openai-whisper's
    ``dtw_cpu`` (same tie-breaking), vectorised along anti-diagonals. Returns
    ``(row_indices, col_indices)`` of the path."""
    n, m = x.shape
    x = x.astype(np.float32)
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    trace = -np.ones((n + 1, m + 1), np.int8)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):  # cells with i + j = d depend only on diagonals d-1, d-2
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[i, j] = x[i - 1, j - 1] + np.choose(t, [c0, c1, c2])
        trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    path = np.array(path[::-1])
    return path[:, 0], path[:, 1]


class WhisperJax:
    """Whisper (base by default) for embeddings and transcription, jitted on CPU or GPU."""

    def __init__(self, params: wm.Params, dims: wm.WhisperDims, tokenizer_path: str | os.PathLike,
                 alignment_heads: list[tuple[int, int]] | None = None,
                 suppress_ids: list[int] | None = None, suppress_begin: list[int] | None = None,
                 embed_batch: int = 4):
        """Wrap converted ``params``; ``alignment_heads`` are (decoder layer, head) pairs
        (default: every head of the second half of the layers, as openai-whisper)."""
        from tokenizers import Tokenizer
        self.dims = dims
        self.params = jax.device_put(params)
        self.tok = Tokenizer.from_file(str(tokenizer_path))
        self.eot = self.tok.token_to_id("<|endoftext|>")
        self.sot = self.tok.token_to_id("<|startoftranscript|>")
        self.transcribe_id = self.tok.token_to_id("<|transcribe|>")
        self.no_speech = self.tok.token_to_id("<|nospeech|>") or self.tok.token_to_id("<|nocaptions|>")
        self.no_ts = self.tok.token_to_id("<|notimestamps|>")
        self.ts_begin = self.no_ts + 1
        # The bundled tokenizer is the multilingual one of every size up to large-v2; other
        # vocabularies (English-only, large-v3) can still embed but not transcribe.
        self.can_transcribe = self.ts_begin + 1501 == dims.n_vocab
        langs = [(i, self.tok.id_to_token(i)) for i in range(self.sot + 1, self.tok.get_vocab_size())]
        self.lang_ids = {t[2:-2]: i for i, t in langs
                         if t and re.fullmatch(r"<\|[a-z]{2,3}(?:_[a-z]+)?\|>", t) and i < self.ts_begin
                         and t[2:-2] not in ("nocaptions",)}
        if alignment_heads is None:
            half = dims.n_text_layer // 2
            alignment_heads = [(l, h) for l in range(half, dims.n_text_layer) for h in range(dims.n_text_head)]
        self.alignment_heads = tuple(tuple(map(int, x)) for x in alignment_heads)
        sup = set(suppress_ids or []) | {self.no_ts, self.sot, self.transcribe_id, self.no_speech,
                                         self.transcribe_id - 1, self.no_ts - 2, self.no_ts - 3}
        self._suppress = np.zeros(dims.n_vocab, bool)
        self._suppress[[s for s in sup if 0 <= s < dims.n_vocab]] = True
        self._suppress_begin = np.zeros(dims.n_vocab, bool)
        begin = suppress_begin if suppress_begin is not None else [220, self.eot]
        self._suppress_begin[[s for s in begin if 0 <= s < dims.n_vocab]] = True
        self.embed_batch = embed_batch
        d = dims
        self._encode = jax.jit(lambda p, mel: wm.encode(p, mel, d))
        self._xkv = jax.jit(lambda p, enc: wm.cross_kv(p, enc, d))
        self._detect = jax.jit(self._detect_fn)
        self._greedy = jax.jit(self._greedy_fn)
        self._align = jax.jit(self._align_fn)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **kwargs) -> "WhisperJax":
        """Whisper base from the ``whisper_base`` asset (or a folder with the same files:
        ``model.bin`` in CTranslate2 format, ``config.json``, ``tokenizer.json``)."""
        folder = Path(path) if path is not None else fetch("whisper_base")
        params, dims = wm.load_ct2_params(folder)
        cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        return cls(params, dims, folder / "tokenizer.json", cfg.get("alignment_heads"),
                   cfg.get("suppress_ids"), cfg.get("suppress_ids_begin"), **kwargs)

    # ------------------------------------------------------------------ embeddings
    def encode_windows(self, mel_windows: np.ndarray) -> np.ndarray:
        """Encoder states (B, 1500, d) for log-mel windows (B, 3000, n_mels), in batches of
        1, 2 or 4 so only three shapes are ever compiled."""
        out, i, n = [], 0, len(mel_windows)
        while i < n:
            b = self.embed_batch
            while b > n - i:
                b //= 2
            out.append(np.asarray(self._encode(self.params, jnp.asarray(mel_windows[i:i + b]))))
            i += b
        return np.concatenate(out) if out else np.zeros((0, self.dims.n_audio_ctx, self.dims.n_audio_state),
                                                        np.float32)

    def embed(self, audio: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
        """Encoder embeddings on video frames: (n_frames, d) float32 for 16 kHz ``audio``.

        The audio is cut into 30 s windows (all encoded in batches), the 50 Hz states of the
        windows are concatenated and averaged onto frames; frames past the end of the audio
        see the encoding of silence, as the audio there is silent.
        """
        return states_to_frames(self.embed_states(audio, n_frames / fps), fps, n_frames)

    def embed_states(self, audio: np.ndarray, seconds: float = 0.0) -> np.ndarray:
        """The 50 Hz encoder states (T, d) of ``audio`` in 30 s windows covering at least
        ``seconds`` (silence past the audio's end)."""
        need = max(len(audio), int(np.ceil(seconds * SAMPLE_RATE)), 1)
        n_win = -(-need // (CHUNK_S * SAMPLE_RATE))
        pad = n_win * CHUNK_S * SAMPLE_RATE - len(audio)
        mel = log_mel_whisper(audio, self.dims.n_mels, pad=pad)[: n_win * N_FRAMES]
        states = self.encode_windows(mel.reshape(n_win, N_FRAMES, self.dims.n_mels))
        return states.reshape(-1, states.shape[-1])

    @staticmethod
    def states_on_frames(states: np.ndarray, fps: float, n_frames: int) -> np.ndarray | None:
        """``embed_states`` averaged onto ``n_frames`` video frames; None when the states do
        not cover them (computed for a shorter video: compute them again). Windows are
        encoded independently, so states that cover more give the same frames."""
        if n_frames / fps > len(states) * TIME_PRECISION + 1e-9:
            return None
        return states_to_frames(states, fps, n_frames)

    # ------------------------------------------------------------------ decoding
    def _detect_fn(self, params, xk, xv):
        logits, _, _ = wm.decode(params, jnp.full((xk[0].shape[0], 1), self.sot, jnp.int32), 0,
                                 wm.empty_cache(self.dims, xk[0].shape[0], 8), xk, xv, self.dims)
        ids = jnp.array(list(self.lang_ids.values()))
        return jax.nn.log_softmax(logits[:, 0, ids], axis=-1)

    def _filter(self, logits, buf, n, k, last_ts_tok):
        """openai-whisper's SuppressBlank, SuppressTokens and ApplyTimestampRules."""
        ids = jnp.arange(logits.shape[-1])
        tb, neg = self.ts_begin, -jnp.inf
        lg = jnp.where(self._suppress, neg, logits)
        lg = jnp.where((k == 0) & self._suppress_begin, neg, lg)
        last, pen = buf[:, n - 1], buf[:, n - 2]
        last_ts = (k >= 1) & (last >= tb)
        pen_ts = (k < 2) | (pen >= tb)
        lg = jnp.where((last_ts & pen_ts)[:, None] & (ids >= tb), neg, lg)   # a pair closes: text next
        lg = jnp.where((last_ts & ~pen_ts)[:, None] & (ids < self.eot), neg, lg)  # must close
        floor = jnp.where(last_ts & ~pen_ts, last_ts_tok, last_ts_tok + 1)  # timestamps never decrease
        lg = jnp.where((last_ts_tok >= 0)[:, None] & (ids >= tb) & (ids < floor[:, None]), neg, lg)
        max_init = tb + int(round(MAX_INITIAL_TS / TIME_PRECISION))
        lg = jnp.where((k == 0) & ((ids < tb) | (ids > max_init)), neg, lg)
        lp = jax.nn.log_softmax(lg, axis=-1)
        ts_mass = jax.nn.logsumexp(lp[:, tb:], axis=-1)
        text_max = lp[:, :tb].max(axis=-1)
        return jnp.where((ts_mass > text_max)[:, None] & (ids < tb), neg, lg)

    def _greedy_fn(self, params, xk, xv, prompt):
        """Greedy decoding of one batch of windows; returns (tokens (B, n_ctx), length,
        sum of log-probs (B,), no-speech probability (B,))."""
        b, s = prompt.shape
        d = self.dims
        logits, cache, _ = wm.decode(params, prompt, 0, wm.empty_cache(d, b), xk, xv, d)
        no_speech = jax.nn.softmax(logits[:, 0], axis=-1)[:, self.no_speech]
        buf = jnp.zeros((b, d.n_text_ctx), jnp.int32).at[:, :s].set(prompt)
        max_len = min(s + SAMPLE_LEN, d.n_text_ctx)
        init = (buf, jnp.int32(s), logits[:, -1], cache, jnp.zeros(b), jnp.zeros(b, bool),
                jnp.full(b, -1, jnp.int32))

        def cond(st):
            return (st[1] < max_len) & ~jnp.all(st[5])

        def body(st):
            buf, n, logits, cache, sum_lp, done, last_ts_tok = st
            lg = self._filter(logits, buf, n, n - s, last_ts_tok)
            nxt = jnp.where(done, self.eot, jnp.argmax(lg, axis=-1)).astype(jnp.int32)
            lp = jnp.take_along_axis(jax.nn.log_softmax(lg, axis=-1), nxt[:, None], 1)[:, 0]
            sum_lp = sum_lp + jnp.where(done, 0.0, lp)
            buf = buf.at[:, n].set(nxt)
            last_ts_tok = jnp.where(nxt >= self.ts_begin, nxt, last_ts_tok)
            done = done | (nxt == self.eot)
            out, cache, _ = wm.decode(params, nxt[:, None], n, cache, xk, xv, d)
            return buf, n + 1, out[:, 0], cache, sum_lp, done, last_ts_tok

        buf, n, _, _, sum_lp, _, _ = jax.lax.while_loop(cond, body, init)
        return buf, n, sum_lp, no_speech

    def _align_fn(self, params, xk, xv, tokens):
        """Cross-attention logits of the alignment heads (A, T, S) and token log-probs
        (T, V) for one padded token sequence (1, T)."""
        logits, _, cross = wm.decode(params, tokens, 0, wm.empty_cache(self.dims, 1, tokens.shape[1]),
                                     xk, xv, self.dims, want_cross=True)
        heads = jnp.stack([cross[l, 0, h] for l, h in self.alignment_heads])
        return heads, jax.nn.log_softmax(logits[0, :, :self.eot], axis=-1)

    def detect_language(self, xk, xv) -> str:
        """Most likely language code for one encoded window (from its cross keys/values)."""
        lp = np.asarray(self._detect(self.params, xk, xv))[0]
        return list(self.lang_ids)[int(np.argmax(lp))]

    def _decode_text(self, tokens) -> str:
        return self.tok.decode([t for t in tokens if t < self.eot], skip_special_tokens=False)

    def transcribe(self, audio: np.ndarray, language: str | None = None,
                   word_timestamps: bool = True, no_speech_threshold: float = 0.6,
                   logprob_threshold: float = -1.0) -> Transcript:
        """Transcribe 16 kHz mono ``audio`` (any length) into a :class:`Transcript`.

        ``language`` (a code such as ``"en"``) skips detection. A window whose no-speech
        probability exceeds ``no_speech_threshold`` while its mean log-probability is below
        ``logprob_threshold`` is taken as silence, as in openai-whisper.
        """
        if not self.can_transcribe:
            raise ValueError(f"a Whisper vocabulary of {self.dims.n_vocab} tokens does not match "
                             "the bundled multilingual tokenizer; only embed() is available")
        audio = np.asarray(audio, np.float32)
        mel = log_mel_whisper(audio, self.dims.n_mels, pad=CHUNK_S * SAMPLE_RATE)
        content = len(audio) // HOP
        seek, segments, words = 0, [], []
        while seek < content:
            offset = seek * HOP / SAMPLE_RATE
            size = min(N_FRAMES, content - seek)
            window = np.zeros((1, N_FRAMES, self.dims.n_mels), np.float32)
            window[0, :size] = mel[seek:seek + size]  # openai pads the window with zeros
            enc = self._encode(self.params, jnp.asarray(window))
            xk, xv = self._xkv(self.params, enc)
            if language is None:
                language = self.detect_language(xk, xv)
            prompt = jnp.array([[self.sot, self.lang_ids[language], self.transcribe_id]], jnp.int32)
            buf, n, sum_lp, no_speech = self._greedy(self.params, xk, xv, prompt)
            toks = np.asarray(buf)[0, prompt.shape[1]:int(n)].tolist()
            if self.eot in toks:
                toks = toks[:toks.index(self.eot)]
            avg_lp = float(sum_lp[0]) / (len(toks) + 1)
            if float(no_speech[0]) > no_speech_threshold and avg_lp < logprob_threshold:
                seek += size
                continue
            win_segs, advance = self._segments(toks, offset, size)
            win_segs = [s for s in win_segs if any(t < self.eot for t in s["tokens"])]
            if word_timestamps and win_segs:
                win_words = self._word_times(xk, xv, win_segs, offset, size, language,
                                             [int(prompt[0, i]) for i in range(prompt.shape[1])])
                words.extend(win_words)
                last_end = max((w["end"] for s in win_segs for w in s.get("words", [])), default=None)
                single_end = len(toks) >= 2 and toks[-2] < self.ts_begin <= toks[-1]
                if not single_end and last_end is not None and last_end > offset:
                    advance = max(1, int(round(last_end * SAMPLE_RATE / HOP)) - seek)
            segments.extend(win_segs)
            seek += advance
        out = [{"start": round(s["start"], 3), "end": round(s["end"], 3), "text": s["text"].strip()}
               for s in segments]
        text = "".join(s["text"] for s in segments).strip()
        return Transcript(language, text, out, words)

    def _segments(self, toks: list[int], offset: float, size: int) -> tuple[list[dict], int]:
        """Split one window's tokens at timestamp pairs (openai-whisper's rule); returns the
        segments and how many mel frames to advance."""
        tb = self.ts_begin
        is_ts = [t >= tb for t in toks]
        single_end = is_ts[-2:] == [False, True]
        cuts = [i + 1 for i in range(len(toks) - 1) if is_ts[i] and is_ts[i + 1]]
        segs = []
        if cuts:
            if single_end:
                cuts.append(len(toks))
            last = 0
            for cut in cuts:
                piece = toks[last:cut]
                segs.append({"start": offset + (piece[0] - tb) * TIME_PRECISION,
                             "end": offset + (piece[-1] - tb) * TIME_PRECISION,
                             "tokens": piece, "text": self._decode_text(piece)})
                last = cut
            advance = size if single_end else (toks[last - 1] - tb) * 2
        else:
            stamps = [t for t in toks if t >= tb]
            dur = size * HOP / SAMPLE_RATE
            if stamps and stamps[-1] != tb:
                dur = (stamps[-1] - tb) * TIME_PRECISION
            segs.append({"start": offset, "end": offset + dur, "tokens": toks,
                         "text": self._decode_text(toks)})
            advance = size
        return segs, max(int(advance), 1)

    def _split_words(self, tokens: list[int], language: str) -> tuple[list[str], list[list[int]]]:
        """Group tokens into words (openai-whisper's split_to_word_tokens)."""
        full = self.tok.decode(tokens, skip_special_tokens=False)
        pieces, piece_toks, cur, pos = [], [], [], 0
        for t in tokens:  # split where decoding yields whole unicode characters
            cur.append(t)
            dec = self.tok.decode(cur, skip_special_tokens=False)
            if "\ufffd" not in dec or full[pos + dec.index("\ufffd")] == "\ufffd":
                pieces.append(dec)
                piece_toks.append(cur)
                cur, pos = [], pos + len(dec)
        if language in _NO_SPACE_LANGS:
            return pieces, piece_toks
        words, word_toks = [], []
        for piece, pt in zip(pieces, piece_toks):
            if pt[0] >= self.eot or piece.startswith(" ") or piece.strip() in string.punctuation or not words:
                words.append(piece)
                word_toks.append(list(pt))
            else:
                words[-1] += piece
                word_toks[-1].extend(pt)
        return words, word_toks

    def _word_times(self, xk, xv, segs, offset, size, language, sot_seq) -> list[dict]:
        """openai-whisper's find_alignment + add_word_timestamps for one window's segments."""
        text_toks = [[t for t in s["tokens"] if t < self.eot] for s in segs]
        flat = [t for ts in text_toks for t in ts]
        seq = sot_seq + [self.no_ts] + flat + [self.eot]
        length = 32
        while length < len(seq):  # a few padded lengths, so only a few compiles
            length *= 2
        length = min(length, self.dims.n_text_ctx)
        seq = seq[:length]
        padded = np.full((1, length), self.eot, np.int32)
        padded[0, :len(seq)] = seq
        heads, logp = self._align(self.params, xk, xv, jnp.asarray(padded))
        heads, logp = np.asarray(heads)[:, :len(seq), : size // 2], np.asarray(logp)
        ns = len(sot_seq)
        probs = np.exp(logp[ns + np.arange(len(flat)), flat])
        w = np.exp(heads - heads.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        w = (w - w.mean(-2, keepdims=True)) / (w.std(-2, keepdims=True) + 1e-10)
        from scipy.ndimage import median_filter
        w = median_filter(w, size=(1, 1, 7), mode="mirror")  # torch's reflect padding
        matrix = w.mean(0)[ns:-1]
        rows, cols = dtw(-matrix)
        words, word_toks = self._split_words(flat + [self.eot], language)
        if len(word_toks) <= 1:
            return []
        bounds = np.pad(np.cumsum([len(t) for t in word_toks[:-1]]), (1, 0))
        jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
        jump_times = cols[jumps] * TIME_PRECISION
        starts, ends = jump_times[bounds[:-1]], jump_times[bounds[1:]]
        timing = [{"word": wd, "tokens": tk, "start": float(s0), "end": float(e0),
                   "prob": float(np.mean(probs[i:j]))}
                  for wd, tk, s0, e0, i, j in zip(words, word_toks, starts, ends, bounds[:-1], bounds[1:])]
        _clip_long_words(timing)
        _merge_punctuations(timing)
        out, k = [], 0
        for seg, toks in zip(segs, text_toks):
            saved, seg_words = 0, []
            while k < len(timing) and saved < len(toks):
                t = timing[k]
                if t["word"]:
                    seg_words.append({"word": t["word"].strip(), "start": round(offset + t["start"], 3),
                                      "end": round(offset + t["end"], 3), "prob": round(t["prob"], 4)})
                saved += len(t["tokens"])
                k += 1
            if seg_words:
                seg["start"], seg["end"] = seg_words[0]["start"], seg_words[-1]["end"]
            seg["words"] = seg_words
            out.extend(seg_words)
        return out


WORD_SPEECH_TOLERANCE_S = 0.3   # a word this close to detected speech still counts


def _near(item: dict, regions, tol: float) -> bool:
    return any(item["start"] < b + tol and item["end"] > a - tol for a, b in regions)


def transcribe_speech(model: "WhisperJax", audio: np.ndarray, **kwargs
                      ) -> tuple[Transcript, list[str]]:
    """Whisper on 16 kHz ``audio`` only where there is speech; returns (transcript, warnings).

    Speech is what :func:`level1_affect.audio.speech_regions` finds. With none (silence, a
    tone, noise) Whisper does not run: the transcript is empty, its language None, and a
    warning says so, since Whisper otherwise invents words on such input. Words and segments
    further than ``WORD_SPEECH_TOLERANCE_S`` from any speech are dropped, with a warning.
    """
    audio = np.asarray(audio, np.float32).reshape(-1)
    regions = speech_regions(audio, SAMPLE_RATE)
    if not regions:
        return Transcript(None, "", [], []), [
            "no speech detected in the audio: the transcript is empty"]
    tr = model.transcribe(audio, **kwargs)
    words = [w for w in tr.words if _near(w, regions, WORD_SPEECH_TOLERANCE_S)]
    warnings = []
    if len(words) < len(tr.words):
        warnings.append(f"{len(tr.words) - len(words)} transcribed word(s) outside detected "
                        "speech were dropped")
    if len(words) == len(tr.words):
        return tr, warnings
    segments = [s for s in tr.segments if _near(s, regions, WORD_SPEECH_TOLERANCE_S)]
    return Transcript(tr.language if words else None, " ".join(w["word"] for w in words),
                      segments, words), warnings


def english(language: str | None) -> bool:
    """Whether the text models can read a transcript in ``language`` (None: no words)."""
    return language is None or language.lower() in ("en", "english")


def transcript_words(model: "WhisperJax", audio: np.ndarray, language: str, warnings: list
                     ) -> tuple[list[dict], str | None]:
    """Timed words ``[{"word", "start", "end"}]`` of the speech in 16 kHz ``audio`` and its
    language (None: no speech); ``language``: a code or "auto". Notes go to ``warnings``,
    with one when the speech is not English (the text models read English)."""
    forced = None if language == "auto" else language
    if forced is not None and forced not in model.lang_ids:
        raise ValueError(f"language={forced!r}: not a language Whisper knows")
    tr, notes = transcribe_speech(model, audio, language=forced)
    warnings.extend(notes)
    if tr.language is None:
        return [], None
    words = [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"])}
             for w in tr.words]
    if not english(tr.language):
        how = "detected" if forced is None else "set by language="
        warnings.append(f"speech in language {tr.language!r} ({how}): the text models "
                        "read English, so the text evidence is not used (text tracks "
                        "marked absent)")
    return words, tr.language


def _clip_long_words(timing: list[dict]) -> None:
    """Cap words next to a sentence end at twice the median word length (openai-whisper)."""
    durations = np.array([t["end"] - t["start"] for t in timing])
    durations = durations[durations.nonzero()]
    if not len(durations):
        return
    max_dur = 2 * min(0.7, float(np.median(durations)))
    for prev, t in zip(timing, timing[1:]):
        if t["end"] - t["start"] > max_dur:
            if t["word"] in ".。!！?？":
                t["end"] = t["start"] + max_dur
            elif prev["word"] in ".。!！?？":
                t["start"] = t["end"] - max_dur


def _merge_punctuations(timing: list[dict]) -> None:
    """Attach opening punctuation to the next word and closing punctuation to the previous."""
    i, j = len(timing) - 2, len(timing) - 1
    while i >= 0:
        prev, nxt = timing[i], timing[j]
        if prev["word"].startswith(" ") and prev["word"].strip() in _PREPENDED:
            nxt["word"], nxt["tokens"] = prev["word"] + nxt["word"], prev["tokens"] + nxt["tokens"]
            prev["word"], prev["tokens"] = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(timing):
        prev, nxt = timing[i], timing[j]
        if not prev["word"].endswith(" ") and nxt["word"] in _APPENDED:
            prev["word"], prev["tokens"] = prev["word"] + nxt["word"], prev["tokens"] + nxt["tokens"]
            nxt["word"], nxt["tokens"] = "", []
        else:
            i = j
        j += 1
