"""The embedded default dataset: a small, synthetic BAH tree with known ground truth.

``make_demo(out, seed)`` writes, deterministically for a seed, a tree in the real BAH
layout: videos of a real photographed face (``face_anim``) speaking synthesised sentences
(``speech``), with A/H segments injected as cross-modal conflicts and within-modality
flips, and ``ground_truth.json`` recording each. What a video holds: docs/bah_format.md,
"The demo dataset".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm
import yaml

from ahjax.core.data import face_anim
from ahjax.core.data.speech import synthesize
from ahjax.core.config import debug_requested

__all__ = ["DEMO_VERSION", "make_demo", "ensure_demo", "default_cache_dir", "QUESTIONS", "AH_KINDS"]

#: Bump when the generated content changes, so cached copies are regenerated.
DEMO_VERSION = 1
FPS = 24
SAMPLE_RATE = 22050  # espeak-ng's native rate; AAC carries it as is

#: BAH's seven question types (as one team mapped them) with the v1 train-split share of
#: A/H videos per question, used as the chance that a demo video holds A/H.
QUESTIONS = {
    1: ("neutral", "Describe a typical morning routine.", 0.22),
    2: ("positive", "Tell us about a healthy habit you enjoy.", 0.62),
    3: ("negative", "Tell us about a habit you dislike about yourself.", 0.58),
    4: ("ambivalent", "Is there a behaviour you feel torn about changing?", 0.95),
    5: ("willing", "What change are you ready to make for your health?", 0.50),
    6: ("resistant", "What change would you refuse to make, and why?", 0.40),
    7: ("hesitant", "Is there a change you keep putting off?", 0.88),
}
# Mix of consistent segment moods per question type: (positive, negative, neutral).
_MOOD_MIX = {1: (0.15, 0.1, 0.75), 2: (0.7, 0.05, 0.25), 3: (0.05, 0.7, 0.25),
             4: (0.4, 0.35, 0.25), 5: (0.65, 0.1, 0.25), 6: (0.1, 0.65, 0.25),
             7: (0.2, 0.4, 0.4)}

#: Injected A/H kinds and the annotator cues each one shows.
AH_KINDS = ("text_face", "text_voice", "face_voice", "flip_text", "flip_face", "flip_voice")

TOPICS = {
    "exercise": dict(goal="exercise more often", act="going for a run", habit="walk to work",
                     good="running clears my head", bad="I am always too tired after work"),
    "smoking": dict(goal="quit smoking", act="being smoke free", habit="smoke after lunch",
                    good="I can breathe so much better now", bad="cigarettes help me with stress"),
    "diet": dict(goal="eat more vegetables", act="cooking fresh meals", habit="eat lunch at my desk",
                 good="healthy food gives me energy", bad="salads never fill me up"),
    "sleep": dict(goal="go to bed earlier", act="sleeping eight hours", habit="go to bed around midnight",
                  good="a full night of sleep makes my day", bad="the evening is my only free time"),
    "alcohol": dict(goal="drink less alcohol", act="skipping the wine at dinner", habit="have a drink on Fridays",
                    good="my mornings are so much brighter", bad="a drink is how I relax with friends"),
    "screens": dict(goal="spend less time on my phone", act="reading a book at night",
                    habit="check my phone in bed", good="I feel calmer without my phone",
                    bad="my phone is how I keep up with everyone"),
}
_POS = ["I really love {act}, it makes me feel great.", "Honestly, {good}, and I am proud of it.",
        "I am excited to {goal} this year.", "I feel confident that I can {goal}.",
        "It is wonderful, {good}."]
_NEG = ["I hate {act}, it is exhausting.", "The truth is, {bad}, and that makes me miserable.",
        "I do not want to {goal}, it feels pointless.", "I feel awful whenever I think about it.",
        "It is terrible, {bad}."]
_NEU = ["I usually {habit} during the week.", "My doctor talked to me about it last month.",
        "Most days I {habit}.", "It depends on the week, really.", "I have been thinking about {act}."]
_FLIP = ["I want to {goal}, but {bad}.", "I know {act} is good for me, but I do not enjoy it.",
         "Part of me wants to {goal}, but part of me does not.",
         "I should {goal}, but I am not sure I can.", "Sure, {good}, but it is hard to keep going."]
_HEDGES = ["Um, ", "Well, I guess ", "I don't know, maybe ", "Hmm, "]

_CUES = {
    "text_face": dict(facial="facial expression contradicts the words", language="words of one polarity",
                      inconsistencies="words and face disagree"),
    "text_voice": dict(audio="prosody contradicts the words", language="words of one polarity",
                       inconsistencies="words and voice disagree"),
    "face_voice": dict(audio="prosody contradicts the face", facial="facial expression contradicts the voice",
                       inconsistencies="face and voice disagree"),
    "flip_text": dict(language="change talk followed by sustain talk ('but')",
                      inconsistencies="contradiction within the words"),
    "flip_face": dict(facial="smile drops to a frown", inconsistencies="change within the face"),
    "flip_voice": dict(audio="lively voice turns flat", inconsistencies="change within the voice"),
}


@dataclass(frozen=True)
class Voice:
    """A participant's voice: espeak voice name, base pitch, speaking rate, pitch range."""

    name: str
    pitch: int
    rate: int
    range: int


