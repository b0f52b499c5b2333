"""One interface over the models that answer the zero-shot prompts.

A backend has ``generate(prompt, images=None) -> Answer``, ``score_labels(prompt) ->
{label: logprob}`` (None where it cannot) and ``accepts_video``. Backends:
:class:`LlamaCppBackend` (a local GGUF model), :class:`OpenAIBackend` (an OpenAI-compatible
server) and Video-LLaVA (``baselines.llm.videollava``, torch; optional), built by name with
:func:`make_backend`. How labels are scored: docs/paper_setups.md, "Zero-shot backends".
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np

from ahjax.core import assets
from baselines.llm.answer import Answer, BackendError, BackendUnavailable
from baselines.llm.prompts import LABELS

TEMPLATE = "{prompt}\nAnswer:"
INSTALL_HINT = ("install llama-cpp-python: `bash scripts/install_llm.sh` (builds it once into "
                "the wheel cache) or `pip install -e .[llm]`")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


# ---- (a) llama.cpp ---------------------------------------------------------------------
class LlamaCppBackend:
    """A local GGUF model through llama-cpp-python, greedy and deterministic.

    ``model_path`` defaults to the ``gemma3_270m_gguf`` asset, ``n_threads`` to half the
    logical cores (docs/paper_setups.md, "Zero-shot"); ``score`` adds the label log-probs to
    each answer. :class:`BackendError` when llama-cpp-python is missing or the file won't load.
    """

    name = "gguf"
    accepts_video = False

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 2048,
                 n_threads: int | None = None, n_batch: int = 256, template: str = TEMPLATE,
                 max_tokens: int = 8, score: bool = True, seed: int = 0, verbose: bool = False):
        try:
            import llama_cpp
        except ImportError as err:
            raise BackendError(f"the GGUF backend needs llama-cpp-python ({err}); {INSTALL_HINT}") from None
        if model_path is None:
            model_path = assets.fetch("gemma3_270m_gguf")
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise BackendError(f"GGUF model file not found: {path}")
        self._lib = llama_cpp
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch,
                                       n_threads=n_threads, seed=seed,
                                       logits_all=False, verbose=verbose)
        except (ValueError, RuntimeError) as err:
            raise BackendError(f"llama.cpp could not load {path}: {err}") from None
        self.model_path, self.template, self.max_tokens, self.score = path, template, max_tokens, score
        self.n_ctx = n_ctx
        self._n_vocab = self.llm.n_vocab()
        self._block_end = 0       # cache positions evaluated as aligned prompt blocks
        self._last = None         # (prompt tokens, logits after them) of the latest prompt
        self._cont: list[int] = []  # tokens evaluated one by one after that prompt
        self._eos = {self.llm.token_eos()}
        # Gemma's end-of-turn token also ends an answer; models without it just lack the id.
        eot = self.llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
        if len(eot) == 1:
            self._eos.add(eot[0])

    # -- low level. llama.cpp's logits depend on how a sequence was split into batches (up to
    # 0.5 nats here for the same tokens), so results would depend on what was asked before.
    # Prompts are therefore always evaluated in blocks aligned to multiples of BLOCK
    # positions, and only whole cached blocks are reused: the same prompt gives bit-identical
    # logits whatever the cache held (tested), and a shared instruction prefix is still
    # evaluated once. Answer and label tokens after the prompt go one at a time.
    BLOCK = 64

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def _logits(self) -> np.ndarray:
        # With logits_all=False llama.cpp keeps only the last position's logits.
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def _prompt(self, tokens: list[int]) -> np.ndarray:
        """Evaluate ``tokens`` as a prompt (aligned blocks, whole cached blocks reused);
        returns the logits after its last token."""
        if len(tokens) + self.max_tokens >= self.n_ctx:
            raise BackendError(f"prompt of {len(tokens)} tokens does not fit the context of "
                               f"{self.n_ctx} tokens; raise n_ctx or shorten the transcript")
        if self._last is not None and self._last[0] == tokens:
            return self._last[1]
        cached = self.llm.input_ids[: min(self.llm.n_tokens, self._block_end)]
        same = 0
        while same < min(len(cached), len(tokens)) and cached[same] == tokens[same]:
            same += 1
        start = min(same // self.BLOCK * self.BLOCK, (len(tokens) - 1) // self.BLOCK * self.BLOCK)
        self.llm.n_tokens = start
        for i in range(start, len(tokens), self.BLOCK):
            self.llm.eval(tokens[i: i + self.BLOCK])
        self._block_end, self._cont = len(tokens), []
        logits = self._logits()
        self._last = (list(tokens), logits)
        return logits

    def _continue(self, prompt: list[int], extra: Sequence[int]) -> np.ndarray:
        """Logits after ``prompt + extra``, ``extra`` evaluated one token at a time."""
        self._prompt(prompt)
        # Single-token steps at the same positions are identical computations: reuse the
        # continuation already in the cache, always re-running the last token for its logits.
        k = 0
        while k < min(len(self._cont), len(extra) - 1) and self._cont[k] == extra[k]:
            k += 1
        self.llm.n_tokens = len(prompt) + k
        for t in extra[k:]:
            self.llm.eval([t])
        self._cont = list(extra)
        return self._logits()

    def _label_tokens(self, prompt_tokens: list[int], text: str, label: str) -> list[int]:
        """The label's tokens as they follow the prompt (joint tokenisation when it agrees)."""
        joint = self._tokens(text + " " + label)
        if joint[: len(prompt_tokens)] == prompt_tokens and len(joint) > len(prompt_tokens):
            return joint[len(prompt_tokens):]
        return self.llm.tokenize((" " + label).encode("utf-8"), add_bos=False, special=False)

    def _score(self, prompt_tokens: list[int], first_logits: np.ndarray, text: str) -> dict:
        out = {}
        for label in LABELS:
            toks = self._label_tokens(prompt_tokens, text, label)
            logits, total = first_logits, 0.0
            for i, t in enumerate(toks):
                total += float(_log_softmax(logits)[t])
                if i + 1 < len(toks):
                    logits = self._continue(prompt_tokens, toks[: i + 1])
            out[label] = total
        return out

    def score_labels(self, prompt: str, images=None) -> dict:
        """{label: summed log-probability of the label after the prompt}."""
        _no_frames(self, images)
        text = self.template.format(prompt=prompt.rstrip())
        toks = self._tokens(text)
        return self._score(toks, self._prompt(toks), text)

    def generate(self, prompt: str, images=None) -> Answer:
        """Greedy answer (up to ``max_tokens``, stopping at a newline or end token)."""
        _no_frames(self, images)
        text = self.template.format(prompt=prompt.rstrip())
        toks = self._tokens(text)
        logits = self._prompt(toks)
        scores = self._score(toks, logits, text) if self.score else None
        out: list[int] = []
        for _ in range(self.max_tokens):
            t = int(np.argmax(logits))
            if t in self._eos:
                break
            out.append(t)
            piece = self.llm.detokenize(out, prev_tokens=toks).decode("utf-8", errors="ignore")
            if "\n" in piece.lstrip("\n"):
                break
            logits = self._continue(toks, out)
        answer = self.llm.detokenize(out, prev_tokens=toks).decode("utf-8", errors="ignore")
        return Answer(answer.strip(), scores)


