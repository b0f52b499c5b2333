"""A backend's answer, its errors, and the A/H probability from the two labels' scores."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from baselines.llm.prompts import NEGATIVE, POSITIVE


class BackendError(RuntimeError):
    """A backend failed: a bad request, a prompt too long, a missing runtime."""


class BackendUnavailable(BackendError):
    """The model server could not be reached (after the configured retries)."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """A model's answer: the generated ``text`` and, where available, each label's log-prob."""

    text: str
    label_logprobs: dict | None = None


def positive_probability(label_logprobs: Mapping[str, float] | None) -> float | None:
    """P(A/H) = p(Ambivalent) / (p(Ambivalent) + p(Non-Ambivalent)), or None without scores."""
    if not label_logprobs:
        return None
    d = float(label_logprobs[POSITIVE]) - float(label_logprobs[NEGATIVE])
    # sigmoid of the log-odds, written to stay finite for any d
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))