@dataclass
class Segment:
    """One scheduled stretch of a video (frames [start, end) exclusive here)."""

    kind: str            # positive | negative | neutral | one of AH_KINDS
    text: str
    face: str            # smile | frown | neutral | smile_to_frown
    prosody: str         # lively | low | normal | flat | lively_to_flat
    polarity: str        # words: positive | negative | neutral | flip
    start: int = 0
    end: int = 0
    speech_start: float = 0.0
    speech_end: float = 0.0

    @property
    def is_ah(self) -> bool:
        return self.kind in AH_KINDS


# --------------------------------------------------------------------------- participants

def _participant(rng: np.random.Generator, pid: str) -> dict:
    identity = face_anim.make_identity(rng)
    voice = Voice(name=str(rng.choice(["en+f2", "en+f3", "en+f4", "en-us+f5", "en+f1"])),
                  pitch=int(rng.integers(35, 75)), rate=int(rng.integers(145, 195)),
                  range=int(rng.integers(40, 70)))
    age = int(rng.integers(19, 66))
    meta = {
        "Age": age,
        "Age range": f"{(age // 10) * 10}-{(age // 10) * 10 + 9}",
        "Birth country": str(rng.choice(["Canada", "France", "Morocco", "India", "Brazil", "China"])),
        "Canada province": str(rng.choice(["Quebec", "Ontario", "British Columbia", "Alberta"])),
        "Ethnicity": "synthetic (demo)",
        "Ethnicity simplified": "synthetic",
        "Gender": "Female",  # every demo participant is the one photographed face
        "Is student": bool(age < 27),
        "Use in challenges": True,
        "Use in publications": False,
    }
    return dict(pid=pid, identity=identity, voice=voice, meta=meta,
                topics=list(rng.permutation(sorted(TOPICS))))


