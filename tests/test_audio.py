"""Audio decoding, log-mel and prosody on real files and signals with known answers."""

from __future__ import annotations

import fractions

import numpy as np
import pytest

from level1_affect import audio as A
from level1_affect import media
from level1_affect.errors import MediaError

SR = 16000


def _speech(text="I want to exercise more but I do not have the time"):
    from ahjax.core.data.speech import synthesize
    import librosa
    sp = synthesize(text, rate_wpm=150)
    return librosa.resample(sp.samples, orig_sr=sp.sample_rate, target_sr=SR).astype(np.float32)


def write_mp4(path, seconds: float, audio: np.ndarray | None = None, fps: int = 25) -> None:
    """A small real mp4 (mpeg4 video, AAC audio at 16 kHz when ``audio`` is given)."""
    import av
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        a = None
        if audio is not None:
            a = out.add_stream("aac", rate=SR)
            a.layout = "mono"
        for i in range(int(seconds * fps)):
            img = np.full((64, 64, 3), (i * 7) % 255, np.uint8)
            for pkt in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in v.encode():
            out.mux(pkt)
        if a is not None:
            block = 1024  # AAC frame size
            for start in range(0, len(audio), block):
                chunk = np.zeros((1, block), np.float32)
                piece = audio[start:start + block]
                chunk[0, :len(piece)] = piece
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = SR, start
                frame.time_base = fractions.Fraction(1, SR)
                for pkt in a.encode(frame):
                    out.mux(pkt)
            for pkt in a.encode():
                out.mux(pkt)


@pytest.fixture(scope="module")
def speech():
    return _speech()


def test_load_audio_from_mp4_with_speech(tmp_path, speech):
    path = tmp_path / "talk.mp4"
    write_mp4(path, len(speech) / SR, speech)
    got = media.load_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(len(got) / SR - len(speech) / SR) < 0.15
    # AAC is lossy but keeps the signal: level within 3 dB, envelope strongly correlated
    assert abs(20 * np.log10(np.std(got) / np.std(speech))) < 3
    n = min(len(got), len(speech)) // 160
    env = lambda x: np.sqrt((x[:n * 160].reshape(n, 160) ** 2).mean(1))
    assert np.corrcoef(env(got), env(speech))[0, 1] > 0.9
    # decoding at another rate resamples
    assert abs(len(media.load_audio(path, sr=8000)) - len(got) / 2) < 400


def test_no_audio_and_corrupt_files(tmp_path):
    silent = tmp_path / "silent.mp4"
    write_mp4(silent, 0.5)
    with pytest.raises(media.NoAudioError, match="silent.mp4: no audio track"):
        media.load_audio(silent)
    assert issubclass(media.NoAudioError, MediaError) and issubclass(MediaError, ValueError)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="broken.mp4"):
        media.load_audio(bad)
    with pytest.raises(MediaError, match="missing.wav"):
        media.load_audio(tmp_path / "missing.wav")


def test_shapes_follow_the_video(speech):
    fps = 30.0
    n = int(len(speech) / SR * fps) + 15  # the video runs 0.5 s past the audio
    mel = A.log_mel(speech, SR, fps, n)
    pro = A.prosody(speech, SR, fps, n)
    assert mel.shape == (n, 80) and pro.shape == (n, 6)
    assert mel.dtype == pro.dtype == np.float32
    assert np.isfinite(mel).all() and np.isfinite(pro).all()
    assert pro[-10:].sum() == 0 and np.allclose(mel[-10:], -1.5)  # trailing silence
    voiced = pro[:, 3] > 0
    assert 0.2 < voiced.mean() < 0.9 and pro[:, 4].mean() > 0.5
    assert (pro[voiced, 4] == 1).all()  # voiced implies voice activity
    assert 70 < np.median(pro[voiced, 0]) < 200  # espeak's default male voice
    assert abs(pro[voiced, 1].mean()) < 1e-4 and (pro[~voiced, 1] == 0).all()
    assert A.log_mel(speech, SR, fps, 0).shape == (0, 80)


def _voice_like(seconds, f0=150.0, amp=0.2):
    """A harmonic tone whose pitch glides +-1 semitone at 3 Hz and whose loudness moves at
    4 Hz (syllable rate): periodic, modulated, with a moving pitch, as a voice is."""
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * 2 ** (np.sin(2 * np.pi * 3 * t) / 12)
    phase = 2 * np.pi * np.cumsum(f) / SR
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return (amp * env * (np.sin(phase) + 0.5 * np.sin(2 * phase))).astype(np.float32), f


def test_pitch_of_a_voice_like_tone_and_no_voice_in_a_steady_tone_or_silence():
    x, f = _voice_like(2.0)
    pro = A.prosody(x, SR, 25, 50)
    f_frames = f[(np.arange(50) * SR / 25 + SR / 50).astype(int)]
    voiced = pro[:, 3] == 1
    assert voiced.mean() > 0.9 and (pro[:, 4] == 1).all() and (pro[:, 5] == 0).all()
    assert np.all(np.abs(pro[voiced, 0] / f_frames[voiced] - 1) < 0.05)
    # A steady tone is periodic but not a voice: no activity, no pitch, its energy kept.
    t = np.arange(2 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    pro = A.prosody(tone, SR, 25, 50)
    assert (pro[:, [0, 1, 3, 4, 5]] == 0).all()
    assert np.allclose(pro[5:-5, 2], 20 * np.log10(0.3 / np.sqrt(2)) + 80, atol=0.5)
    silence = A.prosody(np.zeros(2 * SR, np.float32), SR, 25, 50)
    assert (silence == 0).all()
    assert np.isfinite(A.log_mel(np.zeros(2 * SR, np.float32), SR, 25, 50)).all()
    assert (A.prosody(np.zeros(0, np.float32), SR, 25, 10) == 0).all()


def test_pause_between_speech_only():
    burst, _ = _voice_like(0.6)
    gap = np.zeros(int(0.5 * SR), np.float32)
    x = np.concatenate([gap, burst, gap, burst, gap])
    pro = A.prosody(x, SR, 100, int(len(x) / SR * 100))
    pause, active = pro[:, 5].astype(bool), pro[:, 4].astype(bool)
    assert not pause[:50].any() and not pause[-40:].any()   # leading/trailing silence is no pause
    assert 30 <= pause[110:160].sum() <= 40                # 0.5 s gap minus the 0.1 s hangover
    assert not (pause & active).any()
    assert active[55:105].all() and active[165:215].all()


def test_yin_is_fast_and_accurate():
    import time
    t = np.arange(60 * SR) / SR
    f = 120 + 40 * np.sin(2 * np.pi * 0.5 * t)   # gliding pitch
    x = np.sin(2 * np.pi * np.cumsum(f) / SR).astype(np.float32)
    t0 = time.perf_counter()
    f0, ap = A.yin(x, SR, 160)
    elapsed = time.perf_counter() - t0
    truth = np.interp((np.arange(len(f0)) + 0.5) * 160 / SR, t, f)
    assert np.median(np.abs(f0[5:-5] / truth[5:-5] - 1)) < 0.01 and np.median(ap) < 0.1
    assert elapsed < 10  # about 1 s per minute of audio on one free core
