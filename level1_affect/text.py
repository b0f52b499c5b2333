"""Level 1, text: lexicon affect, hedging, hesitation and change/sustain talk on frames.

``TextEncoder.encode(words, fps, n_frames)`` gives ``text_affect`` (n_frames, 18, the
columns of ``schema.TEXT_AFFECT``) and ``text_emb`` (n_frames, 384): each word's features
fill the frames it is spoken on, over a centred window of ``window`` words (so "but" in
"I want to quit but I can't" carries both talk types); frames with no word are zero.
``video_text_features(transcript)`` is a named vector for one whole answer. Chunk-level
timestamps are spread over words by ``words_from_chunks``. The phrase lists (LEXICONS
below) match a token stream with contractions expanded ("can't" -> "can not"), so each
pattern is written once. docs/level1.md has the details.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any, Iterable, Sequence

import numpy as np

from ahjax.core import assets
from level1_affect import minilm, schema
from level1_affect import talk_type as tt
from level1_affect.loading import load_once

# =============================== LEXICONS ==============================================
# Regular expressions over the expanded, lower-case token stream (tokens joined by single
# spaces, punctuation removed). Sources: hedges after Hyland (1998) and Prokofieva &
# Hirschberg (2014); hesitation after Clark & Fox Tree (2002); change and sustain talk after
# Miller & Rollnick's DARN-CAT scheme (Desire, Ability, Reasons, Need; Commitment,
# Activation, Taking steps) and its mirror for sustain talk.

HEDGES = (
    r"maybe", r"perhaps", r"probably", r"possibly", r"presumably", r"likely", r"unlikely",
    r"apparently", r"somewhat", r"somehow", r"kinda", r"sorta", r"(?:kind|sort) of",
    r"i guess", r"i suppose", r"i think", r"i believe", r"i feel like", r"i would say",
    r"i am not (?:sure|certain)", r"not (?:sure|certain)", r"i do not know", r"idk",
    r"it depends", r"depending on", r"more or less", r"in a way", r"to some extent",
    r"a little(?: bit)?", r"a bit", r"might", r"could be", r"may be", r"seems?",
    r"hard to say", r"or something", r"or whatever", r"i do not really know", r"not really",
)

FILLERS = ("um", "uh", "uhm", "umm", "uhh", "er", "erm", "hmm", "hm", "mm", "mmm", "eh", "ah")
HESITATIONS = (
    r"i mean", r"you know", r"let me think", r"how do i say", r"what is the word",
    r"how should i put it", r"i do not know how to (?:say|put|explain)",
)

_MOD = r"(?:really |truly |just |also |definitely |actually |still |probably )?"
CHANGE_TALK = (
    # desire
    rf"i {_MOD}(?:want|wish|hope|would like|would love|am hoping) to", r"i wish i",
    r"i would (?:like|love) to",
    # ability
    rf"i {_MOD}(?:can(?! not)|could(?! not| have))\b", r"i am able to", r"i know (?:how|i can)",
    r"i think i (?:can|could)(?! not)\b",
    # reasons
    r"it would (?:be (?:better|good|nice|great|easier|healthier)|help)", r"(?:will|would) help me",
    r"(?:better|healthier|good) for me", r"so that i (?:can|could)",
    # need
    rf"i {_MOD}(?:need|have|got|ought) to", rf"i {_MOD}(?:must|should)(?! not)\b",
    r"it is (?:important|time) (?:to|for me)",
    # commitment, activation, taking steps
    rf"i {_MOD}(?:will|am going to)(?! not)\b", r"i (?:plan|intend|promise|decided) to",
    r"i have decided", r"i am (?:ready|willing|determined|committed) to",
    r"i am (?:trying|working on|planning)", r"i (?:have )?started", r"i have been trying",
    r"i am going to try", r"let me try",
)

SUSTAIN_TALK = (
    # inability
    r"i (?:really )?(?:can|could) not", r"i am (?:not able|unable) to",
    r"i do not (?:know how|think i (?:can|could|will|would))", r"i have no idea how",
    # no desire, no commitment
    r"i do not (?:really )?(?:want|wish|like|feel like|plan)", r"i would rather",
    r"i am not (?:really )?(?:ready|willing|interested|going to|motivated)", r"i will not",
    r"i refuse", r"i do not care", r"why (?:would|should) i",
    # reasons against, difficulty, costs
    r"(?:is|it is|that is|so|too) (?:too )?(?:hard|difficult|expensive|complicated|scary|stressful)",
    r"too (?:hard|difficult|expensive|busy|tired|much|late|lazy|scared|afraid)",
    r"no time", r"not enough (?:time|money|energy)",
    r"(?:do not|did not|never) have (?:the |enough )?(?:time|money|energy|motivation)",
    r"i am (?:too |so |really )?(?:busy|tired|lazy|scared|afraid|overwhelmed)",
    r"i (?:really )?(?:like|love|enjoy) (?:it|that|them) too much",
    # no need, status quo
    r"i do not (?:really )?(?:need|have) to", r"no need", r"(?:it is|that is) (?:fine|okay|ok)",
    r"not (?:a |that )?(?:big )?(?:deal|problem|important|bad)", r"i am (?:used to|comfortable)",
    r"the way it is",
    # procrastination and not acting (BAH question 7 asks about exactly this)
    r"put(?:ting)? (?:it |this |that )?off", r"procrastinat\w*",
    r"(?:have|has) not (?:done|gotten|started|had|been able)", r"never got (?:around|to)",
    r"i keep (?:putting|delaying|avoiding)", r"i (?:keep |always )?(?:avoid|delay)\w*",
)

# Contrastive connectives: a "but" after change talk in the same sentence is counted as
# sustain talk (the flip "I want to ... but ...").
CONTRASTIVE = (r"but", r"however", r"although", r"though", r"even though", r"yet",
               r"on the other hand", r"at the same time", r"except")

# Contractions expanded before matching (the apostrophe is normalised to ' first).
CONTRACTIONS = {
    "can't": "can not", "cannot": "can not", "won't": "will not", "don't": "do not",
    "doesn't": "does not", "didn't": "did not", "isn't": "is not", "aren't": "are not",
    "wasn't": "was not", "weren't": "were not", "haven't": "have not", "hasn't": "has not",
    "hadn't": "had not", "shouldn't": "should not", "wouldn't": "would not",
    "couldn't": "could not", "mustn't": "must not", "i'm": "i am", "i've": "i have",
    "i'll": "i will", "i'd": "i would", "it's": "it is", "that's": "that is",
    "gonna": "going to", "wanna": "want to", "gotta": "got to", "dunno": "do not know",
    "let's": "let us", "you're": "you are", "there's": "there is",
}
# =======================================================================================

NRC_EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive",
                "sadness", "surprise", "trust")
_COL = {name: i for i, name in enumerate(schema.TEXT_AFFECT)}
_PUNCT = re.compile(r"^[^\w']+|[^\w']+$")
_CLAUSE_END = re.compile(r"[.!?;:,…]$|\.\.\.$|[-—]$")
_SENTENCE_END = re.compile(r"[.!?…]$")


def _compile(patterns: Iterable[str]) -> re.Pattern:
    return re.compile(r"(?<![\w'])(?:" + "|".join(patterns) + r")(?![\w'])")


_RE = {"hedge": _compile(HEDGES), "hesitation": _compile(HESITATIONS + FILLERS),
       "change": _compile(CHANGE_TALK), "sustain": _compile(SUSTAIN_TALK),
       "contrast": _compile(CONTRASTIVE)}


def normalise(word: str) -> str:
    """Lower case, curly quotes straightened, surrounding punctuation removed."""
    return _PUNCT.sub("", word.lower().replace("’", "'").replace("‘", "'"))


def _expanded(words: Sequence[str]) -> tuple[str, np.ndarray]:
    """The matching string and, per character, the index of the source word (-1 = space)."""
    parts, owner = [], []
    for i, w in enumerate(words):
        norm = normalise(w)
        for tok in CONTRACTIONS.get(norm, norm).split():
            parts.append(tok)
            owner.append(np.full(len(tok), i))
            owner.append(np.array([-1]))
    text = " ".join(parts)
    owner_arr = np.concatenate(owner)[:len(text)] if owner else np.zeros(0, int)
    return text, owner_arr


def _matches(pattern: re.Pattern, text: str, owner: np.ndarray) -> list[tuple[int, int]]:
    """``(first_word, last_word)`` of each match of ``pattern``."""
    out = []
    for m in pattern.finditer(text):
        if m.end() > m.start():
            idx = owner[m.start():m.end()]
            idx = idx[idx >= 0]
            if len(idx):
                out.append((int(idx.min()), int(idx.max())))
    return out


def _merge(spans: list[tuple[int, int]], adjacent: bool = False) -> list[tuple[int, int]]:
    """Sorted spans with overlapping (and, if ``adjacent``, touching) ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + int(adjacent):
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class Lexicons:
    """VADER and NRC loaded once; per-word indicators and per-window features."""

    def __init__(self, vader_path=None, nrc_path=None, window: int = 5, clause_span: int = 8):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.vader = SentimentIntensityAnalyzer(
            lexicon_file=str(vader_path or assets.fetch("vader_lexicon")))
        with open(nrc_path or assets.fetch("nrc_lexicon"), encoding="utf-8") as f:
            self.nrc: dict[str, list[str]] = json.load(f)
        self.window = window
        # Change/sustain talk covers its phrase and the rest of the clause, up to this many
        # words ("I want to [quit smoking]"), since the object is part of the statement.
        self.clause_span = clause_span

    def nrc_vector(self, word: str) -> np.ndarray:
        """10 NRC emotion indicators for one word, with a light suffix-stripping fallback."""
        w = normalise(word)
        tags = self.nrc.get(w)
        if tags is None:
            for suffix, repl in (("ies", "y"), ("ied", "y"), ("ing", ""), ("ing", "e"),
                                 ("ed", ""), ("ed", "e"), ("es", ""), ("s", ""), ("ly", "")):
                if w.endswith(suffix) and len(w) > len(suffix) + 2:
                    tags = self.nrc.get(w[:-len(suffix)] + repl)
                    if tags is not None:
                        break
        vec = np.zeros(len(NRC_EMOTIONS), np.float32)
        for t in tags or ():
            if t in NRC_EMOTIONS:
                vec[NRC_EMOTIONS.index(t)] = 1.0
        return vec

    def word_indicators(self, words: Sequence[str]) -> dict[str, Any]:
        """Per-word 0/1 indicators and the matched events, in word order.

        Returns ``{"hedge", "hesitation", "change", "sustain", "contrast": (n,) float32,
        "events": {kind: [(first, last), ...]}, "nrc": (n, 10)}``; ``events["flip"]`` holds
        the contrastive words that follow change talk in the same sentence (also counted as
        sustain talk).
        """
        n = len(words)
        text, owner = _expanded(words)
        clause_end = np.array([bool(_CLAUSE_END.search(w)) for w in words], bool)
        sentence_end = np.array([bool(_SENTENCE_END.search(w)) for w in words], bool)
        events = {k: _matches(p, text, owner) for k, p in _RE.items()}
        norm = [normalise(w) for w in words]
        # Hesitation not captured by phrases: repeated words ("I I"), cut-off words ("th-")
        # and trailing ellipses.
        for i in range(n):
            repeated = i > 0 and norm[i] and norm[i] == norm[i - 1] and not clause_end[i - 1]
            cut_off = len(words[i]) > 1 and words[i].endswith(("-", "...", "…"))
            if repeated or cut_off:
                events["hesitation"].append((i, i))
        # A contrastive connective after change talk in the same sentence flips to sustain.
        events["flip"] = []
        for a, b in events["contrast"]:
            prior = [c for c in events["change"] if c[1] < a]
            if prior and not sentence_end[prior[-1][1]:a].any():
                events["sustain"].append((a, b))
                events["flip"].append((a, b))
        # One phrase counts once; touching change/sustain phrases are one statement
        # ("but" + "I can't"), while touching hedges stay separate hedges.
        out: dict[str, Any] = {"events": {
            k: _merge(v, adjacent=k in ("change", "sustain")) for k, v in events.items()}}
        events = out["events"]
        contrast_words = {i for a, b in events["contrast"] for i in range(a, b + 1)}
        for kind in ("hedge", "hesitation", "change", "sustain", "contrast"):
            ind = np.zeros(n, np.float32)
            for a, b in events[kind]:
                if kind in ("change", "sustain"):
                    # Extend to the end of the clause (punctuation or a contrastive word).
                    stop = min(n - 1, b + self.clause_span)
                    j = b
                    while j < stop and not clause_end[j] and (j + 1) not in contrast_words:
                        j += 1
                    b = j
                ind[a:b + 1] = 1.0
            out[kind] = ind
        out["nrc"] = (np.stack([self.nrc_vector(w) for w in words]) if n
                      else np.zeros((0, len(NRC_EMOTIONS)), np.float32))
        return out

    def word_features(self, words: Sequence[str], talk: np.ndarray | None = None) -> np.ndarray:
        """(n_words, 18) ``text_affect`` rows, each over a centred window of words.

        ``talk`` (n_words, 2): per-word P(change talk), P(sustain talk) from a learned
        talk-type model, used for the change/sustain columns instead of the phrase rules.
        """
        n = len(words)
        feats = np.zeros((n, len(schema.TEXT_AFFECT)), np.float32)
        if n == 0:
            return feats
        ind = self.word_indicators(words)
        if talk is not None:
            talk = np.asarray(talk, np.float32)
            if talk.shape != (n, 2):
                raise ValueError(f"talk has shape {talk.shape}, expected ({n}, 2)")
            ind["change"], ind["sustain"] = talk[:, 0], talk[:, 1]
        half = self.window // 2
        for i in range(n):
            lo, hi = max(0, i - half), min(n, i + half + 1)
            s = self.vader.polarity_scores(" ".join(words[lo:hi]))
            feats[i, _COL["sentiment"]] = s["compound"]
            feats[i, _COL["positive"]] = s["pos"]
            feats[i, _COL["negative"]] = s["neg"]
            feats[i, _COL["nrc_anger"]:_COL["nrc_trust"] + 1] = ind["nrc"][lo:hi].mean(0)
            for col, kind in (("hedge", "hedge"), ("hesitation", "hesitation"),
                              ("change_talk", "change"), ("sustain_talk", "sustain")):
                feats[i, _COL[col]] = ind[kind][lo:hi].mean()
        feats[:, _COL["word_present"]] = 1.0
        return feats


