"""BAH loader: every quirk of the real layout, the v1 splits, compacted features, the CLI."""

import os
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from ahjax.core.data.bah import (canonical_id, labels_from_segments, load_bah, load_video_splits,
                            parse_video_name, probe_video, read_split_file)
from ahjax.core.data.compacted import CompactedFeatures
from ahjax.core.data.errors import BahFormatError
from ahjax.core.data.transcript import Chunk, monotonic_chunks, read_transcription
from ahjax.core.data.yamlio import BahSafeLoader, load_yaml
from bah_fixture import HOSTILE, make_bah_fixture

V1_SPLITS = Path("/work/shared/data/bah-video-splits")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bah") / "BAH"
    expected = make_bah_fixture(root)
    return root, expected, load_bah(root)


def test_counts_match_fixture(tree):
    root, expected, index = tree
    assert index.summary()["splits"] == expected["splits"]
    # The fixture's numbers, written out: a loader and a fixture wrong the same way fail here.
    assert expected["splits"] == {
        "train": {"videos": 6, "participants": 3, "frames": 1010, "ah_frames": 160, "missing_videos": 6},
        "val": {"videos": 2, "participants": 1, "frames": 72, "ah_frames": 20, "missing_videos": 2},
        "test": {"videos": 2, "participants": 2, "frames": 66, "ah_frames": 12, "missing_videos": 2}}
    assert [v.video_id for v in index.split("val")] == [expected["ids"]["val_neg"], expected["ids"]["val_pos"]]
    assert index.participants("train") == ["10001", "10002", "10003"]
    for vid, want in expected["videos"].items():
        rec = index.by_id(vid)
        assert rec.video_id == vid and rec.split == want["split"]
        assert (rec.participant, rec.question, rec.video_label) == (want["participant"], want["question"], want["label"])
        assert rec.n_labelled == want["frames"] and rec.n_ah == want["ah_frames"]
        assert rec.segments == want["segments"]
        assert (None if rec.frame_labels is None else len(rec.frame_labels)) == want["n_labels"]


def test_old_annotation_file_with_visite_space_keys(tmp_path):
    expected = make_bah_fixture(tmp_path / "old", old_annotation=True)
    keys = load_yaml(tmp_path / "old" / "annotation.yml")
    assert "10001/Visite 1/10001_Question_1_2024-11-19_15-12-23_Video.mp4" in keys
    assert not (tmp_path / "old" / "video_annotation_transcript.yaml").exists()
    index = load_bah(tmp_path / "old")
    assert index.summary()["splits"] == expected["splits"]
    space = index.by_id(expected["ids"]["space"])
    assert len(space.cues) == 2 and space.segments == [(100, 199), (600, 649)]


