"""Zero-shot inference at video and frame level, as the BAH paper's Table 7 does it.

Video level: one answer per video from 8 uniform frames and the whole transcript. Frame
level: one answer per 8-frame segment from its frames and words, copied to its frames;
identical prompts are answered once (:class:`AnswerCache`). Decisions give AVGF1, WAR and
F1, probabilities give AP. More: docs/paper_setups.md, "Zero-shot inference".
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ahjax.core import metrics as metrics_lib
from baselines.llm import parse as parse_lib
from baselines.llm import prompts as prompts_lib
from baselines.llm.answer import Answer, positive_probability
from level1_affect.media import read_video_frames

CLIP_FRAMES = 8


def uniform_indices(n_frames: int, k: int = CLIP_FRAMES) -> np.ndarray:
    """``k`` frame indices spread over ``n_frames`` as the reference samples them:
    ``numpy.linspace(0, n_frames - 1, k)`` truncated to integers (first and last frame
    included; a video shorter than ``k`` frames repeats some)."""
    if n_frames < 1:
        raise ValueError(f"cannot sample frames from a video of {n_frames} frames")
    return np.linspace(0, n_frames - 1, k).astype(int)


def segments(n_frames: int, size: int = CLIP_FRAMES, stride: int | None = None) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` windows of ``size`` frames every ``stride`` (default
    ``size``) that together cover frames ``0..n_frames-1``; the last may be shorter."""
    stride = stride or size
    if n_frames < 1 or size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need n_frames >= 1 and 1 <= stride <= size; got {n_frames}, {size}, {stride}")
    out = []
    for start in range(0, n_frames, stride):
        out.append((start, min(start + size, n_frames)))
        if start + size >= n_frames:
            break
    return out


def spread(n_frames: int, segs: Sequence[tuple[int, int]], values: Sequence[float]) -> np.ndarray:
    """(n_frames,) per-frame mean of the values of the segments covering each frame."""
    total = np.zeros(n_frames)
    count = np.zeros(n_frames)
    for (a, b), v in zip(segs, values):
        total[a:b] += v
        count[a:b] += 1
    if np.any(count == 0):
        raise ValueError("the segments leave some frames uncovered")
    return total / count


def words_in(words: Sequence[Mapping], t0: float, t1: float) -> str:
    """The words (``{"word", "start", "end"}``) whose span overlaps ``[t0, t1)``, joined."""
    return " ".join(w["word"] for w in words if w["start"] < t1 and w["end"] > t0)


@dataclasses.dataclass
class VideoItem:
    """What inference needs of one video (frames are read from ``video_path`` only when the
    backend takes them; ``arrays`` are level-1 tracks for the evidence prompt)."""

    video_id: str
    n_frames: int
    fps: float
    transcript: str
    words: list
    labels: np.ndarray          # (n_frames,) int, -1 unlabelled
    video_label: int
    video_path: str | None = None
    arrays: dict | None = None


class AnswerCache:
    """Answers of a text-only backend by prompt, with call and hit counts."""

    def __init__(self):
        self.answers: dict[str, Answer] = {}
        self.calls = 0
        self.hits = 0

    def ask(self, backend, prompt: str, images=None) -> Answer:
        """``backend.generate(prompt, images)``, reusing the answer to an identical text prompt."""
        if images is not None:
            self.calls += 1
            return backend.generate(prompt, images=images)
        if prompt in self.answers:
            self.hits += 1
            return self.answers[prompt]
        self.calls += 1
        self.answers[prompt] = answer = backend.generate(prompt)
        return answer


def _read_frames(path: str, wanted: Iterable[int]) -> dict[int, np.ndarray]:
    """The frames of ``path`` at the ``wanted`` indices (decoded in one pass)."""
    wanted = set(int(i) for i in wanted)
    frames, _, _ = read_video_frames(path)
    out, last = {}, None
    try:
        for i, frame in enumerate(frames):
            last = frame
            if i in wanted:
                out[i] = frame
            if len(out) == len(wanted):
                break
    finally:
        frames.close()  # release the decoder now, not whenever the generator is collected
    # Container frame counts can overstate the decodable frames by one or two: reuse the last.
    for i in wanted - set(out):
        if last is None:
            raise ValueError(f"{path}: no frame decoded")
        out[i] = last
    return out


def _segment_frames(path: str, segs: Sequence[tuple[int, int]]) -> Iterator[list[np.ndarray]]:
    """Each segment's frames, decoding ``path`` once and holding only the frames that a
    pending segment still needs (a long video never sits in memory whole)."""
    frames, _, _ = read_video_frames(path)
    buf: dict[int, np.ndarray] = {}
    k, last = 0, None
    try:
        for i, frame in enumerate(frames):
            buf[i] = last = frame
            while k < len(segs) and i >= segs[k][1] - 1:
                a, b = segs[k]
                yield [buf[j] for j in range(a, b)]
                k += 1
                keep_from = segs[k][0] if k < len(segs) else b
                for j in [j for j in buf if j < keep_from]:
                    del buf[j]
            if k == len(segs):
                return
    finally:
        frames.close()
    if last is None:
        raise ValueError(f"{path}: no frame decoded")
    # Container frame counts can overstate the decodable frames by one or two: reuse the last.
    for a, b in segs[k:]:
        yield [buf.get(j, last) for j in range(a, b)]


def _prompt(name: str, item: VideoItem, text: str, start: int = 0, end: int | None = None) -> str:
    evidence = None
    if name == "evidence":
        if not item.arrays:
            raise ValueError(f"{item.video_id}: the evidence prompt needs level-1 arrays")
        evidence = prompts_lib.describe_evidence(item.arrays, start=start, end=end, text=text)
    return prompts_lib.build_prompt(name, transcript=text, evidence=evidence)