def _no_frames(backend, images) -> None:
    if images is not None and len(images):
        raise BackendError(f"the {backend.name} backend is text-only; it was given "
                           f"{len(images)} frame(s). Use a multimodal backend or a text prompt.")


# ---- (b) OpenAI-compatible HTTP server -------------------------------------------------
def _png_data_url(frame: np.ndarray) -> str:
    import imageio.v3 as iio
    buf = io.BytesIO()
    iio.imwrite(buf, np.asarray(frame, np.uint8), extension=".png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend:
    """A model behind an OpenAI-compatible API at ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``).

    Text goes to ``/completions``, frames to ``/chat/completions`` (with ``accepts_video``);
    ``scoring`` is ``echo``, ``first_token``, ``auto`` or ``none``, and failures are retried
    (docs/paper_setups.md, "Zero-shot"); then :class:`BackendUnavailable` names the URL.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str = "", *, api_key: str | None = None,
                 template: str = TEMPLATE, max_tokens: int = 8, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5, scoring: str = "auto",
                 accepts_video: bool = False):
        if scoring not in ("auto", "echo", "first_token", "none"):
            raise ValueError(f"scoring must be auto, echo, first_token or none, got {scoring!r}")
        self.base_url = base_url.rstrip("/")
        self.model, self.template, self.max_tokens = model, template, max_tokens
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.scoring, self.accepts_video = scoring, accepts_video
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")

    def _post(self, path: str, body: dict) -> dict:
        url = self.base_url + path
        data = json.dumps({**({"model": self.model} if self.model else {}), **body}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", errors="replace")[:500]
                if err.code == 429 or err.code >= 500:
                    last = f"HTTP {err.code}: {detail}"
                    continue
                raise BackendError(f"{url} refused the request: HTTP {err.code}: {detail}") from None
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as err:
                last = str(getattr(err, "reason", err) or type(err).__name__)
            except json.JSONDecodeError as err:
                raise BackendError(f"{url} answered with something that is not JSON: {err}") from None
        raise BackendUnavailable(
            f"no answer from the OpenAI-compatible server at {url} after {self.retries + 1} "
            f"attempt(s): {last}. Is the server running? For a local GGUF: "
            f"`python -m llama_cpp.server --model FILE.gguf --host 127.0.0.1 --port 8000`.")

    def generate(self, prompt: str, images=None) -> Answer:
        """The server's greedy answer, with label scores for text prompts (see ``scoring``)."""
        if images is not None and len(images):
            if not self.accepts_video:
                _no_frames(self, images)
            content = [{"type": "text", "text": prompt}]
            content += [{"type": "image_url", "image_url": {"url": _png_data_url(f)}} for f in images]
            out = self._post("/chat/completions", {
                "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": 0})
            try:
                text = out["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise BackendError(f"{self.base_url}/chat/completions: unexpected answer {str(out)[:300]}") from None
            return Answer(text.strip(), None)
        # No "stop" at a newline: a model that starts its answer on a new line would return
        # nothing. As the GGUF backend, leading newlines are skipped and the first line kept.
        out = self._post("/completions", {"prompt": self.template.format(prompt=prompt.rstrip()),
                                          "max_tokens": self.max_tokens, "temperature": 0})
        text = (_choice(out, self.base_url)["text"] or "").lstrip("\n").split("\n")[0]
        return Answer(text.strip(), self.score_labels(prompt))

    def score_labels(self, prompt: str, images=None) -> dict | None:
        """{label: log-prob} by ``scoring``; None for frames or ``scoring="none"``."""
        if self.scoring == "none" or (images is not None and len(images)):
            return None
        text = self.template.format(prompt=prompt.rstrip())
        if self.scoring in ("echo", "auto"):
            try:
                return {label: self._echo_logprob(text, " " + label) for label in LABELS}
            except BackendError as err:
                if self.scoring == "echo" or isinstance(err, BackendUnavailable):
                    raise
                self.scoring = "first_token"  # this server will not echo: stop asking
        return self._first_token(text)

    def _echo_logprob(self, text: str, continuation: str) -> float:
        out = self._post("/completions", {"prompt": text + continuation, "max_tokens": 1,
                                          "temperature": 0, "echo": True, "logprobs": 1})
        lp = _choice(out, self.base_url).get("logprobs") or {}
        offsets, values = lp.get("text_offset"), lp.get("token_logprobs")
        if not offsets or not values:
            raise BackendError(f"{self.base_url} gave no echoed prompt log-probabilities")
        lo, hi = len(text), len(text) + len(continuation)
        # The label's tokens are those that start inside its span of the echoed text.
        picked = [v for o, v in zip(offsets, values) if lo <= o < hi]
        if not picked or any(v is None for v in picked):
            raise BackendError(f"{self.base_url}: the echoed log-probabilities do not cover the label")
        return float(sum(picked))

    def _first_token(self, text: str) -> dict:
        out = self._post("/completions", {"prompt": text, "max_tokens": 1, "temperature": 0,
                                          "logprobs": 20})
        lp = _choice(out, self.base_url).get("logprobs") or {}
        top = (lp.get("top_logprobs") or [None])[0]
        if not top:
            raise BackendError(f"{self.base_url} gave no top log-probabilities; use scoring='none'")
        floor = min(top.values()) - math.log(2.0)  # below anything listed: not in the top 20
        scores = {}
        for label in LABELS:
            hits = [v for tok, v in top.items() if tok.strip() and label.startswith(tok.strip())]
            scores[label] = float(np.logaddexp.reduce(hits)) if hits else floor
        return scores


def _choice(out: dict, where: str) -> dict:
    try:
        return out["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"{where}: unexpected answer (no choices): {str(out)[:300]}") from None


# ---- registry --------------------------------------------------------------------------
def make_backend(kind: str, **kwargs):
    """A backend by name: ``gguf`` (LlamaCppBackend), ``openai`` (OpenAIBackend) or
    ``videollava`` (``videollava.VideoLlavaBackend.from_pretrained``); ``kwargs`` go to it."""
    if kind == "gguf":
        return LlamaCppBackend(**kwargs)
    if kind == "openai":
        return OpenAIBackend(**kwargs)
    if kind == "videollava":
        from baselines.llm.videollava import VideoLlavaBackend   # needs torch (optional)
        return VideoLlavaBackend.from_pretrained(**kwargs)
    raise ValueError(f"unknown backend {kind!r}; known: gguf, openai, videollava")