# ------------------------------- timing --------------------------------------------------
SPEECH_RATE_WPS = 2.5  # words per second, for a chunk whose end time is missing


def words_from_chunks(chunks: Sequence | None, end_time: float | None = None) -> list[dict]:
    """Timed words ``[{"word", "start", "end"}]`` from chunk-level timestamps: each chunk's
    words share its span in proportion to their length; a missing end becomes the next
    chunk's start (else ``start + n_words / 2.5 s``, capped at ``end_time``). ``chunks``:
    ``ahjax.core.data.transcript.Chunk`` objects or dicts with ``start, end, text``."""
    chunks = list(chunks or [])  # None (no transcription) gives no words
    get = (lambda c, k: c.get(k)) if chunks and isinstance(chunks[0], dict) else getattr
    out: list[dict] = []
    prev_end = 0.0
    for ci, chunk in enumerate(chunks):
        words = str(get(chunk, "text") or "").split()
        start = get(chunk, "start")
        start = prev_end if start is None else float(start)
        end = get(chunk, "end")
        if end is None:
            nxt = get(chunks[ci + 1], "start") if ci + 1 < len(chunks) else None
            end = float(nxt) if nxt is not None else start + len(words) / SPEECH_RATE_WPS
            if end_time is not None:
                end = min(end, max(end_time, start))
        end = max(float(end), start)
        prev_end = end
        if not words:
            continue
        weights = np.array([len(w) + 1.0 for w in words])
        edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
        out += [{"word": w, "start": float(edges[i]), "end": float(edges[i + 1])}
                for i, w in enumerate(words)]
    return out