@dataclasses.dataclass
class Outcome:
    """One answer turned into numbers: decision, reference-rule decision, probability."""

    decision: int
    reference: int
    prob: float
    parsed: bool
    text: str


def judge(answer: Answer, rule: str = "strict", unparsed: str = "score") -> Outcome:
    """Decision (``parse.decide``), the reference rule's decision and P(A/H) of an answer."""
    decision, ok = parse_lib.decide(answer.text, answer.label_logprobs, rule, unparsed)
    prob = positive_probability(answer.label_logprobs)
    return Outcome(decision, parse_lib.parse_answer(answer.text, "reference"),
                   float(decision) if prob is None else prob, ok, answer.text)


def video_level(backend, item: VideoItem, prompt: str, cache: AnswerCache, **judge_kw) -> Outcome:
    """One answer for the whole video: 8 uniform frames (multimodal backends) + transcript."""
    images = None
    if backend.accepts_video:
        idx = uniform_indices(item.n_frames)
        got = _read_frames(item.video_path, idx)
        images = [got[int(i)] for i in idx]
    return judge(cache.ask(backend, _prompt(prompt, item, item.transcript), images), **judge_kw)


def frame_level(backend, item: VideoItem, prompt: str, cache: AnswerCache, size: int = CLIP_FRAMES,
                stride: int | None = None, **judge_kw) -> tuple[list[tuple[int, int]], list[Outcome]]:
    """(segments, one outcome per segment) over the whole video."""
    segs = segments(item.n_frames, size, stride)
    clips = _segment_frames(item.video_path, segs) if backend.accepts_video else None
    outs = []
    for a, b in segs:
        text = words_in(item.words, a / item.fps, b / item.fps)
        images = next(clips) if clips is not None else None
        outs.append(judge(cache.ask(backend, _prompt(prompt, item, text, a, b), images), **judge_kw))
    return segs, outs


def _hard(labels: np.ndarray, pred: np.ndarray) -> dict:
    """AVGF1, WAR and per-class F1 of hard predictions; also when one class is absent
    (``bah_metrics`` needs a positive label for its AP, which decisions do not have)."""
    from sklearn.metrics import f1_score
    keep = labels >= 0
    y, p = labels[keep], pred[keep]
    f1 = f1_score(y, p, labels=[0, 1], average=None, zero_division=0.0)
    return {"AVGF1": float(f1.mean()), "WAR": float(np.mean(y == p)) if y.size else float("nan"),
            "F1_POS": float(f1[1]), "F1_NEG": float(f1[0])}


def _metrics(labels: np.ndarray, decisions: np.ndarray, reference: np.ndarray,
             probs: np.ndarray, parsed: np.ndarray) -> dict:
    out = _hard(labels, decisions)
    keep = labels >= 0
    out["AP"] = (metrics_lib.frame_ap(labels[keep], probs[keep])
                 if np.any(labels[keep] == 1) else float("nan"))
    out["AVGF1_REF"] = _hard(labels, reference)["AVGF1"]
    out["UNPARSED"] = float(1.0 - parsed.mean()) if parsed.size else 0.0
    return out


def evaluate(backend, items: Sequence[VideoItem], prompt: str, level: str, *,
             rule: str = "strict", unparsed: str = "score", size: int = CLIP_FRAMES,
             stride: int | None = None, cache: AnswerCache | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """Table 7 metrics of ``backend`` with ``prompt`` at ``level`` ("video" or "frame").

    Video level scores one answer per video against the video labels; frame level pools
    every labelled frame (unparseable share counted per answer, i.e. per segment). Adds
    ``N_ANSWERS`` (answers scored), ``N_CALLS`` (model calls after the cache) and
    ``SECONDS``. Returns ``{metric: float}``.
    """
    if level not in ("video", "frame"):
        raise ValueError(f"level must be 'video' or 'frame', got {level!r}")
    cache = cache if cache is not None else AnswerCache()
    calls0, t0 = cache.calls, time.perf_counter()
    judge_kw = dict(rule=rule, unparsed=unparsed)
    labels, dec, ref, prob, parsed = [], [], [], [], []
    for k, item in enumerate(items):
        if level == "video":
            o = video_level(backend, item, prompt, cache, **judge_kw)
            labels.append(item.video_label)
            dec.append(o.decision), ref.append(o.reference), prob.append(o.prob), parsed.append(o.parsed)
        else:
            segs, outs = frame_level(backend, item, prompt, cache, size, stride, **judge_kw)
            labels.extend(np.asarray(item.labels).tolist())
            for values, field in ((dec, "decision"), (ref, "reference"), (prob, "prob")):
                values.extend(spread(item.n_frames, segs, [getattr(o, field) for o in outs]).tolist())
            parsed.extend(o.parsed for o in outs)
        if log and (k + 1) % 10 == 0:
            log(f"  {prompt}/{level}: {k + 1}/{len(items)} videos")
    # Overlapping windows average decisions; a frame is positive when at least half say so.
    dec_a = (np.asarray(dec) >= 0.5).astype(int)
    ref_a = (np.asarray(ref) >= 0.5).astype(int)
    out = _metrics(np.asarray(labels, int), dec_a, ref_a, np.asarray(prob, float),
                   np.asarray(parsed, bool))
    out.update(N_ANSWERS=float(len(parsed)), N_CALLS=float(cache.calls - calls0),
               SECONDS=round(time.perf_counter() - t0, 2))
    return out
