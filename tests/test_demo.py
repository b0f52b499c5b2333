"""The embedded demo dataset: speech, face animation and a tiny generated BAH tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ahjax.core.data import demo, face_anim
from ahjax.core.data.speech import SpeechError, synthesize

FPS = 24
# Questions 4 and 7 carry A/H with probability 0.95 and 0.88: a tiny tree almost surely has
# both classes, and the seed below was checked to have them.
TINY = dict(participants=2, questions=(4, 7), min_duration=6.0, max_duration=9.0, size=128, workers=1)


class _TupleLoader(yaml.SafeLoader):
    """A safe loader that knows only the one extra tag BAH uses."""


_TupleLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                             lambda loader, node: tuple(loader.construct_sequence(node)))


def _load(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_TupleLoader)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return demo.make_demo(tmp_path_factory.mktemp("demo") / "bah", seed=3, **TINY)


# --------------------------------------------------------------------------- speech

def test_synthesize_sentence_is_speech_of_plausible_length():
    text = "I want to exercise more, but I am always too tired after work."
    sp = synthesize(text)
    samples, sr = sp  # unpacks like a (samples, rate) pair
    assert samples.dtype == np.float32 and samples.ndim == 1 and sr == 22050
    # 13 words at 175 wpm is about 4.5 s; espeak pauses at the comma.
    assert 2.5 < sp.duration < 7.0
    assert np.sqrt(np.mean(samples ** 2)) > 0.02 and np.abs(samples).max() <= 1.0
    words = [w.word for w in sp.words]
    assert words == text.replace(",", "").replace(".", "").split()
    starts = [w.start for w in sp.words]
    assert starts == sorted(starts) and starts[-1] < sp.duration
    assert all(w.end >= w.start for w in sp.words)
    # Words land where there is sound: the middle of each word is not silent.
    for w in sp.words:
        a, b = int(w.start * sr), int(w.end * sr)
        assert np.abs(samples[a:b]).max() > 0.05, w


def test_synthesize_rate_and_flat_pitch():
    text = "I really love going for a run in the morning."
    fast, slow = synthesize(text, rate_wpm=220), synthesize(text, rate_wpm=120)
    assert slow.duration > 1.4 * fast.duration
    with pytest.raises(SpeechError):
        synthesize("   ")


# --------------------------------------------------------------------------- face

def test_render_frames_expressions_change_the_mouth_only_where_expected():
    n = len(face_anim.CHANNELS)
    track = np.zeros((3, n))
    track[1, face_anim.CHANNELS.index("smile")] = 1.0
    track[2, face_anim.CHANNELS.index("frown")] = 1.0
    frames = face_anim.render_frames(track, face_anim.Identity(), seed=0, size=128, motion=False)
    assert frames.shape == (3, 128, 128, 3) and frames.dtype == np.uint8
    diff_smile = np.abs(frames[1].astype(int) - frames[0]).sum(-1)
    diff_frown = np.abs(frames[2].astype(int) - frames[0]).sum(-1)
    assert diff_smile.max() > 40 and diff_frown.max() > 40
    # Changes sit on the face (centre), not in the background corners.
    for d in (diff_smile, diff_frown):
        assert d[:20, :20].max() == 0 and d[-20:, -20:].max() == 0
        ys, xs = np.nonzero(d > 30)
        assert 40 < ys.mean() < 100 and 40 < xs.mean() < 90
    with pytest.raises(ValueError):
        face_anim.render_frames(np.zeros((2, n + 1)))


def test_identities_differ_and_are_deterministic():
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    ida, idb = face_anim.make_identity(rng_a), face_anim.make_identity(rng_b)
    assert ida == idb
    other = face_anim.make_identity(rng_a)
    track = np.zeros((2, len(face_anim.CHANNELS)))
    f1 = face_anim.render_frames(track, ida, seed=0, size=96)
    f2 = face_anim.render_frames(track, idb, seed=0, size=96)
    f3 = face_anim.render_frames(track, other, seed=0, size=96)
    assert np.array_equal(f1, f2)
    assert np.abs(f1.astype(int) - f3).mean() > 5


# --------------------------------------------------------------------------- tree

def test_layout(tiny):
    for rel in ("video_annotation_transcript.yaml", "meta_data.yml", "bah-video.csv", "ground_truth.json",
                "split/train.txt", "split/val.txt", "split/test.txt",
                "split-frames/train.txt", "split-frames/val.txt", "split-frames/test.txt"):
        assert (tiny / rel).is_file(), rel
    gt = json.loads((tiny / "ground_truth.json").read_text())
    assert len(gt["videos"]) == 4
    for vid in gt["videos"]:
        assert vid.startswith("Videos/") and "/Visite_1/" in vid and vid.endswith("_Video.mp4")
        assert (tiny / vid).is_file()
        stem = Path(vid).stem
        assert (tiny / "transcription" / vid / f"{stem}.yml").is_file()
    # No participant in two splits; every split line parses on its first two commas.
    seen = {}
    for split in ("train", "val", "test"):
        for line in (tiny / "split" / f"{split}.txt").read_text().splitlines():
            vid, label, transcript = line.split(",", 2)
            pid = vid.split("/")[1]
            assert seen.setdefault(pid, split) == split
            segs = gt["videos"][vid]["segments"]
            assert label == str(int(any(x["ah"] for x in segs)))
            assert transcript == " ".join(x["text"] for x in segs)
    meta = _load(tiny / "meta_data.yml")
    assert set(meta) == {v["participant"] for v in gt["videos"].values()}
    assert {"Age", "Gender", "Use in publications"} <= set(next(iter(meta.values())))


def test_videos_decode_with_speech_where_words_are(tiny):
    av = pytest.importorskip("av")
    gt = json.loads((tiny / "ground_truth.json").read_text())["videos"]
    for vid, info in gt.items():
        with av.open(str(tiny / vid)) as c:
            vs = c.streams.video[0]
            assert vs.codec_context.name == "h264" and float(vs.average_rate) == FPS
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == info["n_frames"]
        assert frames[0].shape == (128, 128, 3)
        assert 6.0 <= info["n_frames"] / FPS <= 9.0
        with av.open(str(tiny / vid)) as c:
            sr = c.streams.audio[0].sample_rate
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        speech = np.zeros(len(audio), bool)
        for seg in info["segments"]:
            a, b = seg["speech"]
            speech[int(a * sr):int(b * sr)] = True
        rms_in = np.sqrt(np.mean(audio[speech] ** 2))
        # Silence before the first word (AAC priming delay makes its edge fuzzy: skip 0.1 s).
        first = info["segments"][0]["speech"][0]
        lead = audio[int(0.1 * sr):int((first - 0.1) * sr)]
        assert rms_in > 0.03
        assert len(lead) == 0 or np.sqrt(np.mean(lead ** 2)) < 0.1 * rms_in


def test_annotations_match_injected_segments(tiny):
    gt = json.loads((tiny / "ground_truth.json").read_text())["videos"]
    ann = _load(tiny / "video_annotation_transcript.yaml")
    assert set(ann) == set(gt)
    n_pos = 0
    for vid, info in gt.items():
        a = ann[vid]
        ah = [s for s in info["segments"] if s["ah"]]
        assert a["fr_detailed_ah"] == [[s["start"], s["end"]] for s in ah]
        assert a["global_ah"] == int(bool(ah))
        labels = np.array([lab for _, lab in a["frame_annotation"]])
        assert len(labels) == info["n_frames"]
        assert [p for p, _ in a["frame_annotation"]][:2] == [f"{vid}/frame-0.jpg", f"{vid}/frame-1.jpg"]
        expect = np.zeros(info["n_frames"], int)
        for s in ah:
            expect[s["start"]:s["end"] + 1] = 1
            # BAH-like duration (gamma around 100 frames, 40..200), windows hold their words.
            assert 40 <= s["end"] - s["start"] + 1 <= 200
            assert s["start"] / FPS <= s["speech"][0] and s["speech"][1] <= (s["end"] + 1) / FPS + 1e-6
            assert s["kind"] in demo.AH_KINDS
        assert np.array_equal(labels, expect)
        n_pos += int(labels.sum())
        assert len(a["time_detailed_ah"]) == len(ah) == len(a["all_cues"]) == len(a["certainty_ah"])
        for (s, e), (ts, te) in zip(a["fr_detailed_ah"], a["time_detailed_ah"]):
            h, m, sec = ts.split(":")
            assert abs(int(h) * 3600 + int(m) * 60 + float(sec) - s / FPS) < 1e-3
        for cue in a["all_cues"]:
            assert set(cue) == {"audio", "body", "facial", "inconsistencies", "language"}
            assert cue["inconsistencies"]
        # Whisper transcription: tuple timestamps, last end None, text = split transcript.
        tr = _load(tiny / "transcription" / vid / f"{Path(vid).stem}.yml")
        assert all(isinstance(c["timestamp"], tuple) for c in tr["chunks"])
        assert tr["chunks"][-1]["timestamp"][1] is None
        assert all(c["language"] == "english" for c in tr["chunks"])
        assert tr["text"].strip() == a["transcript"]
    # Split-frames agree with the annotation.
    frames = {}
    for split in ("train", "val", "test"):
        for line in (tiny / "split-frames" / f"{split}.txt").read_text().splitlines():
            fid, lab = line.rsplit(",", 1)
            frames[fid] = int(lab)
    assert sum(frames.values()) == n_pos > 0
    assert len(frames) == sum(v["n_frames"] for v in gt.values())


def test_deterministic_by_seed_and_cached_once(tmp_path):
    small = dict(TINY, participants=1, questions=(4,), max_duration=6.0)
    a = demo.make_demo(tmp_path / "a", seed=5, **small)
    cache = tmp_path / "cache" / "demo"
    b = demo.ensure_demo(cache, seed=5, **small)
    assert b == cache
    for rel in ("video_annotation_transcript.yaml", "split/train.txt", "split-frames/train.txt",
                "meta_data.yml", "bah-video.csv"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    stamp = (cache / "ground_truth.json").stat().st_mtime_ns
    assert demo.ensure_demo(cache, seed=5, **small) == cache
    assert (cache / "ground_truth.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temp left
    c = demo.make_demo(tmp_path / "c", seed=6, **small)
    assert (c / "video_annotation_transcript.yaml").read_bytes() != (a / "video_annotation_transcript.yaml").read_bytes()


def test_make_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        demo.make_demo(tmp_path)


def test_loads_through_the_bah_loader(tiny):
    bah = pytest.importorskip("ahjax.core.data.bah")
    index = bah.load_bah(tiny)
    gt = json.loads((tiny / "ground_truth.json").read_text())["videos"]
    assert len(index) == len(gt)
    for vid, info in gt.items():
        rec = index.by_id(vid)
        labels = rec.labels_for(info["n_frames"])
        assert len(labels) == info["n_frames"]
        assert int(labels.sum()) == sum(s["end"] - s["start"] + 1 for s in info["segments"] if s["ah"])
        assert rec.question == info["question"] and rec.participant == info["participant"]