def _as_timed_words(items, fps: float, n_frames: int) -> list[dict]:
    """Normalise the accepted inputs to timed-word dicts (see ``TextEncoder.encode``)."""
    duration = n_frames / fps
    if items is None:
        return []
    if isinstance(items, str):
        return words_from_chunks([{"start": 0.0, "end": duration, "text": items}], duration)
    items = list(items)
    if not items:
        return []
    first = items[0]
    if isinstance(first, dict) and "word" in first:
        return [{"word": str(w["word"]), "start": float(w["start"]), "end": float(w["end"])}
                for w in items]
    if isinstance(first, (tuple, list)) and len(first) == 3:
        return [{"word": str(w), "start": float(s), "end": float(e)} for w, s, e in items]
    if hasattr(first, "text") or (isinstance(first, dict) and "text" in first):
        return words_from_chunks(items, duration)
    raise TypeError(f"cannot read timed words from items like {first!r}: expected dicts with "
                    "word/start/end, (word, start, end) tuples, transcript chunks or a string")


class TextEncoder:
    """Text affect and embeddings on video frames.

    ``embeddings``: also ``text_emb`` (MiniLM); ``window``: words of context per word;
    ``talk_type``: "learned" (the default model), "lexicon" (phrase rules) or a saved
    model's folder; ``talk_model``: a loaded ``TalkTypeModel`` (overrides ``talk_type``)."""

    def __init__(self, embeddings: bool = True, window: int = 5, lexicons: Lexicons | None = None,
                 minilm=None, talk_type: str = "learned", talk_model=None):
        self.embeddings = embeddings
        self.window = window
        self._lex = lexicons
        self._minilm = minilm
        self.talk_type = talk_type
        self._talk = talk_model
        self._call_lock = threading.Lock()

    def talk_model(self):
        """The talk-type model in use, or None for the phrase rules."""
        if self.talk_type == "lexicon" and self._talk is None:
            return None

        def build():
            return tt.load_default() if self.talk_type == "learned" else tt.load(self.talk_type)
        return load_once(self, "_talk", build)

    @property
    def lexicons(self) -> Lexicons:
        return load_once(self, "_lex", lambda: Lexicons(window=self.window))

    def load(self) -> None:
        """Load now what ``encode`` would load on first use: the lexicons, the talk-type
        model (the default one is made here when the package lacks it) and the encoder."""
        self.lexicons
        self.talk_model()
        if self.embeddings:
            self._encoder()

    def _encoder(self):
        def build():
            return minilm.load()
        return load_once(self, "_minilm", build)

    def encode(self, words, fps: float, n_frames: int) -> dict[str, np.ndarray]:
        """Frame-aligned text features of one video of ``n_frames`` at ``fps``: ``words`` are
        timed words (dicts or ``(word, start, end)``), transcript chunks, a plain string or
        None. Returns float32 ``text_affect`` (n_frames, 18) and, with ``embeddings``,
        ``text_emb`` (n_frames, 384): a frame holds the mean of its words, zero without."""
        if fps <= 0 or n_frames < 0:
            raise ValueError(f"need fps > 0 and n_frames >= 0, got fps={fps}, n_frames={n_frames}")
        timed = [w for w in _as_timed_words(words, fps, n_frames) if w["word"].strip()]
        affect = np.zeros((n_frames, len(schema.TEXT_AFFECT)), np.float32)
        emb = np.zeros((n_frames, 384), np.float32) if self.embeddings else None
        if not timed or n_frames == 0:
            return self._pack(affect, emb)
        tokens = [w["word"].strip() for w in timed]
        model = self.talk_model()
        talk = None
        if model is not None:
            with self._call_lock:   # an NNX module: one call at a time
                talk = tt.talk_by_sentence(tokens, model)
        feats = self.lexicons.word_features(tokens, talk)
        vecs = self._encoder().encode_words(tokens)[1] if self.embeddings else None
        count = np.zeros(n_frames, np.float32)
        for i, w in enumerate(timed):
            # A word occupies the frames whose start lies in [start, end); at least one.
            a = int(math.floor(w["start"] * fps + 1e-6))
            b = max(a + 1, int(math.ceil(w["end"] * fps - 1e-6)))
            a, b = max(a, 0), min(b, n_frames)
            if a >= b:
                continue  # entirely outside the video
            affect[a:b] += feats[i]
            if emb is not None:
                emb[a:b] += vecs[i]
            count[a:b] += 1
        spoken = count > 0
        affect[spoken] /= count[spoken, None]
        if emb is not None:
            emb[spoken] /= count[spoken, None]
        return self._pack(affect, emb)

    @staticmethod
    def _pack(affect, emb):
        out = {"text_affect": affect}
        if emb is not None:
            out["text_emb"] = emb
        return out



