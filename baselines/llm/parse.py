"""Reading a model's answer as one of the two labels, strictly, and counting what fails.

``strict`` (the default) accepts only an exact label on the first line; ``reference`` is
the paper's lenient rule, which never fails. :class:`Tally` counts answers per outcome.
Both rules in full: docs/paper_setups.md, "Parsing answers".
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from baselines.llm.prompts import NEGATIVE, POSITIVE

RULES = ("strict", "reference")
_NOT_LETTERS = re.compile(r"[^a-z]+")
_POS_KEY = _NOT_LETTERS.sub("", POSITIVE.lower())
_NEG_KEY = _NOT_LETTERS.sub("", NEGATIVE.lower())


def parse_answer(text: str | None, rule: str = "strict") -> int | None:
    """1 (A/H), 0 (no A/H) or None (unparseable, strict rule only) for an answer ``text``."""
    if rule not in RULES:
        raise ValueError(f"unknown parse rule {rule!r}; known: {', '.join(RULES)}")
    text = "" if text is None else str(text)
    if rule == "reference":
        return 0 if text.split(":")[-1].strip() == NEGATIVE else 1
    first = next((line for line in text.splitlines() if line.strip()), "")
    key = _NOT_LETTERS.sub("", first.lower())
    if key == _POS_KEY:
        return 1
    if key == _NEG_KEY:
        return 0
    return None


def score_decision(label_logprobs: Mapping[str, float] | None) -> int | None:
    """1/0 from the label log-probabilities (the likelier label), None without them."""
    if not label_logprobs:
        return None
    return int(label_logprobs[POSITIVE] > label_logprobs[NEGATIVE])


def decide(text: str | None, label_logprobs: Mapping[str, float] | None = None,
           rule: str = "strict", unparsed: str = "score") -> tuple[int, bool]:
    """(decision 0/1, whether the answer parsed) for one answer.

    Under the strict rule an unparseable answer is decided by ``unparsed``: ``"score"``
    (the likelier label by log-probability, else 0), ``"negative"`` (0) or ``"positive"``
    (1); it is always reported as not parsed, so a caller can count it.
    """
    label = parse_answer(text, rule)
    if label is not None:
        return label, True
    if unparsed == "score":
        by_score = score_decision(label_logprobs)
        return (0 if by_score is None else by_score), False
    if unparsed in ("negative", "positive"):
        return int(unparsed == "positive"), False
    raise ValueError(f"unparsed must be 'score', 'negative' or 'positive', got {unparsed!r}")


@dataclasses.dataclass
class Tally:
    """Counts of answers: recognised positive/negative, and unparseable (with examples)."""

    positive: int = 0
    negative: int = 0
    unparsed: int = 0
    examples: list = dataclasses.field(default_factory=list)
    max_examples: int = 5

    def add(self, text: str | None, rule: str = "strict") -> int | None:
        """Parse ``text`` under ``rule``, count it, and return the parsed label (or None)."""
        label = parse_answer(text, rule)
        if label is None:
            self.unparsed += 1
            if len(self.examples) < self.max_examples:
                self.examples.append(str(text))
        elif label == 1:
            self.positive += 1
        else:
            self.negative += 1
        return label

    @property
    def total(self) -> int:
        """All answers counted."""
        return self.positive + self.negative + self.unparsed

    @property
    def unparsed_rate(self) -> float:
        """Share of answers that were not one of the two labels (0.0 when none counted)."""
        return self.unparsed / self.total if self.total else 0.0
