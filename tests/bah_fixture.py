"""A tiny BAH tree in the real release layout, with every quirk of docs/bah_format.md.

``make_bah_fixture(root)`` writes split lists, split-frames, the annotation YAML (with
``!!python/tuple``), Whisper transcriptions, ``meta_data.yml``; no media (tests that need
video write their own). It returns the counts a correct loader must find. ``hostile``
makes one specific defect and says which error is expected (``expect_error``).

Quirks covered: transcripts with commas; a path with spaces whose annotation key uses
underscores; a ``-DESKTOP-NQ55E0P`` video that split-frames names without the suffix;
Whisper timestamps that reset at 30 s with a last end of None; a missing frame range
(labels -1); a positive video with no positive frame; a video labelled only through
split-frames; a video with segments but no frame list; cues and certainties; participant
keys as ints and strings; an empty split transcript filled from the annotation.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HOSTILE = ("bad_split_line", "bad_label", "escape_path", "absolute_path", "symlink_escape",
           "label_length", "segment_past_end", "broken_yaml", "broken_transcription")

V = "Videos/{p}/Visite_1/{p}_Question_{q}_{t}_Video{s}.mp4"
IDS = {
    "plain": V.format(p=10001, q=1, t="2024-11-19_15-12-23", s=""),
    "space": V.format(p=10001, q=4, t="2024-10-02 15-46-17", s=""),
    "desktop": V.format(p=10002, q=7, t="2024-11-05_14-58-50", s="-DESKTOP-NQ55E0P"),
    "pos_no_frames": V.format(p=10002, q=2, t="2024-11-05_14-50-02", s=""),
    "split_frames_only": V.format(p=10003, q=3, t="2024-11-06_10-00-00", s=""),
    "segments_only": V.format(p=10003, q=5, t="2024-11-06_10-05-00", s=""),
    "val_neg": V.format(p=20001, q=1, t="2024-12-01_09-00-00", s=""),
    "val_pos": V.format(p=20001, q=6, t="2024-12-01_09-10-00", s=""),
    "test_pos": V.format(p=30001, q=7, t="2025-01-10_11-00-00", s=""),
    "test_neg": V.format(p=30002, q=5, t="2025-01-11_11-00-00", s=""),
}

# name -> split, video label, n frames in frame_annotation (None: no list), segments,
# missing frame range (a gap), split transcript.
SPEC = {
    "plain": ("train", 0, 60, [], None,
              "Well, when I wake up I get ready for work, so I shower, eat, and head out."),
    "space": ("train", 1, 840, [(100, 199), (600, 649)], None,
              "I want to quit smoking, but, honestly, I don't know. Maybe next month, I guess."),
    "desktop": ("train", 1, 50, [(10, 19)], (30, 39),
                "I should have gotten my license by now, but I keep putting it off."),
    "pos_no_frames": ("train", 1, 40, [], None, "It's fine, I think, mostly fine."),
    "split_frames_only": ("train", 0, None, [], None, "I was sad, then, later, okay."),
    "segments_only": ("train", 1, None, [(5, 14)], None, "Yes. No. Well, maybe, sort of."),
    "val_neg": ("val", 0, 24, [], None, "Breakfast, coffee, bus."),
    "val_pos": ("val", 1, 48, [(0, 11), (40, 47)], None, "I would, but, you know, I can't."),
    "test_pos": ("test", 1, 36, [(12, 23)], None, "Part of me wants it, part of me doesn't."),
    "test_neg": ("test", 0, 30, [], None, ""),
}
SPLIT_FRAMES_ONLY_N = 30  # frames that only split-frames/train.txt labels
CUES = [{"audio": "voice drops", "body": None, "facial": "frown while smiling",
         "inconsistencies": "says yes, shakes head", "language": "but, I don't know"},
        {"audio": None, "body": "shrug", "facial": None, "inconsistencies": None,
         "language": "maybe"}]
WHISPER_RESET = {  # timestamps reset after 30 s; the last end is None
    "text": " I want to quit smoking, but I don't know. Honestly. Maybe next month, I guess.",
    "chunks": [
        {"language": "english", "text": " I want to quit smoking,", "timestamp": (0.0, 4.2)},
        {"language": "english", "text": " but I don't know.", "timestamp": (4.5, 12.0)},
        {"language": "english", "text": " Honestly.", "timestamp": (13.0, 29.5)},
        {"language": "english", "text": " Maybe next month,", "timestamp": (0.0, 2.5)},
        {"language": "english", "text": " I guess.", "timestamp": (3.0, None)},
    ]}
META_FIELDS = {"Age": 34, "Age range": "30-39", "Birth country": "Canada",
               "Canada province": "Quebec", "Ethnicity": "White", "Ethnicity simplified": "White",
               "Gender": "Female", "Is student": "No", "Use in challenges": "Yes",
               "Use in publications": "Yes"}


def _frame_labels(name: str) -> list[int] | None:
    split, label, n, segs, gap, _ = SPEC[name]
    if n is None:
        return None
    labels = [0] * n
    for a, b in segs:
        labels[a:b + 1] = [1] * (b - a + 1)
    return labels


def _annotation(name: str, key_style: str) -> tuple[str, dict]:
    split, label, n, segs, gap, transcript = SPEC[name]
    vid = IDS[name]
    key = vid
    if name == "space":  # a later tool replaced the spaces of this id with underscores
        key = key.replace(" ", "_")
    if key_style == "old":  # annotation.yml: '<pid>/Visite 1/<name>'
        key = key[len("Videos/"):].replace("Visite_1", "Visite 1")
    entry = {"global_ah": label, "annotator_id": 7,
             "transcript": transcript or "Nothing much, really, just work.",
             "fr_detailed_ah": [tuple(s) for s in segs],
             "time_detailed_ah": [tuple(f"00:00:{a / 24:06.3f}" for a in s) for s in segs],
             "certainty_ah": [3] * len(segs), "all_cues": CUES[:len(segs)]}
    labels = _frame_labels(name)
    if labels is not None:
        entry["frame_annotation"] = [[f"cropped-aligned-faces/{vid}/frame-{i}.jpg", lab]
                                     for i, lab in enumerate(labels)
                                     if not (gap and gap[0] <= i <= gap[1])]
    if name == "space":
        entry["fps"] = 24.0
    return key, entry


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _counts() -> tuple[dict, dict]:
    splits = {s: {"videos": 0, "participants": set(), "frames": 0, "ah_frames": 0, "missing_videos": 0}
              for s in ("train", "val", "test")}
    videos = {}
    for name, (split, label, n, segs, gap, _) in SPEC.items():
        labels = _frame_labels(name)
        if name == "split_frames_only":
            labels = [0] * SPLIT_FRAMES_ONLY_N
        n_lab = 0 if labels is None else len(labels) - (gap[1] - gap[0] + 1 if gap else 0)
        ah = 0 if labels is None else sum(labels)
        pid = IDS[name].split("/")[1]
        q = int(IDS[name].split("_Question_")[1].split("_")[0])
        videos[IDS[name]] = {"name": name, "split": split, "label": label, "participant": pid,
                             "question": q, "n_labels": None if labels is None else len(labels),
                             "frames": n_lab, "ah_frames": ah, "segments": segs}
        c = splits[split]
        c["videos"] += 1
        c["participants"].add(pid)
        c["frames"] += n_lab
        c["ah_frames"] += ah
        c["missing_videos"] += 1   # the fixture writes annotations, never video files
    for c in splits.values():
        c["participants"] = len(c["participants"])
    return splits, videos


def make_bah_fixture(root: Path, hostile: str | None = None, *, old_annotation: bool = False) -> dict:
    """Write the fixture tree under ``root``; return what a loader must find there.

    ``hostile`` is None or one of :data:`HOSTILE`; ``old_annotation`` writes the older
    ``annotation.yml`` keyed ``'<pid>/Visite 1/<name>'`` instead of
    ``video_annotation_transcript.yaml``. Returns ``{"root", "ids" (quirk name -> video id),
    "splits" ({split: {videos, participants, frames, ah_frames, missing_videos}}, as ``inspect --json``
    prints), "videos" ({video_id: expected fields}), "expect_error" (None, or {"file":
    path relative to root, "line": int|None, "match": text in the message})}``.
    """
    if hostile is not None and hostile not in HOSTILE:
        raise ValueError(f"unknown hostile variant {hostile!r}; choose from {HOSTILE}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expect = None

    lines = {s: [] for s in ("train", "val", "test")}
    for name, (split, label, *_rest, transcript) in SPEC.items():
        lines[split].append(f"{IDS[name]},{label},{transcript}")
    if hostile == "bad_split_line":
        lines["train"][2] = f"{IDS['desktop']},1"
        expect = {"file": "split/train.txt", "line": 3, "match": "two commas"}
    elif hostile == "bad_label":
        lines["train"][1] = f"{IDS['space']},yes,I want to, but"
        expect = {"file": "split/train.txt", "line": 2, "match": "label must be 0 or 1, got 'yes'"}
    elif hostile == "escape_path":
        lines["val"].append("Videos/../../outside/99999_Question_1_Video.mp4,0,hello, there")
        expect = {"file": "split/val.txt", "line": 3, "match": "escapes the dataset root"}
    elif hostile == "absolute_path":
        lines["test"].insert(0, "/etc/99999_Question_1_Video.mp4,0,hello")
        expect = {"file": "split/test.txt", "line": 1, "match": "escapes the dataset root"}
    elif hostile == "symlink_escape":
        outside = root.parent / f"{root.name}-outside.mp4"
        outside.write_bytes(b"not a video")
        link = root / IDS["plain"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside)
        expect = {"file": "split/train.txt", "line": 1, "match": "escapes the dataset root"}
    for split, rows in lines.items():
        _write(root / "split" / f"{split}.txt", "\n".join(rows) + "\n")

    # split-frames: train and val only (the file is optional); the DESKTOP video is named
    # without its suffix here, the split-frames-only video has no frame list elsewhere.
    sf = {"train": [], "val": []}
    for name in ("plain", "space", "desktop", "pos_no_frames", "split_frames_only", "val_neg", "val_pos"):
        split, _, _, _, gap, _ = SPEC[name]
        labels = _frame_labels(name) or [0] * SPLIT_FRAMES_ONLY_N
        if hostile == "label_length" and name == "plain":
            labels = labels + [0]
            expect = {"file": "split-frames/train.txt", "line": 1, "match": "61 frame labels here but 60"}
        vid = IDS[name].replace("-DESKTOP-NQ55E0P", "")
        sf[split] += [f"{vid}/frame-{i}.jpg,{lab}" for i, lab in enumerate(labels)
                      if not (gap and gap[0] <= i <= gap[1])]
    for split, rows in sf.items():
        _write(root / "split-frames" / f"{split}.txt", "\n".join(rows) + "\n")

    style = "old" if old_annotation else "new"
    ann = dict(_annotation(name, style) for name in SPEC)
    if hostile == "segment_past_end":
        key = _annotation("val_pos", style)[0]
        ann[key]["fr_detailed_ah"] = [(0, 11), (40, 48)]
    ann_name = "annotation.yml" if old_annotation else "video_annotation_transcript.yaml"
    text = yaml.dump(ann, Dumper=yaml.Dumper, allow_unicode=True, sort_keys=True, width=1000)
    if hostile == "segment_past_end":
        line = 1 + text.splitlines().index(f"{key}:") if f"{key}:" in text.splitlines() else None
        expect = {"file": ann_name, "line": line, "match": "ends past the last labelled frame"}
    if hostile == "broken_yaml":
        rows = text.splitlines()
        rows.insert(3, "  frame_annotation: [[unclosed, 0]")
        text = "\n".join(rows) + "\n"
        # The line of the unclosed bracket (libyaml notices it on the next line).
        expect = {"file": ann_name, "line": 4, "match": "malformed YAML"}
    _write(root / ann_name, text)

    whisper = {
        "plain": {"text": " Well, when I wake up I get ready for work.",
                  "chunks": [{"language": "english", "text": " Well, when I wake up", "timestamp": (0.0, 1.4)},
                             {"language": "english", "text": " I get ready for work.", "timestamp": (1.4, 2.5)}]},
        "space": WHISPER_RESET,
        "desktop": {"text": " I should have gotten my license by now.",
                    "chunks": [{"language": "english", "text": " I should have gotten my license by now.",
                                "timestamp": (0.0, None)}]},
        "val_pos": {"text": " I would, but, you know, I can't.",
                    "chunks": [{"language": None, "text": " I would, but, you know, I can't.",
                                "timestamp": (0.2, 1.9)}]},
    }
    for name, data in whisper.items():
        folder = root / "transcription" / IDS[name]
        body = yaml.dump(data, Dumper=yaml.Dumper, allow_unicode=True, sort_keys=False)
        if hostile == "broken_transcription" and name == "plain":
            body = body.replace("chunks:", "chunks: [", 1)
            expect = {"file": f"transcription/{IDS[name]}/{Path(IDS[name]).stem}.yml",
                      "line": 3, "match": "malformed YAML"}
        _write(folder / f"{Path(IDS[name]).stem}.yml", body)

    meta = {10001: dict(META_FIELDS), "10002": dict(META_FIELDS, Age=51, Gender="Male"),
            10003: dict(META_FIELDS, Age=22), 20001: dict(META_FIELDS), 30001: dict(META_FIELDS)}
    _write(root / "meta_data.yml", yaml.safe_dump(meta, sort_keys=False))

    splits, videos = _counts()
    return {"root": str(root), "ids": dict(IDS), "splits": splits, "videos": videos,
            "expect_error": expect}
