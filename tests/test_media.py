"""The media reader: one open of a real video gives its probe, its frames with their
presentation times and its audio, equal to what separate reads of the file give."""

from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import encode_frames
from level1_affect import media
from level1_affect.errors import MediaError

# 10 frames 50 ms apart, then 10 frames 150 ms apart (a variable frame rate).
TIMES = np.concatenate([np.arange(10) * 0.05, 0.45 + np.arange(1, 11) * 0.15])


def _write(path, times=TIMES, sr=22050, layout="stereo"):
    """An H.264 MP4 with frames at ``times`` and a stereo AAC tone (left 220 Hz, right 330 Hz)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        audio = out.add_stream("aac", rate=sr, layout=layout)
        encode_frames(out, video, [np.full((48, 64, 3), i * 12, np.uint8)
                                   for i in range(len(times))], times)
        t = np.arange(int((times[-1] + 0.2) * sr)) / sr
        wave = 0.2 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)])
        for start in range(0, wave.shape[1], 1024):
            chunk = np.zeros((2, 1024), np.float32)
            piece = wave[:, start:start + 1024]
            chunk[:, :piece.shape[1]] = piece
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


def _separately(path):
    """Probe, frames, packet times and 16 kHz mono audio, each from its own open."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        probe = (float(stream.average_rate), int(stream.frames))
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        pts = sorted(p.pts * float(stream.time_base) for p in c.demux(stream)
                     if p.pts is not None and p.size)
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=16000)
        chunks = [r.to_ndarray().mean(0) for f in c.decode(audio=0)
                  for r in resampler.resample(f)]
        chunks += [r.to_ndarray().mean(0) for r in resampler.resample(None)]
    return probe, frames, np.asarray(pts) - pts[0], np.concatenate(chunks).astype(np.float32)


def test_one_open_gives_probe_frames_times_and_audio(tmp_path, monkeypatch):
    path = _write(tmp_path / "talk.mp4")
    (fps, n), frames, pts, audio = _separately(path)
    opened = []
    real_open = av.open
    monkeypatch.setattr(media.av, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    got_frames, got_pts, got_audio, got_fps, got_n = media.read(path)
    got_frames = list(got_frames)
    assert len(opened) == 1
    assert (got_fps, got_n) == (fps, n) and n == len(TIMES)
    assert len(got_frames) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(got_frames, frames))
    np.testing.assert_array_equal(got_pts, pts)
    np.testing.assert_allclose(got_pts, TIMES, atol=1.5e-3)
    np.testing.assert_array_equal(got_audio, audio)
    np.testing.assert_array_equal(media.load_audio(path), audio)
    times = media.frame_times(got_pts, len(TIMES) + 2, got_fps)   # two frames past the packets
    np.testing.assert_allclose(np.diff(times[-3:]), 1.0 / got_fps)
    assert media.is_variable_rate(times[:len(TIMES)], got_fps)


def test_video_without_audio_and_bad_files(tmp_path):
    with av.open(str(tmp_path / "silent.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        encode_frames(out, stream, [np.full((48, 64, 3), i * 40, np.uint8) for i in range(5)])
    frames, pts, audio, fps, n = media.read(tmp_path / "silent.mp4")
    assert audio is None and fps == 25 and len(list(frames)) == n == len(pts) == 5
    with pytest.raises(media.NoAudioError, match="silent.mp4: no audio track"):
        media.load_audio(tmp_path / "silent.mp4")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MediaError, match="junk.mp4: unreadable video"):
        media.read(tmp_path / "junk.mp4")
    with pytest.raises(MediaError, match="missing.mp4: no such video file"):
        media.read(tmp_path / "missing.mp4")