# ------------------------------- video level ---------------------------------------------
VIDEO_FEATURES = (
    # level-1 descriptors, aggregated over the answer
    "n_words_log", "sentiment", "positive", "negative",
    *(f"nrc_{e}" for e in NRC_EMOTIONS),
    "hedge_rate", "hesitation_rate", "change_rate", "sustain_rate", "contrast_rate",
    # level-2-style conflict summary
    "change_and_sustain", "talk_balance", "talk_flips", "first_flip_pos", "but_after_change",
    "sustain_after_change", "clause_sent_std", "clause_sent_range", "clause_swings",
    "clause_swing_rate", "clause_max_jump", "clause_valence_conflict", "pos_neg_mix",
    "nrc_pos_neg_mix", "n_clauses_log",
)
_default_lexicons: Lexicons | None = None


def _mix(a: float, b: float) -> float:
    """0 when only one of two non-negative amounts is present, 1 when they are equal."""
    return 2.0 * min(a, b) / (a + b) if a + b > 0 else 0.0


def _clauses(words: Sequence[str], contrast: np.ndarray) -> list[str]:
    """Clause texts: split after , ; : . ! ? ... and before a contrastive connective."""
    out, cur = [], []
    for i, w in enumerate(words):
        if contrast[i] and (i == 0 or not contrast[i - 1]) and cur:
            out.append(" ".join(cur))
            cur = []
        cur.append(w)
        if _CLAUSE_END.search(w):
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return out


