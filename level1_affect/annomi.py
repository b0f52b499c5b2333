"""AnnoMI: expert-annotated motivational-interviewing conversations, read and checked.

AnnoMI (Wu et al., ICASSP 2022; Future Internet 15(3):110, 2023) has one row per utterance,
grouped into conversations by ``transcript_id``; client turns carry ``client_talk_type`` in
{change, neutral, sustain}. ``AnnoMI-full.csv`` has one row per annotator where several
annotated a conversation; ``AnnoMI-simple.csv`` one row per utterance.

``read_annomi(path)`` returns the client utterances as :class:`Example` values with their
dialogue context (the therapist turn just before, the client's previous turn) and the
annotators' votes. Several annotators are resolved the same way for every method: training
uses the vote fractions as soft targets, scoring uses the majority label, and a tie goes to
the label given first in file order (which reproduces ``AnnoMI-simple.csv`` exactly).

A copy of the 106 public conversations of AnnoMI-full (public domain) ships with the package
(``level1_affect/data/annomi/``); ``default_path()`` names it.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

LABELS = ("change", "neutral", "sustain")
#: The therapist's main behaviour in a turn (AnnoMI's ``main_therapist_behaviour``).
BEHAVIOURS = ("question", "reflection", "therapist_input", "other")
_REQUIRED = ("transcript_id", "utterance_id", "interlocutor", "utterance_text", "client_talk_type")
_SPEAKERS = ("client", "therapist")


class AnnoMIError(ValueError):
    """An AnnoMI file that cannot be read as AnnoMI; the message names file, column and row."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One client utterance with its context and labels.

    ``votes`` (3,) holds the annotators' vote fractions over :data:`LABELS` (a one-hot for a
    single annotator); ``label`` is the majority label's index.
    """
    transcript_id: str
    utterance_id: int
    text: str
    therapist: str          # the therapist turn just before ("" when none)
    previous: str           # the client's previous turn in the conversation ("" when none)
    votes: np.ndarray
    label: int
    behaviour: int = -1     # index in BEHAVIOURS of the therapist turn before (-1: unknown)


def default_path() -> Path:
    """The packaged copy of AnnoMI-full (106 conversations, gzip)."""
    return Path(__file__).parent / "data" / "annomi" / "AnnoMI-full.csv.gz"


def resolve(path: str | os.PathLike | None) -> Path:
    """The CSV to read for ``path``: a file as is; a folder's ``AnnoMI-full.csv`` (or
    ``AnnoMI-simple.csv`` when the full one is absent); ``None`` or "" the packaged copy."""
    if not path:
        return default_path()
    p = Path(path)
    if p.is_dir():
        for name in ("AnnoMI-full.csv", "AnnoMI-simple.csv", "AnnoMI-full.csv.gz"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p}: no AnnoMI-full.csv or AnnoMI-simple.csv in this folder")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such AnnoMI file or folder")
    return p


def test_ids(path: str | os.PathLike | None) -> list[str]:
    """The held-out conversations listed in ``DIR/test_ids.txt`` (one ``transcript_id`` per
    line; blank lines and ``#`` comments ignored), or [] when there is no such file."""
    if not path or not Path(path).is_dir() or not (Path(path) / "test_ids.txt").is_file():
        return []
    lines = (Path(path) / "test_ids.txt").read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise AnnoMIError(f"{path}: cannot be read as UTF-8 CSV ({err})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or [])
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise AnnoMIError(f"{path}: missing column(s) {', '.join(missing)} (header: {header})")
    return header, list(reader)


def read_annomi(path: str | os.PathLike | None = None) -> list[Example]:
    """Client utterances of an AnnoMI CSV (see :func:`resolve`), in conversation order.

    Raises :class:`AnnoMIError` naming the file, the column and the CSV line (header is
    line 1) for an unknown speaker, an unknown talk type, a client turn without one, or a
    non-integer ``utterance_id``.
    """
    path = resolve(path)
    _, rows = _rows(path)
    turns: dict[tuple[str, int], dict] = {}
    for line, r in enumerate(rows, start=2):
        where = f"{path}: line {line}"
        speaker = (r.get("interlocutor") or "").strip()
        if speaker not in _SPEAKERS:
            raise AnnoMIError(f"{where}, column interlocutor: {speaker!r} is not one of {_SPEAKERS}")
        try:
            uid = int(r["utterance_id"])
        except (TypeError, ValueError):
            raise AnnoMIError(f"{where}, column utterance_id: {r.get('utterance_id')!r} "
                              "is not an integer") from None
        talk = (r.get("client_talk_type") or "").strip()
        if speaker == "client" and talk not in LABELS:
            raise AnnoMIError(f"{where}, column client_talk_type: {talk!r} is not one of {LABELS}")
        key = (str(r["transcript_id"]).strip(), uid)
        turn = turns.setdefault(key, {"speaker": speaker, "text": r["utterance_text"] or "",
                                      "votes": collections.Counter(), "order": [],
                                      "behaviour": collections.Counter()})
        act = (r.get("main_therapist_behaviour") or "").strip()
        if speaker == "therapist" and act in BEHAVIOURS:
            turn["behaviour"][act] += 1
        if speaker == "client":
            if talk not in turn["order"]:
                turn["order"].append(talk)
            turn["votes"][talk] += 1
    if not any(t["speaker"] == "client" for t in turns.values()):
        raise AnnoMIError(f"{path}: no client utterance with a talk type")
    conv_order = list(dict.fromkeys(k[0] for k in turns))
    out: list[Example] = []
    for tid in conv_order:
        therapist = previous = ""
        behaviour = -1
        for uid in sorted(u for t, u in turns if t == tid):
            turn = turns[(tid, uid)]
            if turn["speaker"] == "therapist":
                therapist = turn["text"]
                votes = turn["behaviour"]
                behaviour = BEHAVIOURS.index(max(votes, key=votes.get)) if votes else -1
                continue
            counts = np.array([turn["votes"][k] for k in LABELS], np.float32)
            top = counts.max()
            label = next(k for k in turn["order"] if turn["votes"][k] == top)
            out.append(Example(tid, uid, turn["text"], therapist, previous,
                               counts / counts.sum(), LABELS.index(label), behaviour))
            previous = turn["text"]
    return out


def grouped_folds(groups: Sequence[str], n_splits: int, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train, test) index pairs with every group (conversation) in exactly one
    test part: groups are shuffled by ``seed`` and dealt, largest first, to the part with the
    fewest utterances so far, so parts are about equal in size."""
    groups = np.asarray(groups)
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < n_splits:
        raise ValueError(f"{len(names)} conversations cannot make {n_splits} grouped folds")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(names))
    order = perm[np.argsort(-counts[perm], kind="stable")]
    sizes = np.zeros(n_splits, int)
    part = {}
    for i in order:
        k = int(np.argmin(sizes))
        part[names[i]] = k
        sizes[k] += counts[i]
    fold = np.array([part[g] for g in groups])
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_splits)]


def macro_f1(y: np.ndarray, pred: np.ndarray) -> dict:
    """``macro_F1``, ``F1_<label>`` per label and the confusion matrix (rows: truth)."""
    y, pred = np.asarray(y), np.asarray(pred)
    out, f1s = {}, []
    for k, name in enumerate(LABELS):
        tp = np.sum((pred == k) & (y == k))
        denom = np.sum(pred == k) + np.sum(y == k)
        f1 = 2.0 * tp / denom if denom else 0.0
        out[f"F1_{name}"] = float(f1)
        f1s.append(f1)
    out["macro_F1"] = float(np.mean(f1s))
    conf = np.zeros((len(LABELS), len(LABELS)), int)
    np.add.at(conf, (y, pred), 1)
    out["confusion"] = conf.tolist()
    return out
