"""Audio of a video: log-mel and prosody, all on the video's frame grid.

The samples come from ``level1_affect.media`` (16 kHz mono float32). ``log_mel`` and
``prosody`` return one row per video frame (hop 1/fps, frame i centred at (i + 0.5)/fps);
audio shorter than the video reads as silence, and silence gives zeros and finite values,
never NaN.

Pitch comes from a vectorised YIN (de Cheveigné & Kawahara 2002) on a 10 ms grid: it
gives both f0 and an aperiodicity used as the voicing decision, at a small fraction of
pYIN's cost (pYIN's Viterbi decoding is what keeps it far from real time).
"""

from __future__ import annotations

import numpy as np

__all__ = ["log_mel", "prosody", "speech_regions"]

N_MELS = 80
FMIN, FMAX = 60.0, 500.0     # pitch search range: low male voices to children
ANALYSIS_HOP_S = 0.01        # prosody analysis grid (10 ms), averaged onto video frames
YIN_WINDOW_S = 0.025
YIN_THRESHOLD = 0.15         # first CMNDF dip below this is the period (YIN's absolute threshold)
VOICED_MAX_APERIODICITY = 0.3
DB_FLOOR = -80.0             # energy is reported in dB above this level (dBFS)
HANGOVER_S = 0.1             # VAD keeps speech on this long after energy drops
MIN_PAUSE_S = 0.2
# A stretch of energy activity counts as speech only when it looks like speech: partly
# periodic (voiced), with syllabic loudness modulation and a moving pitch. A steady tone
# (periodic, flat level and pitch) and noise (aperiodic) fail; speech passes all three.
SPEECH_MIN_VOICED = 0.1       # fraction of the stretch's 10 ms frames that are periodic
SPEECH_MIN_LEVEL_SD_DB = 3.0  # standard deviation of the level over the stretch, dB
SPEECH_MIN_PITCH_SD_ST = 0.3  # standard deviation of f0 over its voiced frames, semitones