def video_text_features(transcript: str, lexicons: Lexicons | None = None) -> dict[str, float]:
    """Named features of one whole answer, keys in ``VIDEO_FEATURES`` order: level 1
    aggregated (length, VADER, NRC emotion rates, rates of hedges, hesitations, change and
    sustain talk, contrastive connectives) and level-2 summaries (co-occurrence, balance
    and flips of change/sustain talk, valence swings between clauses). An empty
    transcript gives zeros (``first_flip_pos`` 1); docs/talk_type.md describes them."""
    global _default_lexicons
    if lexicons is None:
        if _default_lexicons is None:
            _default_lexicons = Lexicons()
        lexicons = _default_lexicons
    words = str(transcript or "").split()
    n = len(words)
    f = dict.fromkeys(VIDEO_FEATURES, 0.0)
    f["first_flip_pos"] = 1.0
    if n == 0:
        return f
    ind = lexicons.word_indicators(words)
    ev = ind["events"]
    whole = lexicons.vader.polarity_scores(" ".join(words))
    nrc = ind["nrc"].mean(0)
    f.update(n_words_log=math.log1p(n), sentiment=whole["compound"], positive=whole["pos"],
             negative=whole["neg"], **{f"nrc_{e}": float(nrc[i]) for i, e in enumerate(NRC_EMOTIONS)})
    for kind in ("hedge", "hesitation", "change", "sustain", "contrast"):
        f[f"{kind}_rate"] = len(ev[kind]) / n
    n_change, n_sustain = len(ev["change"]), len(ev["sustain"])
    f["change_and_sustain"] = float(n_change > 0 and n_sustain > 0)
    f["talk_balance"] = _mix(n_change, n_sustain)
    talk = sorted([(a, "c") for a, _ in ev["change"]] + [(a, "s") for a, _ in ev["sustain"]])
    flips = [talk[i][0] for i in range(1, len(talk)) if talk[i][1] != talk[i - 1][1]]
    f["talk_flips"] = float(len(flips))
    f["first_flip_pos"] = flips[0] / n if flips else 1.0
    f["but_after_change"] = float(len(ev["flip"]))
    f["sustain_after_change"] = float(bool(ev["change"]) and bool(ev["sustain"])
                                      and ev["sustain"][-1][0] > ev["change"][0][0])
    comp = np.array([lexicons.vader.polarity_scores(c)["compound"]
                     for c in _clauses(words, ind["contrast"])])
    f["n_clauses_log"] = math.log1p(len(comp))
    f["clause_sent_std"] = float(comp.std())
    f["clause_sent_range"] = float(comp.max() - comp.min())
    signs = np.sign(comp[np.abs(comp) >= 0.05])  # neutral clauses neither start nor end a swing
    swings = int((signs[1:] != signs[:-1]).sum()) if len(signs) > 1 else 0
    f["clause_swings"] = float(swings)
    f["clause_swing_rate"] = swings / (len(comp) - 1) if len(comp) > 1 else 0.0
    f["clause_max_jump"] = float(np.abs(np.diff(comp)).max()) if len(comp) > 1 else 0.0
    f["clause_valence_conflict"] = float(min(max(comp.max(), 0.0), max(-comp.min(), 0.0)))
    f["pos_neg_mix"] = _mix(whole["pos"], whole["neg"])
    f["nrc_pos_neg_mix"] = _mix(float(nrc[NRC_EMOTIONS.index("positive")]),
                                float(nrc[NRC_EMOTIONS.index("negative")]))
    return {k: float(v) for k, v in f.items()}