def test_quirks(tree):
    root, expected, index = tree
    ids = expected["ids"]
    space = index.by_id(ids["space"])
    assert " " in space.video_id
    # Transcripts keep every comma (split on the first two commas only).
    assert space.transcript == "I want to quit smoking, but, honestly, I don't know. Maybe next month, I guess."
    # Annotation key used underscores for the spaces; its labels, cues, certainty still found.
    assert space.n_ah == 150 and space.certainty == [3, 3] and space.fps == 24.0
    assert space.cues[0]["facial"] == "frown while smiling" and set(space.cues[1]) == {
        "audio", "body", "facial", "inconsistencies", "language"}
    # Whisper reset at 30 s: the 4th chunk restarts at 0.0 -> 30.0; the last end (None) is
    # the duration, 840 frames / 24 fps = 35 s.
    assert [(c.start, c.end) for c in space.chunks] == [
        (0.0, 4.2), (4.5, 12.0), (13.0, 29.5), (30.0, 32.5), (33.0, 35.0)]
    assert space.chunks[0].text == "I want to quit smoking," and space.chunks[0].language == "english"
    # Tolerant lookups: underscores for spaces, the DESKTOP suffix, "Visite 1".
    assert index.by_id(ids["space"].replace(" ", "_")) is space
    assert index.by_id(ids["desktop"].replace("-DESKTOP-NQ55E0P", "")).video_id == ids["desktop"]
    assert index.by_id(ids["plain"].replace("Videos/", "").replace("Visite_1", "Visite 1")).video_id == ids["plain"]
    with pytest.raises(KeyError, match="no video"):
        index.by_id("Videos/1/Visite_1/1_Question_1_x_Video.mp4")

    desktop = index.by_id(ids["desktop"])
    labels = desktop.frame_labels
    assert labels.dtype == np.int8 and labels.shape == (50,)
    assert np.all(labels[30:40] == -1) and np.sum(labels == -1) == 10  # the missing range
    assert np.all(labels[10:20] == 1) and np.sum(labels == 1) == 10
    # Whisper chunk with a null end and no known duration: 8 words / 2.5 words per second.
    assert [(c.start, c.end) for c in desktop.chunks] == [(0.0, 8 / 2.5)]

    no_frames = index.by_id(ids["pos_no_frames"])
    assert no_frames.video_label == 1 and no_frames.n_ah == 0 and no_frames.segments == []

    sf_only = index.by_id(ids["split_frames_only"])
    assert sf_only.label_source.endswith("split-frames/train.txt")
    assert sf_only.frame_labels.tolist() == [0] * 30

    seg_only = index.by_id(ids["segments_only"])
    assert seg_only.frame_labels is None and seg_only.segments == [(5, 14)]
    assert seg_only.labels_for(20).tolist() == [0] * 5 + [1] * 10 + [0] * 5
    with pytest.raises(BahFormatError, match=r"segment \(5, 14\) ends past the last frame \(10 frames\)"):
        seg_only.labels_for(10)

    plain = index.by_id(ids["plain"])
    assert plain.labels_for(62)[-3:].tolist() == [0, -1, -1]
    with pytest.raises(BahFormatError, match="60 frame labels but the video has 59 frames"):
        plain.labels_for(59)
    assert [c.text for c in plain.chunks] == ["Well, when I wake up", "I get ready for work."]
    # Nothing on disk but YAML and text: no video found, no fps guessed.
    assert plain.video_path is None and plain.fps is None
    assert plain.metadata["Age"] == 34 and index.by_id(ids["desktop"]).metadata["Age"] == 51
    test_neg = index.by_id(ids["test_neg"])
    assert test_neg.metadata == {}  # 30002 has no meta_data entry
    # Empty transcript in the split file: the annotation's transcript is used.
    assert test_neg.transcript == "Nothing much, really, just work."


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_trees_name_file_line_and_problem(tmp_path, hostile):
    root = tmp_path / "BAH"
    expected = make_bah_fixture(root, hostile)
    want = expected["expect_error"]
    with pytest.raises(BahFormatError) as info:
        load_bah(root)
    err = info.value
    assert Path(err.path) == root / want["file"]
    assert err.line == want["line"]
    assert want["match"] in str(err)
    assert str(err).startswith(str(root / want["file"]))