def _frames(audio: np.ndarray, centres: np.ndarray, length: int) -> np.ndarray:
    """Windows of ``length`` samples centred at sample positions ``centres`` (zero padded)."""
    pad = length // 2 + 1
    x = np.pad(np.asarray(audio, np.float32), (pad, pad + length))
    starts = np.clip(np.round(centres).astype(np.int64) - length // 2 + pad, 0, len(x) - length)
    return x[starts[:, None] + np.arange(length)]


def _to_video(values: np.ndarray, times: np.ndarray, fps: float, n_frames: int,
              weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of per-analysis-frame ``values`` (at ``times`` s) within each video frame.

    Returns (means, weight sums); a frame with zero weight gets 0.
    """
    idx = np.floor(times * fps).astype(np.int64)
    ok = (idx >= 0) & (idx < n_frames)
    w = np.ones_like(values, np.float64) if weights is None else weights.astype(np.float64)
    wsum = np.bincount(idx[ok], w[ok], minlength=n_frames)
    total = np.bincount(idx[ok], (w * values)[ok], minlength=n_frames)
    return np.where(wsum > 0, total / np.maximum(wsum, 1e-12), 0.0), wsum


def log_mel(audio: np.ndarray, sr: int, fps: float, n_frames: int, n_mels: int = N_MELS) -> np.ndarray:
    """Log-mel spectrogram on the video grid: (n_frames, n_mels) float32.

    Frame i is a Hann window centred at (i + 0.5)/fps, at least 1.5 hops long (rounded up
    to a power of two), so no audio between frames is skipped. Values are log10 of mel
    power normalised by the window's energy (independent of the window length), floored
    at 1e-10 and scaled as Whisper does, ``(log10 + 4) / 4``: silence reads -1.5.
    """
    import librosa
    hop = sr / float(fps)
    n_fft = int(2 ** np.ceil(np.log2(max(400.0, 1.5 * hop))))
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    centres = (np.arange(n_frames) + 0.5) * hop
    spec = np.abs(np.fft.rfft(_frames(audio, centres, n_fft) * window, axis=-1)) ** 2
    spec /= float(np.sum(window) ** 2)
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmax=min(8000.0, sr / 2))
    mel = spec @ fb.T.astype(np.float32)
    return ((np.log10(np.maximum(mel, 1e-10)) + 4.0) / 4.0).astype(np.float32)


def yin(audio: np.ndarray, sr: int, hop: int, fmin: float = FMIN, fmax: float = FMAX,
        window_s: float = YIN_WINDOW_S) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised YIN on frames centred at ``(k + 0.5) * hop``: (f0 Hz, aperiodicity).

    The difference function of every frame comes from one batched FFT autocorrelation;
    the period is the first local minimum of the cumulative-mean-normalised difference
    below ``YIN_THRESHOLD`` (else the global minimum), refined by parabolic interpolation.
    Aperiodicity is the normalised difference at that lag (0 = perfectly periodic).
    """
    audio = np.asarray(audio, np.float32)
    n = int(np.ceil(len(audio) / hop))
    if n == 0:
        return np.zeros(0, np.float32), np.ones(0, np.float32)
    w = int(round(window_s * sr))
    tau_min, tau_max = max(2, int(sr / fmax)), int(np.ceil(sr / fmin))
    length = w + tau_max + 1
    frames = _frames(audio, (np.arange(n) + 0.5) * hop, length).astype(np.float64)
    nfft = int(2 ** np.ceil(np.log2(length + w)))
    # r(tau) = sum_{j<w} x_j x_{j+tau}, for all tau at once
    r = np.fft.irfft(np.conj(np.fft.rfft(frames[:, :w], nfft)) * np.fft.rfft(frames, nfft), nfft)
    r = r[:, :tau_max + 1]
    sq = np.concatenate([np.zeros((n, 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_tau = sq[:, taus + w] - sq[:, taus]                 # sum_{j<w} x_{j+tau}^2
    diff = np.maximum(energy_tau[:, :1] + energy_tau - 2 * r, 0.0)
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)
    cmnd[cum[:, -1] <= 1e-12] = 1.0                              # digital silence: aperiodic
    seg = cmnd[:, tau_min:tau_max]
    local_min = np.zeros_like(seg, bool)
    local_min[:, 1:-1] = (seg[:, 1:-1] <= seg[:, :-2]) & (seg[:, 1:-1] <= seg[:, 2:])
    below = local_min & (seg < YIN_THRESHOLD)
    best = np.where(below.any(1), below.argmax(1), seg.argmin(1))
    k = np.clip(best, 1, seg.shape[1] - 2)
    a, b, c = seg[np.arange(n), k - 1], seg[np.arange(n), k], seg[np.arange(n), k + 1]
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    shift = np.where(best == k, np.clip(shift, -1, 1), 0.0)
    period = tau_min + best + shift
    return (sr / period).astype(np.float32), seg[np.arange(n), best].astype(np.float32)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D boolean array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def voice_activity(level_db: np.ndarray, hop_s: float) -> np.ndarray:
    """Energy VAD on frame levels in dBFS: threshold from a noise-floor estimate, plus hangover.

    The floor is the 10th percentile level and the speech level the 95th; the threshold
    sits 6 dB over the floor, but never more than 10 dB under the speech level (a recording
    that is all speech has its floor inside the speech), nor lower than 30 dB under it or
    -70 dBFS. Active frames stay active ``HANGOVER_S`` longer, bridging decaying word ends.
    """
    if len(level_db) == 0:
        return np.zeros(0, bool)
    floor, speech = np.percentile(level_db, 10), np.percentile(level_db, 95)
    thr = max(min(floor + 6.0, speech - 10.0), speech - 30.0, -70.0)
    active = level_db > thr
    hang = int(round(HANGOVER_S / hop_s))
    if hang and active.any():
        kernel = np.ones(hang + 1)
        # a frame is active when any of the previous `hang` frames was
        active = np.convolve(active.astype(float), kernel)[: len(active)] > 0
    return active


def speech_activity(level_db: np.ndarray, active: np.ndarray, f0: np.ndarray,
                    aperiodicity: np.ndarray) -> np.ndarray:
    """``active`` (the energy VAD) with every stretch that does not look like speech
    removed: see ``SPEECH_MIN_*``. All inputs are on the same 10 ms analysis grid."""
    out = np.zeros_like(active, dtype=bool)
    for a, b in _runs(active):
        periodic = aperiodicity[a:b] < VOICED_MAX_APERIODICITY
        if periodic.mean() < SPEECH_MIN_VOICED or level_db[a:b].std() < SPEECH_MIN_LEVEL_SD_DB:
            continue
        semitones = 12 * np.log2(np.maximum(f0[a:b][periodic], 1.0))
        if semitones.size < 3 or semitones.std() < SPEECH_MIN_PITCH_SD_ST:
            continue
        out[a:b] = True
    return out


def _analysis(audio: np.ndarray, sr: int) -> tuple:
    """(level dBFS, speech activity, f0, aperiodicity, hop) on the 10 ms grid of ``audio``."""
    hop = int(round(ANALYSIS_HOP_S * sr))
    n = int(np.ceil(len(audio) / hop))
    sq = np.pad(audio.astype(np.float64) ** 2, (0, n * hop - len(audio))).reshape(n, hop).mean(1)
    level = 10 * np.log10(np.maximum(sq, 1e-20))
    f0, aperiodicity = yin(audio, sr, hop)
    active = speech_activity(level, voice_activity(level, hop / sr), f0, aperiodicity)
    return level, active, f0, aperiodicity, hop


def speech_regions(audio: np.ndarray, sr: int) -> list[tuple[float, float]]:
    """(start, end) in seconds of each stretch of ``audio`` that looks like speech; empty
    for silence, a steady tone or noise."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    if audio.size == 0:
        return []
    _, active, _, _, hop = _analysis(audio, sr)
    return [(a * hop / sr, b * hop / sr) for a, b in _runs(active)]


def prosody(audio: np.ndarray, sr: int, fps: float, n_frames: int) -> np.ndarray:
    """Prosody per video frame: (n_frames, 6) float32, columns as ``schema.VOICE_PROSODY``:
    pitch (Hz, and z-scored over the video's voiced frames), energy (dB above -80 dBFS),
    voiced, voice_active (energy VAD kept on speech-like stretches) and pause (a gap of
    more than 200 ms between speech); docs/performance.md says how each is computed."""
    audio = np.asarray(audio, np.float32)
    out = np.zeros((n_frames, 6), np.float32)
    if n_frames == 0:
        return out
    hop = int(round(ANALYSIS_HOP_S * sr))
    # Cover the whole video: audio shorter than the video is silence at the end.
    need = int(np.ceil(n_frames / fps * sr))
    if len(audio) < need:
        audio = np.pad(audio, (0, need - len(audio)))
    level, active, f0, aperiodicity, hop = _analysis(audio, sr)
    n = len(level)
    times = (np.arange(n) + 0.5) * hop / sr
    voiced = active & (aperiodicity < VOICED_MAX_APERIODICITY) & (level > DB_FLOOR)

    # energy: exact RMS over each video frame's samples via a cumulative sum
    csum = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    edges = np.clip(np.round(np.arange(n_frames + 1) / fps * sr).astype(np.int64), 0, len(audio))
    count = np.maximum(edges[1:] - edges[:-1], 1)
    rms_db = 10 * np.log10(np.maximum((csum[edges[1:]] - csum[edges[:-1]]) / count, 1e-20))
    out[:, 2] = np.maximum(rms_db - DB_FLOOR, 0.0)

    logf0, wsum = _to_video(np.log2(np.maximum(f0, 1.0)), times, fps, n_frames, voiced)
    frac_voiced = _to_video(voiced.astype(float), times, fps, n_frames)[0]
    v = (frac_voiced >= 0.5) & (wsum > 0)
    out[:, 3] = v
    out[:, 0] = np.where(v, 2.0 ** logf0, 0.0)
    if v.sum() >= 2:
        # Spread below a semitone is not intonation: floor the scale there so a monotone
        # voice or a tone gives z near 0 instead of amplified jitter.
        out[v, 1] = (logf0[v] - logf0[v].mean()) / max(logf0[v].std(), 1.0 / 12)
    out[:, 4] = _to_video(active.astype(float), times, fps, n_frames)[0] > 0.5

    runs = _runs(active)
    pause = np.zeros(n, bool)
    for (_s0, e0), (s1, _e1) in zip(runs, runs[1:]):  # gaps strictly between speech
        if (s1 - e0) * hop / sr > MIN_PAUSE_S:
            pause[e0:s1] = True
    out[:, 5] = _to_video(pause.astype(float), times, fps, n_frames)[0] > 0.5
    return out
