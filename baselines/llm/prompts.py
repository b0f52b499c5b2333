"""The zero-shot prompts of the BAH paper (Table 6) in one place, and our two variants.

The five paper prompts are verbatim (even the missing space after the definition); ours,
``transcript_simple`` and ``evidence`` (the transcript, a summary of the level-1 affect
tracks and Definition 2), differ from a paper prompt only in what they add. More:
docs/paper_setups.md, "Prompts".
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from level1_affect import schema
from level1_affect.schema import FACE_EXPR

POSITIVE = "Ambivalent"
NEGATIVE = "Non-Ambivalent"
LABELS = (POSITIVE, NEGATIVE)

# ---- Table 6, verbatim --------------------------------------------------------------------
INSTRUCTION = ("Classify the emotion in the video as either 'Non-Ambivalent' or 'Ambivalent'."
               "\nRespond with only one word: ")
DEFINITION_1 = ("Definition: Ambivalence is the state of having contradictory or conflicting "
                "feelings or attitudes towards something or someone simultaneously.")
DEFINITION_2 = ("Definition: Ambivalence and Hesitancy is understood as the simultaneous "
                "experience of desires for change and against change.")
TRANSCRIPT = "Video transcript: {transcript}. "
# ---- ours ---------------------------------------------------------------------------------
EVIDENCE = "Automatic measurements of the same moments: {evidence}. "
NO_SPEECH = "(no speech)"

# name -> (title as in Table 6, definition or "", uses the transcript)
_SPECS = {
    "simple": ("Simple", "", False),
    "def1": ("Definition 1", DEFINITION_1, False),
    "def2": ("Definition 2", DEFINITION_2, False),
    "transcript_def1": ("Transcript + Definition 1", DEFINITION_1, True),
    "transcript_def2": ("Transcript + Definition 2", DEFINITION_2, True),
    "transcript_simple": ("Transcript + Simple (ours)", "", True),
}
PAPER_PROMPTS = ("simple", "def1", "def2", "transcript_def1", "transcript_def2")
TRANSCRIPT_PROMPTS = tuple(k for k, s in _SPECS.items() if s[2])
ALL_PROMPTS = tuple(_SPECS) + ("evidence",)
TITLES = {**{k: s[0] for k, s in _SPECS.items()},
          "evidence": "Transcript + level-1 evidence + Definition 2 (ours)"}


def uses_transcript(name: str) -> bool:
    """Whether prompt ``name`` carries the transcript (the ``transcript_*`` ones and ours)."""
    _check(name)
    return name == "evidence" or _SPECS[name][2]


def _check(name: str) -> None:
    if name not in ALL_PROMPTS:
        raise KeyError(f"unknown prompt {name!r}; known: {', '.join(ALL_PROMPTS)}")


def _clean(text: str | None) -> str:
    """One line of transcript: whitespace collapsed; empty becomes ``(no speech)``."""
    return " ".join(str(text or "").split()) or NO_SPEECH


def build_prompt(name: str, transcript: str | None = None, evidence: str | None = None) -> str:
    """The text of prompt ``name`` for one video or segment.

    ``transcript`` is inserted by the transcript prompts and ignored by the others;
    ``evidence`` (see :func:`describe_evidence`) is required by ``evidence``. Raises
    KeyError for an unknown name.
    """
    _check(name)
    if name == "evidence":
        if not evidence:
            raise ValueError("the evidence prompt needs the evidence text (describe_evidence)")
        return (TRANSCRIPT.format(transcript=_clean(transcript))
                + EVIDENCE.format(evidence=evidence) + DEFINITION_2 + INSTRUCTION)
    _, definition, with_text = _SPECS[name]
    head = TRANSCRIPT.format(transcript=_clean(transcript)) if with_text else ""
    return head + definition + INSTRUCTION


# ---- level-1 evidence as text ------------------------------------------------------------
def _col(arrays: Mapping[str, np.ndarray], columns: Mapping[str, tuple], array: str,
         name: str) -> np.ndarray | None:
    if array not in arrays or array not in columns or name not in columns[array]:
        return None
    return np.asarray(arrays[array], np.float64)[:, list(columns[array]).index(name)]


def _pct(x: float) -> str:
    return f"{round(100 * x):d}%"


def describe_face(expr: np.ndarray | None, smile: np.ndarray | None,
                  frown: np.ndarray | None, present: np.ndarray | None = None) -> str:
    """``face: mostly neutral (70%), then happy (30%); smiling 30% of the time; ...``.

    ``expr`` (n, 7) expression probabilities (``schema.FACE_EXPR`` order); smile and frown
    are blendshape means in [0, 1], counted as shown above 0.3 (a visible, not a trace,
    movement). Frames without a face are left out; no face at all says so.
    """
    if expr is None:
        return "face: not measured"
    keep = np.ones(len(expr), bool) if present is None else np.asarray(present).ravel() > 0.5
    if not keep.any():
        return "face: not visible"
    top = np.argmax(np.asarray(expr)[keep], axis=1)
    counts = np.bincount(top, minlength=len(FACE_EXPR)) / len(top)
    order = [i for i in np.argsort(-counts) if counts[i] >= 0.1][:3]
    parts = [f"mostly {FACE_EXPR[order[0]]} ({_pct(counts[order[0]])})"]
    parts += [f"{FACE_EXPR[i]} ({_pct(counts[i])})" for i in order[1:]]
    text = "face: " + ", ".join(parts)
    changes = int(np.sum(top[1:] != top[:-1]))
    if changes:
        text += f", expression changes {changes} time{'s' * (changes != 1)}"
    for name, track in (("smiling", smile), ("frowning", frown)):
        if track is not None:
            share = float(np.mean(np.asarray(track)[keep] > 0.3))
            if share > 0:
                text += f"; {name} {_pct(share)} of the time"
    return text


def describe_voice(prosody: Mapping[str, np.ndarray]) -> str:
    """``voice: speaking 60% of the time, flat pitch, pauses 20% of the time``.

    ``prosody`` maps ``schema.VOICE_PROSODY`` names to (n,) tracks. Pitch is flat when the
    per-video pitch z-score varies by less than 0.5 over voiced frames, lively above 1.2 (an
    SD of the speaker's own range; the cut points are ours, chosen to be read by a person).
    """
    active = prosody.get("voice_active")
    if active is None or not np.any(active > 0.5):
        return "voice: silent"
    parts = [f"speaking {_pct(float(np.mean(active > 0.5)))} of the time"]
    voiced = prosody.get("voiced")
    pz = prosody.get("pitch_z")
    if pz is not None and voiced is not None and np.sum(voiced > 0.5) >= 2:
        sd = float(np.std(pz[voiced > 0.5]))
        parts.append("flat pitch" if sd < 0.5 else "lively pitch" if sd > 1.2 else "normal pitch")
        mean = float(np.mean(pz[voiced > 0.5]))
        if abs(mean) > 0.8:
            parts.append("pitch higher than usual" if mean > 0 else "pitch lower than usual")
    pause = prosody.get("pause")
    if pause is not None and np.any(pause > 0.5):
        parts.append(f"pauses {_pct(float(np.mean(pause > 0.5)))} of the time")
    return "voice: " + ", ".join(parts)


def describe_words(affect: Mapping[str, np.ndarray], text: str = "") -> str:
    """``words: positive, with hedges ('maybe'), change and sustain talk``.

    ``affect`` maps ``schema.TEXT_AFFECT`` names to (n,) tracks; only frames with a word
    count. ``text`` (the words of the same frames), when given, supplies the quoted hedge
    and contrast words.
    """
    present = affect.get("word_present")
    keep = (np.asarray(present) > 0.5) if present is not None else None
    if keep is None or not keep.any():
        return "words: none"
    sent = float(np.mean(np.asarray(affect["sentiment"])[keep])) if "sentiment" in affect else 0.0
    tone = "positive" if sent > 0.05 else "negative" if sent < -0.05 else "neutral"
    extras = []
    quoted = _marker_words(text)
    if quoted or ("hedge" in affect and np.any(np.asarray(affect["hedge"])[keep] > 0.5)):
        extras.append("hedges" + (f" ({', '.join(repr(w) for w in quoted)})" if quoted else ""))
    if "hesitation" in affect and np.any(np.asarray(affect["hesitation"])[keep] > 0.5):
        extras.append("hesitation markers")
    change = "change_talk" in affect and np.any(np.asarray(affect["change_talk"])[keep] > 0.5)
    sustain = "sustain_talk" in affect and np.any(np.asarray(affect["sustain_talk"])[keep] > 0.5)
    if change and sustain:
        extras.append("both change talk and sustain talk")
    elif change or sustain:
        extras.append("change talk" if change else "sustain talk")
    return f"words: {tone}" + (", with " + ", ".join(extras) if extras else "")


_MARKERS = ("but", "maybe", "perhaps", "probably", "however", "although", "though", "guess",
            "might", "um", "uh")


def _marker_words(text: str) -> list[str]:
    """The hedge/contrast words of ``_MARKERS`` found in ``text``, in first-seen order."""
    seen: list[str] = []
    for w in (t.strip(".,;:!?\"'()").lower() for t in text.split()):
        if w in _MARKERS and w not in seen:
            seen.append(w)
    return seen[:4]


def describe_evidence(arrays: Mapping[str, np.ndarray], columns: Mapping[str, tuple] | None = None,
                      start: int = 0, end: int | None = None, text: str = "") -> str:
    """Level-1 evidence of frames ``[start, end)`` as one line: ``face: ...; voice: ...; words: ...``.

    ``arrays`` holds a feature store's level-1 arrays (``face_expr``, ``face_desc``,
    ``face_present``, ``voice_prosody``, ``text_affect``; any may be missing), ``columns``
    their column names (default ``level1_affect.schema``), ``text`` the words said in those
    frames. Raises ValueError on an empty frame range.
    """
    columns = dict(columns or {k: v[1] for k, v in schema.ARRAYS.items() if v[1]})
    sl = {k: np.asarray(v)[start:end] for k, v in arrays.items()}
    n = next((len(v) for v in sl.values()), 0)
    if n == 0:
        raise ValueError(f"no frames in [{start}, {end}) to describe")
    expr = sl.get("face_expr")
    present = sl["face_present"][:, 0] if "face_present" in sl else None
    face = (describe_face(expr, _col(sl, columns, "face_desc", "smile"),
                          _col(sl, columns, "face_desc", "frown"), present)
            if expr is not None else "face: not measured")
    prosody = {c: _col(sl, columns, "voice_prosody", c) for c in schema.VOICE_PROSODY}
    voice = (describe_voice({k: v for k, v in prosody.items() if v is not None})
             if "voice_prosody" in sl else "voice: not measured")
    affect = {c: _col(sl, columns, "text_affect", c) for c in schema.TEXT_AFFECT}
    words = (describe_words({k: v for k, v in affect.items() if v is not None}, text)
             if "text_affect" in sl else "words: not measured")
    return "; ".join((face, voice, words))