def _split_participants(pids: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Train/val/test by participant (about 5/1/2 of 8); no participant in two splits."""
    order = [pids[i] for i in rng.permutation(len(pids))]
    n = len(order)
    n_test = max(1, int(round(n * 0.25))) if n >= 2 else 0
    n_val = int(round(n * 0.125)) if n >= 3 else 0
    if n >= 3:
        n_val = max(n_val, 1)
    n_train = n - n_test - n_val
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
            "test": sorted(order[n_train + n_val:])}


# --------------------------------------------------------------------------- content plan

def _fill(template: str, topic: dict) -> str:
    text = template.format(**topic)
    return text[0].upper() + text[1:]


def _consistent(kind: str, topic: dict, rng: np.random.Generator) -> Segment:
    bank, face, prosody = {"positive": (_POS, "smile", "lively"), "negative": (_NEG, "frown", "low"),
                           "neutral": (_NEU, "neutral", "normal")}[kind]
    return Segment(kind, _fill(str(rng.choice(bank)), topic), face, prosody, kind)


def _ah(kind: str, topic: dict, rng: np.random.Generator, hedge: bool) -> Segment:
    pos = bool(rng.integers(2))
    if kind == "text_face":
        seg = Segment(kind, _fill(str(rng.choice(_POS if pos else _NEG)), topic),
                      "frown" if pos else "smile", "normal", "positive" if pos else "negative")
    elif kind == "text_voice":
        seg = Segment(kind, _fill(str(rng.choice(_POS if pos else _NEG)), topic),
                      "neutral", "flat" if pos else "lively", "positive" if pos else "negative")
    elif kind == "face_voice":
        seg = Segment(kind, _fill(str(rng.choice(_NEU)), topic),
                      "smile" if pos else "frown", "flat" if pos else "lively", "neutral")
    elif kind == "flip_text":
        seg = Segment(kind, _fill(str(rng.choice(_FLIP)), topic), "neutral", "normal", "flip")
    elif kind == "flip_face":
        seg = Segment(kind, _fill(str(rng.choice(_NEU)), topic), "smile_to_frown", "normal", "neutral")
    elif kind == "flip_voice":
        seg = Segment(kind, _fill(str(rng.choice(_NEU)), topic), "neutral", "lively_to_flat", "neutral")
    else:
        raise ValueError(f"unknown A/H kind {kind!r}")
    if hedge:
        # Hesitant speakers hedge; the hedge belongs to the A/H segment's words.
        first = seg.text.split(" ", 1)[0]
        lowered = seg.text if first in ("I", "I'm") else seg.text[0].lower() + seg.text[1:]
        seg.text = str(rng.choice(_HEDGES)) + lowered
    return seg


_PROSODY = {  # (pitch offset, rate factor, range factor)
    "lively": (8, 1.1, 1.6), "low": (-12, 0.82, 0.55), "normal": (0, 1.0, 1.0), "flat": (-4, 0.78, 0.0),
}


def _speak(seg: Segment, voice: Voice):
    """Samples and word timings of a segment's sentence in its prosody."""
    def one(text, style):
        dp, fr, frange = _PROSODY[style]
        return synthesize(text, rate_wpm=int(voice.rate * fr), pitch=int(np.clip(voice.pitch + dp, 0, 100)),
                          voice=voice.name, pitch_range=int(np.clip(voice.range * frange, 0, 100)),
                          deterministic=True)
    if seg.prosody != "lively_to_flat":
        sp = one(seg.text, seg.prosody)
        return sp.samples, [(w.word, w.start, w.end) for w in sp.words]
    # A prosody flip mid-utterance: speak each half in its own style, joined seamlessly.
    words = seg.text.split()
    cut = max(1, len(words) // 2)
    a, b = one(" ".join(words[:cut]), "lively"), one(" ".join(words[cut:]), "flat")
    off = len(a.samples) / SAMPLE_RATE
    timing = [(w.word, w.start, w.end) for w in a.words] + [(w.word, w.start + off, w.end + off) for w in b.words]
    return np.concatenate([a.samples, b.samples]), timing


def _ah_duration(rng: np.random.Generator) -> int:
    # Gamma with mean 100 frames (shape 4) clipped to 40..200: BAH's mean is 103 frames.
    return int(np.clip(round(rng.gamma(4.0, 25.0)), 40, 200))


def _plan_video(part: dict, q: int, rng: np.random.Generator, min_s: float, max_s: float):
    """Schedule the segments of one video and synthesise its audio.

    Returns (segments, audio float32, word timings, n_frames). Sentences are laid end to
    end with pauses; an A/H segment's window has the drawn duration (a hesitation pause fills
    it when the sentence is shorter) and starts a little before its words, as a face often
    leads the voice."""
    name, _prompt, p_ah = QUESTIONS[q]
    target = rng.uniform(min_s, max_s)
    topic = TOPICS[part["topics"][q % len(part["topics"])]]
    has_ah = rng.random() < p_ah
    n_ah = (1 + int(q in (4, 7) and target > 15 and rng.random() < 0.35)) if has_ah else 0
    mix = np.asarray(_MOOD_MIX[q])
    voice: Voice = part["voice"]
    hedge = q == 7

    # Plan more consistent sentences than can fit, then trim to the time budget.
    n_cons = int(target / 2.0) + 2
    kinds = [str(rng.choice(["positive", "negative", "neutral"], p=mix)) for _ in range(n_cons)]
    slots = sorted(rng.choice(np.arange(1, n_cons + 1), size=n_ah, replace=False).tolist()) if n_ah else []
    plan: list[tuple[Segment, int | None]] = [(_consistent(k, topic, rng), None) for k in kinds]
    for j, s in enumerate(slots):
        kind = str(rng.choice(AH_KINDS))
        plan.insert(s + j, (_ah(kind, topic, rng, hedge), _ah_duration(rng)))

    pieces, words, segs = [], [], []
    t = float(rng.uniform(0.4, 0.9))  # seconds of silence before the first word
    pieces.append(np.zeros(int(round(t * SAMPLE_RATE)), np.float32))
    ah_left = sum(1 for _, d in plan if d is not None)
    for seg, dur in plan:
        audio, timing = _speak(seg, voice)
        sp_len = len(audio) / SAMPLE_RATE
        gap = float(rng.uniform(0.3, 0.7))
        lead = float(rng.uniform(0.15, 0.4)) if dur is not None else 0.0
        total = lead + sp_len + gap
        if dur is not None:
            total = max(total, dur / FPS)
        # Keep room for A/H segments still to come; never exceed max_s.
        reserve = 0.0 if dur is not None else 5.0 * ah_left
        if dur is None and t + total + reserve > max_s:
            continue
        if dur is not None and t + total > max_s:
            total = max_s - t  # very rare: the window is cut by the end of the video
            if total < lead + sp_len + 0.1:
                ah_left -= 1
                continue
        pieces.append(np.zeros(int(round(lead * SAMPLE_RATE)), np.float32))
        pieces.append(audio.astype(np.float32))
        seg.start = int(round(t * FPS))
        seg.speech_start, seg.speech_end = t + lead, t + lead + sp_len
        words += [(w, seg.speech_start + a, seg.speech_start + b) for w, a, b in timing]
        t_end = t + total
        pieces.append(np.zeros(int(round(t_end * SAMPLE_RATE)) - sum(len(p) for p in pieces), np.float32))
        seg.end = int(round(t_end * FPS))
        if dur is not None:
            seg.end = min(seg.start + max(dur, seg.end - seg.start), int(max_s * FPS))
            ah_left -= 1
        segs.append(seg)
        t = seg.end / FPS
        if ah_left == 0 and t >= target:
            break
    # Tail silence, at least up to the minimum length.
    t_final = max(t + float(rng.uniform(0.4, 0.8)), min_s)
    n_frames = int(round(min(t_final, max_s) * FPS))
    n_samples = int(round(n_frames / FPS * SAMPLE_RATE))
    audio = np.concatenate(pieces)
    audio = np.pad(audio, (0, max(0, n_samples - len(audio))))[:n_samples]
    return segs, audio, words, n_frames


def _expression_track(segs: list[Segment], audio: np.ndarray, n: int, part: dict,
                      rng: np.random.Generator) -> np.ndarray:
    """(n, len(CHANNELS)) intensities: the face state of each segment, smoothed, plus
    talking (jaw follows the speech envelope) and blinks."""
    ch = {c: i for i, c in enumerate(face_anim.CHANNELS)}
    track = np.zeros((n, len(face_anim.CHANNELS)), np.float32)
    base = np.zeros((n, 3), np.float32)  # smile, frown, surprise targets
    for seg in segs:
        a, b = seg.start, min(seg.end, n)
        lvl = float(rng.uniform(0.75, 1.0))
        if seg.face == "smile":
            base[a:b, 0] = lvl
        elif seg.face == "frown":
            base[a:b, 1] = lvl
        elif seg.face == "smile_to_frown":
            mid = (a + b) // 2
            base[a:mid, 0] = lvl
            base[mid:b, 1] = lvl
        if seg.polarity == "positive" and seg.face == "smile" and rng.random() < 0.3:
            base[a:a + (b - a) // 3, 2] = 0.5  # an occasional lively brow flash
    # Smooth transitions (about 0.25 s), as muscles do not switch instantly.
    k = np.hanning(13)
    k /= k.sum()
    for j in range(3):
        track[:, j] = np.convolve(np.pad(base[:, j], 6, mode="edge"), k, mode="valid")
    # Jaw from the speech envelope at frame rate, with a little syllable jitter.
    hop = SAMPLE_RATE / FPS
    idx = (np.arange(n) * hop).astype(int)
    env = np.array([np.sqrt(np.mean(audio[i:i + int(hop)] ** 2)) if i < len(audio) else 0.0 for i in idx])
    env = env / (env.max() + 1e-9)
    track[:, ch["jaw"]] = np.clip(env * 1.4, 0, 1) * 0.8
    # Blinks every 2..6 s, three frames each.
    t = int(rng.integers(10, 60))
    while t < n - 3:
        track[t:t + 3, ch["blink"]] = [0.6, 1.0, 0.5]
        t += int(rng.integers(48, 144))
    return track


# --------------------------------------------------------------------------- writing

def _write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    """H.264 (yuv420p) video at 24 fps with mono AAC audio, via PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        # One thread and fixed options keep the encoded bytes reproducible.
        vs.options = {"crf": "23", "preset": "veryfast", "threads": "1"}
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for f in frames:
            for pkt in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        block = 1024
        pcm = np.clip(audio, -1, 1).astype(np.float32)
        for i in range(0, len(pcm), block):
            af = av.AudioFrame.from_ndarray(pcm[None, i:i + block].copy(), format="fltp", layout="mono")
            af.sample_rate = SAMPLE_RATE
            af.pts = i
            for pkt in aus.encode(af):
                out.mux(pkt)
        for pkt in aus.encode():
            out.mux(pkt)


class _TupleDumper(yaml.SafeDumper):
    """Safe dumper that writes tuples with BAH's ``!!python/tuple`` tag."""


_TupleDumper.add_representer(
    tuple, lambda d, v: d.represent_sequence("tag:yaml.org,2002:python/tuple", v, flow_style=True))


def _dump_yaml(data, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(data, f, Dumper=_TupleDumper, sort_keys=False, allow_unicode=True, width=1000)


def _hms(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _whisper(segs: list[Segment]) -> dict:
    """Whisper pipeline output: one chunk per sentence, timestamps that restart every
    30 s window (as Whisper's long-form chunking does) and a last end of None."""
    chunks = []
    for i, seg in enumerate(segs):
        window = 30.0 * int(seg.speech_start // 30.0)
        start = round(seg.speech_start - window, 2)
        end = None if i == len(segs) - 1 else round(seg.speech_end - window, 2)
        chunks.append({"language": "english", "text": " " + seg.text, "timestamp": (start, end)})
    return {"text": "".join(c["text"] for c in chunks), "chunks": chunks}


def _video_job(job: dict) -> dict:
    """Make one video (plan, speech, frames, mp4); return its annotation facts."""
    rng = np.random.default_rng(job["seed_seq"])
    part, q = job["part"], job["question"]
    segs, audio, words, n = _plan_video(part, q, rng, job["min_s"], job["max_s"])
    track = _expression_track(segs, audio, n, part, rng)
    animator = face_anim.FaceAnimator(part["identity"], job["size"])
    frames = animator.render(track, face_anim.head_motion(n, rng, part["identity"].motion))
    _write_mp4(Path(job["path"]), frames, audio)
    return dict(video_id=job["video_id"], n_frames=n, segments=segs, words=words,
                duration=n / FPS)


def make_demo(out: str | os.PathLike, seed: int = 0, participants: int = 8, questions: int | Sequence[int] = 7,
              *, min_duration: float = 8.0, max_duration: float = 20.0, size: int = 256,
              workers: int | None = None, progress: bool = False) -> Path:
    """Generate the demo BAH tree into ``out`` (created; must be empty or absent); returns its path.

    ``questions``: a count (the first of 1..7) or question numbers; 24 fps videos of
    ``min_duration``..``max_duration`` s of ``size`` square frames, ``workers`` processes
    (default up to 2). The same arguments give the same annotation files byte for byte.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    if participants < 1:
        raise ValueError("participants must be >= 1")
    qs = list(range(1, int(questions) + 1)) if isinstance(questions, int) else [int(q) for q in questions]
    if not qs or any(q not in QUESTIONS for q in qs):
        raise ValueError(f"questions must be a count 1..7 or numbers in 1..7, got {questions!r}")
    if not 2.0 <= min_duration <= max_duration:
        raise ValueError("need 2 <= min_duration <= max_duration")
    out.mkdir(parents=True, exist_ok=True)
    root_ss = np.random.SeedSequence([DEMO_VERSION, int(seed)])
    rng = np.random.default_rng(root_ss.spawn(1)[0])
    pids = sorted({str(x) for x in rng.choice(np.arange(10000, 99999), size=participants, replace=False)})
    parts = {pid: _participant(rng, pid) for pid in pids}
    splits = _split_participants(pids, rng)
    day0 = _dt.datetime(2024, 9, 2, 9, 0, 0)

    jobs = []
    seqs = root_ss.spawn(1 + len(pids) * len(qs))[1:]
    for i, pid in enumerate(pids):
        when = day0 + _dt.timedelta(days=int(rng.integers(0, 200)), minutes=int(rng.integers(0, 600)))
        for j, q in enumerate(qs):
            when += _dt.timedelta(seconds=int(rng.integers(40, 140)))
            name = f"{pid}_Question_{q}_{when:%Y-%m-%d_%H-%M-%S}_Video.mp4"
            vid = f"Videos/{pid}/Visite_1/{name}"
            jobs.append(dict(seed_seq=seqs[i * len(qs) + j], part=parts[pid], question=q, video_id=vid,
                             path=str(out / vid), min_s=min_duration, max_s=max_duration, size=size))
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(jobs), desc="making the demo dataset", unit="video",
               disable=not progress, leave=False)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        # spawn, not fork: forking a process whose JAX runtime already runs threads can
        # deadlock (Python warns of it); the children import what they need afresh.
        with mp.get_context("spawn").Pool(workers) as pool:
            results = []
            for res in pool.imap(_video_job, jobs, chunksize=1):   # in order, as they finish
                results.append(res)
                bar.update(1)
    else:
        results = []
        for job in jobs:
            results.append(_video_job(job))
            bar.update(1)
    bar.close()
    _write_annotations(out, results, parts, splits, seed)
    return out


def _write_annotations(out: Path, results: list[dict], parts: dict, splits: dict, seed: int) -> None:
    split_of = {pid: s for s, ps in splits.items() for pid in ps}
    ann, gt = {}, {}
    split_lines = {s: [] for s in splits}
    frame_lines = {s: [] for s in splits}
    csv = ["video_id,class"]
    for r in results:
        vid, n, segs = r["video_id"], r["n_frames"], r["segments"]
        pid = vid.split("/")[1]
        ah = [s for s in segs if s.is_ah]
        labels = np.zeros(n, np.int8)
        fr = []
        for s in ah:
            e = min(s.end, n) - 1  # inclusive end, as BAH stores it
            labels[s.start:e + 1] = 1
            fr.append([int(s.start), int(e)])
        whisper = _whisper(segs)
        transcript = whisper["text"].strip()
        stem = Path(vid).stem
        _dump_yaml(whisper, out / "transcription" / vid / f"{stem}.yml")
        frame_ids = [f"{vid}/frame-{i}.jpg" for i in range(n)]
        g = int(bool(ah))
        ann[vid] = {
            "global_ah": g,
            "frame_annotation": [[fid, int(lab)] for fid, lab in zip(frame_ids, labels)],
            "fr_detailed_ah": fr,
            "time_detailed_ah": [[_hms(a / FPS), _hms((b + 1) / FPS)] for a, b in fr],
            "certainty_ah": [3 if s.kind.startswith("flip") else 4 for s in ah],
            "all_cues": [dict(audio=_CUES[s.kind].get("audio"), body=None, facial=_CUES[s.kind].get("facial"),
                              inconsistencies=_CUES[s.kind].get("inconsistencies"),
                              language=_CUES[s.kind].get("language")) for s in ah],
            "annotator_id": f"demo-{(int(pid) % 3) + 1}",
            "transcript": transcript,
        }
        gt[vid] = {
            "participant": pid, "question": int(Path(vid).name.split("_Question_")[1].split("_")[0]),
            "split": split_of[pid], "n_frames": n, "fps": FPS, "duration_s": round(r["duration"], 3),
            "segments": [dict(kind=s.kind, ah=s.is_ah, start=s.start, end=min(s.end, n) - 1, face=s.face,
                              prosody=s.prosody, words_polarity=s.polarity, text=s.text,
                              speech=[round(s.speech_start, 3), round(s.speech_end, 3)]) for s in segs],
            "words": [[w, round(a, 3), round(b, 3)] for w, a, b in r["words"]],
        }
        split_lines[split_of[pid]].append(f"{vid},{g},{transcript}")
        frame_lines[split_of[pid]].extend(f"{fid},{int(lab)}" for fid, lab in zip(frame_ids, labels))
        csv.append(f"{vid},{g}")
    for s in splits:
        for folder, lines in (("split", split_lines[s]), ("split-frames", frame_lines[s])):
            p = out / folder / f"{s}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    _dump_yaml(ann, out / "video_annotation_transcript.yaml")
    _dump_yaml({pid: parts[pid]["meta"] for pid in sorted(parts)}, out / "meta_data.yml")
    (out / "bah-video.csv").write_text("\n".join(csv) + "\n", encoding="utf-8")
    (out / "ground_truth.json").write_text(json.dumps(
        {"version": DEMO_VERSION, "seed": seed, "fps": FPS, "splits": splits,
         "participants": {pid: {"voice": asdict(parts[pid]["voice"]),
                                "identity": {k: v for k, v in asdict(parts[pid]["identity"]).items() if k != "extra"}}
                          for pid in sorted(parts)},
         "videos": gt}, indent=1), encoding="utf-8")
    (out / "README.txt").write_text(
        "ahjax demo dataset (synthetic). Not BAH data: one public-domain photograph (skimage's\n"
        "astronaut) animated by warps and espeak-ng speech, laid out like BAH. A/H segments are\n"
        "injected; ground_truth.json says which kind each is. Made by ahjax.core.data.demo.\n", encoding="utf-8")


# --------------------------------------------------------------------------- cache

def default_cache_dir(seed: int = 0) -> Path:
    """``$AHJAX_CACHE/demo-<version>-<seed>`` or ``~/.cache/ahjax/demo-<version>-<seed>``."""
    base = Path(os.environ.get("AHJAX_CACHE") or Path.home() / ".cache" / "ahjax")
    return base / f"demo-{DEMO_VERSION}-{seed}"


def ensure_demo(cache_dir: str | os.PathLike | None = None, seed: int = 0, **kwargs) -> Path:
    """The demo tree at ``cache_dir`` (default :func:`default_cache_dir`), generated once.

    Generation goes to a temporary sibling folder that is renamed into place when complete,
    so an interrupted run never leaves a tree that looks finished. Extra ``kwargs`` go to
    :func:`make_demo`."""
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir(seed)
    if (target / "ground_truth.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        make_demo(tmp, seed=seed, **kwargs)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (target exists and is not empty): use theirs.
            if not (target / "ground_truth.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m ahjax demo --out DIR [--seed S] ...``; bad input is
    one line on stderr and exit status 2 (``--debug`` or ``AHJAX_DEBUG=1``: the traceback)."""
    ap = argparse.ArgumentParser(prog="python -m ahjax demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (absent or empty)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--participants", type=int, default=8)
    ap.add_argument("--questions", type=int, default=7)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        if args.participants < 1 or not 1 <= args.questions <= len(QUESTIONS):
            raise ValueError(f"--participants must be >= 1 and --questions in 1..{len(QUESTIONS)}, "
                             f"got {args.participants} and {args.questions}")
        path = make_demo(args.out, seed=args.seed, participants=args.participants,
                         questions=args.questions, workers=args.workers)
    except (OSError, ValueError) as err:
        if debug_requested(args.debug):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    gt = json.loads((path / "ground_truth.json").read_text())["videos"]
    n = sum(v["n_frames"] for v in gt.values())
    pos = sum(s["end"] - s["start"] + 1 for v in gt.values() for s in v["segments"] if s["ah"])
    print(f"wrote {path}: {len(gt)} videos, {n} frames ({n / FPS / 60:.1f} min), "
          f"A/H frames {pos / max(n, 1):.1%}, in {time.time() - t0:.0f} s")
    return 0