def _write_video(path: Path, n: int = 6, fps: int = 24) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def test_video_paths_and_lazy_fps_from_header(tmp_path):
    root = tmp_path / "BAH"
    expected = make_bah_fixture(root)
    ids = expected["ids"]
    _write_video(root / ids["plain"])
    # A copy whose name lost its spaces must still be found for the id with spaces.
    _write_video(root / ids["space"].replace(" ", "_"), fps=25)
    info = probe_video(root / ids["plain"])
    assert info.fps == 24.0 and info.n_frames == 6
    index = load_bah(root)
    plain = index.by_id(ids["plain"])
    assert plain.video_path == root / ids["plain"]
    assert "fps" not in plain.__dict__  # not probed while indexing
    assert plain.fps == 24.0
    space = index.by_id(ids["space"])
    assert space.video_path == root / ids["space"].replace(" ", "_")
    assert space.fps == 24.0  # the annotation's value wins over the header's 25
    (root / "broken.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(BahFormatError, match="cannot read the video header"):
        probe_video(root / "broken.mp4")


def test_yaml_safe_loader_and_errors(tmp_path):
    assert yaml.load("t: !!python/tuple [1, [2, 3]]", Loader=BahSafeLoader) == {"t": (1, [2, 3])}
    evil = tmp_path / "evil.yml"
    evil.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(BahFormatError, match="could not determine a constructor") as info:
        load_yaml(evil)
    assert info.value.path == str(evil) and info.value.line == 1
    bad = tmp_path / "bad.yml"
    bad.write_text("a: 1\nb:\n  - x\n - y\n")
    with pytest.raises(BahFormatError, match=r"bad\.yml:4: malformed YAML"):
        load_yaml(bad)
    with pytest.raises(BahFormatError, match="file not found"):
        load_yaml(tmp_path / "missing.yml")
    # An unclosed quote on line 5 of a long file is reported on line 5, not where the
    # parser ran out of file.
    late = tmp_path / "late.yml"
    late.write_text("a: 1\nb: 2\nc: 3\nd: 4\ne: \"open\n" + "".join(f"k{i}: {i}\n" for i in range(830)))
    with pytest.raises(BahFormatError, match=r"late\.yml:5: malformed YAML.*noticed at line 836"):
        load_yaml(late)


def test_large_yaml_parse_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    from ahjax.core.data import yamlio
    monkeypatch.setenv("AHJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(yamlio, "CACHE_MIN_BYTES", 10)
    path = tmp_path / "ann.yml"
    path.write_text("v1: !!python/tuple [1, 2]\nv2: [3]\n")
    first = yamlio.load_yaml_with_lines(path)
    assert first == ({"v1": (1, 2), "v2": [3]}, {"v1": 1, "v2": 2})
    assert len(list((tmp_path / "cache" / "yaml").glob("*.pkl"))) == 1
    real_parse = yamlio._parse
    monkeypatch.setattr(yamlio, "_parse", lambda p: pytest.fail("parsed again"))
    assert yamlio.load_yaml_with_lines(path) == first          # from the cache
    monkeypatch.setattr(yamlio, "_parse", real_parse)
    path.write_text("v1: [9]\n")                                # an edit re-parses
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert yamlio.load_yaml(path) == {"v1": [9]}
    monkeypatch.setenv("AHJAX_YAML_CACHE", "0")                   # off: always parsed
    monkeypatch.setattr(yamlio, "_parse", lambda p: ({"off": 1}, {}))
    assert yamlio.load_yaml(path) == {"off": 1}


def test_split_file_parsing(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"video_id,label,transcript\r\nVideos/1/Visite_1/1_Question_2_Video.mp4,1,"
                     b"Yes, no, maybe.\r\n\r\nVideos/1/Visite_1/1_Question_3_Video.mp4,0,\r\n")
    assert read_split_file(path) == [("Videos/1/Visite_1/1_Question_2_Video.mp4", 1, "Yes, no, maybe."),
                                     ("Videos/1/Visite_1/1_Question_3_Video.mp4", 0, "")]
    path.write_text("a.mp4,0,x\nb.mp4,0,y\na.mp4,1,z\n")
    with pytest.raises(BahFormatError, match=r"train\.txt:3: video 'a\.mp4' listed twice \(first on line 1\)"):
        read_split_file(path)
    assert parse_video_name("Videos/82725/Visite_1/82725_Question_6_2024-11-19_15-12-23_Video.mp4") == ("82725", 6)
    assert parse_video_name("my_clip.mp4") == ("my_clip", 0)
    assert canonical_id("Videos/82725/Visite 1/82725_Question_1_2024-10-02 15-46-17_Video-DESKTOP-NQ55E0P.mp4") \
        == "82725/visite_1/82725_question_1_2024-10-02_15-46-17_video.mp4"


def test_video_in_two_splits_is_rejected(tmp_path):
    root = tmp_path / "BAH"
    expected = make_bah_fixture(root)
    with open(root / "split" / "test.txt", "a") as f:
        f.write(expected["ids"]["plain"].replace("Visite_1", "Visite 1") + ",0,again\n")
    with pytest.raises(BahFormatError, match=r"test\.txt:3: .* is also in split/train\.txt line 1"):
        load_bah(root)


def test_v1_video_splits_on_the_real_files():
    splits = load_video_splits(V1_SPLITS)
    assert set(splits) == {"train", "val"}
    train, val = splits["train"], splits["val"]
    assert (len(train), len(val)) == (616, 110)
    assert Counter(e.label for e in train) == {1: 340, 0: 276}
    assert Counter(e.label for e in val) == {1: 59, 0: 51}
    assert len({parse_video_name(e.video_id)[0] for e in train}) == 143
    assert len({parse_video_name(e.video_id)[0] for e in val}) == 25
    assert sum(" " in e.video_id for e in train) == 103
    assert sum("DESKTOP" in e.video_id for e in train) == 32
    assert not {e.video_id for e in train} & {e.video_id for e in val}
    # docs/bah_format.md's A/H share per question on v1 train: 0.22 .. 0.88.
    by_q = {}
    for e in train:
        by_q.setdefault(parse_video_name(e.video_id)[1], []).append(e.label)
    shares = [round(float(np.mean(by_q[q])), 2) for q in range(1, 8)]
    assert shares == [0.22, 0.62, 0.58, 0.95, 0.50, 0.40, 0.88]
    first = train[0]
    assert first.video_id == "Videos/82725/Visite_1/82725_Question_1_2024-11-19_15-12-23_Video.mp4"
    assert first.transcript.startswith("Well, when I wake up I get ready for work, so I usually shower,")


def test_v1_split_errors(tmp_path):
    with pytest.raises(BahFormatError, match="no train.txt, val.txt or test.txt"):
        load_video_splits(tmp_path)
    (tmp_path / "class_id.yaml").write_text("With A-H: 1\n")
    (tmp_path / "val.txt").write_text("a.mp4,1,x\nb.mp4,0,y\n")
    with pytest.raises(BahFormatError, match=r"val\.txt:2: label 0 is not an id of class_id\.yaml"):
        load_video_splits(tmp_path)


def test_monotonic_chunks_rules():
    raw = [Chunk(0.0, 4.2, "a"), Chunk(13.0, 29.5, "b"), Chunk(0.0, 2.5, "c d"), Chunk(3.0, None, "e f")]
    # Fixed 30 s windows; a null last end without duration: start + max(0.5, 2 words / 2.5).
    assert [(c.start, c.end) for c in monotonic_chunks(raw)] == [
        (0.0, 4.2), (13.0, 29.5), (30.0, 32.5), (33.0, 33.8)]
    # Known duration 31 s: 30 s windows would run past it, so windows start where the
    # previous chunk ended (29.5), and the last end is the duration.
    assert [(c.start, c.end) for c in monotonic_chunks(raw, duration=31.0)] == [
        (0.0, 4.2), (13.0, 29.5), (29.5, 32.0), (32.5, 32.5)]
    # Small backwards jitter is no reset; a chunk straddling the boundary moves the window.
    jitter = [Chunk(0.0, 5.0, "a"), Chunk(4.8, 9.0, "b")]
    assert [c.start for c in monotonic_chunks(jitter)] == [0.0, 4.8]
    straddle = [Chunk(20.0, 28.0, "a"), Chunk(28.5, 1.5, "b"), Chunk(2.0, 4.0, "c")]
    assert [(c.start, c.end) for c in monotonic_chunks(straddle)] == [(20.0, 28.0), (28.5, 31.5), (32.0, 34.0)]
    # A null end in the middle ends where the next chunk starts.
    assert monotonic_chunks([Chunk(0.0, None, "a"), Chunk(2.0, 3.0, "b")])[0].end == 2.0
    with pytest.raises(ValueError, match="chunk 1: start timestamp -1.0"):
        monotonic_chunks([Chunk(0.0, 1.0, "a"), Chunk(-1.0, 2.0, "b")])


def test_read_transcription_errors(tmp_path):
    path = tmp_path / "t.yml"
    path.write_text("text: hi\nchunks:\n- {language: en, text: hi, timestamp: [null, 1.0]}\n")
    with pytest.raises(BahFormatError, match=r"t\.yml: chunks\[0\]: the start timestamp is missing"):
        read_transcription(path)
    path.write_text("text: hi\nchunks:\n- {language: en, text: hi, timestamp: !!python/tuple [0.5]}\n")
    with pytest.raises(BahFormatError, match=r"chunks\[0\]: 'timestamp' must be a \(start, end\) pair"):
        read_transcription(path)
    path.write_text("text: ' hi there'\nchunks:\n- {language: null, text: ' hi there', timestamp: !!python/tuple [0.5, null]}\n")
    assert read_transcription(path, duration=2.0) == ("hi there", [Chunk(0.5, 2.0, "hi there", None)])


def _compacted(tmp_path, vid="Videos/1/Visite_1/1_Question_2_2024-10-02 15-46-17_Video.mp4", n=5, **over):
    folder = tmp_path / "features" / "compacted_48" / vid
    folder.mkdir(parents=True)
    arrays = {"video.npy": np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3),
              "vggish.npy": np.ones((n, 128), np.float32), "bert.npy": np.zeros((n, 768), np.float32),
              "EXPR_continuous_label.npy": np.array([0, 0, 1, 1, -1][:n], np.float64).reshape(n, 1)}
    arrays.update(over)
    for name, arr in arrays.items():
        np.save(folder / name, arr)
    return vid


def test_compacted_reader(tmp_path):
    vid = _compacted(tmp_path)
    feats = CompactedFeatures(tmp_path)
    assert feats.video_ids() == [vid] and len(feats) == 1
    v = feats.load(vid.replace(" ", "_"))  # tolerant id
    assert v.video_id == vid and v.n_frames == 5
    assert isinstance(v.video, np.memmap) and isinstance(v.bert, np.memmap)
    assert v.video.shape == (5, 4, 4, 3) and v.vggish.shape == (5, 128)
    assert v.labels.dtype == np.int8 and v.labels.tolist() == [0, 0, 1, 1, -1]
    assert int(v.video[1, 0, 0, 0]) == 48
    only_audio = feats.load(vid, names=("vggish",))
    assert only_audio.video is None and only_audio.bert is None
    with pytest.raises(KeyError, match="no compacted features"):
        feats.load("nope.mp4")


@pytest.mark.parametrize("over,match", [
    ({"bert.npy": np.zeros((4, 768), np.float32)}, r"disagree on the number of frames: \{'video': 5, 'vggish': 5, 'bert': 4, 'labels': 5\}"),
    ({"vggish.npy": np.zeros((5, 64), np.float32)}, r"vggish\.npy: shape \(5, 64\), expected \(n, 128\)"),
    ({"EXPR_continuous_label.npy": np.array([0, 0.5, 1, 1, 0])}, r"frame 1 holds"),
    ({"video.npy": np.zeros((5, 4, 4, 3), np.float32)}, "expected uint8"),
])
def test_compacted_errors(tmp_path, over, match):
    vid = _compacted(tmp_path, **over)
    with pytest.raises(BahFormatError, match=match):
        CompactedFeatures(tmp_path / "features").load(vid)


def test_inspect_cli(run_module, tree, tmp_path):
    root, expected, _ = tree
    res = run_module("ahjax", "inspect", root, "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"splits": expected["splits"]}
    assert len(res.stdout.strip().splitlines()) == 1
    res = run_module("ahjax", "inspect", root, timeout=60)
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["split", "videos", "participants", "frames", "ah_frames",
                                "missing_videos", "ah_share"]
    assert lines[2].split() == ["train", "6", "3", "1,010", "160", "6", "15.8%"]
    # every listed video lacks its file in the fixture: counted, and named on stderr
    assert "warning: 10 split entries have no video file" in res.stderr
    assert len({len(line) for line in lines}) == 1  # aligned
    make_bah_fixture(tmp_path / "bad", "label_length")
    res = run_module("ahjax", "inspect", tmp_path / "bad", "--json", timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert "split-frames/train.txt:1:" in res.stderr and "61 frame labels here but 60" in res.stderr
    assert "Traceback" not in res.stderr


def test_labels_from_segments():
    assert labels_from_segments([(0, 1), (3, 3)], 5).tolist() == [1, 1, 0, 1, 0]
    with pytest.raises(ValueError, match=r"segment \(3, 2\) is not 0 <= start <= end"):
        labels_from_segments([(3, 2)], 5)
