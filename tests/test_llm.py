"""Zero-shot LLM baselines: prompts, parsing, windows, and real backends run small.

The GGUF tests run Gemma 3 270M (the ``gemma3_270m_gguf`` asset) through llama-cpp-python
and skip only when llama_cpp is not importable; the HTTP tests start a real
``llama_cpp.server`` on 127.0.0.1 (plus a scripted stub server for the failure paths);
the Video-LLaVA tests build a tiny randomly initialised model and skip without torch.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from baselines.llm import parse, prompts, zeroshot
from baselines.llm.answer import Answer, BackendError, BackendUnavailable, positive_probability
from baselines.llm.backends import OpenAIBackend
from level1_affect import schema

TRANSCRIPT = "I want to exercise more, but maybe not this week."


# ---- parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,label", [
    ("Ambivalent", 1), ("Non-Ambivalent", 0), (" ambivalent.", 1), ("NON-AMBIVALENT", 0),
    ("non ambivalent", 0), ("**Ambivalent**", 1), ('"Non-Ambivalent."', 0),
    ("\n\nAmbivalent\nBecause the person hesitates.", 1),
    ("Ambivalent, because she hesitates", None), ("Not ambivalent", None), ("Yes", None),
    ("", None), (None, None), ("Ambivalent Non-Ambivalent", None), ("Nonambivalentish", None),
])
def test_strict_parse(text, label):
    assert parse.parse_answer(text, "strict") == label


def test_reference_rule_is_lenient():
    assert parse.parse_answer("Non-Ambivalent", "reference") == 0
    assert parse.parse_answer("  Non-Ambivalent \n", "reference") == 0
    # the reference splits the decoded text on ":" and keeps the last part
    assert parse.parse_answer("ASSISTANT: Non-Ambivalent", "reference") == 0
    assert parse.parse_answer("Answer: non-ambivalent", "reference") == 1
    # anything else, even a clear negative in other words, is positive
    for text in ("non-ambivalent", "Non-Ambivalent.", "No", "", "I cannot tell"):
        assert parse.parse_answer(text, "reference") == 1
    with pytest.raises(ValueError):
        parse.parse_answer("x", "lenient")


def test_unparseable_answers_are_counted_and_decided_by_rule():
    tally = parse.Tally()
    for text in ("Ambivalent", "non-ambivalent", "Maybe?", "Ambivalent", "", "The person"):
        tally.add(text)
    assert (tally.positive, tally.negative, tally.unparsed) == (2, 1, 3)
    assert tally.total == 6 and tally.unparsed_rate == pytest.approx(0.5)
    assert tally.examples == ["Maybe?", "", "The person"]
    scores = {prompts.POSITIVE: -1.0, prompts.NEGATIVE: -3.0}
    assert parse.decide("Maybe?", scores) == (1, False)
    assert parse.decide("Maybe?", None) == (0, False)
    assert parse.decide("Maybe?", scores, unparsed="negative") == (0, False)
    assert parse.decide("Maybe?", None, rule="reference") == (1, True)
    assert parse.decide("Non-Ambivalent", scores) == (0, True)


def test_positive_probability_from_label_logprobs():
    assert positive_probability(None) is None
    p = positive_probability({prompts.POSITIVE: np.log(0.3), prompts.NEGATIVE: np.log(0.1)})
    assert p == pytest.approx(0.75)
    assert positive_probability({prompts.POSITIVE: -2000.0, prompts.NEGATIVE: 0.0}) == 0.0


# ---- prompts ---------------------------------------------------------------------------
def test_paper_prompts_are_verbatim():
    """Golden strings: the five Table 6 prompts as the authors' reference script builds them."""
    instr = ("Classify the emotion in the video as either 'Non-Ambivalent' or 'Ambivalent'."
             "\nRespond with only one word: ")
    d1 = ("Definition: Ambivalence is the state of having contradictory or conflicting feelings "
          "or attitudes towards something or someone simultaneously.")
    d2 = ("Definition: Ambivalence and Hesitancy is understood as the simultaneous experience "
          "of desires for change and against change.")
    t = f"Video transcript: {TRANSCRIPT}. "
    assert prompts.PAPER_PROMPTS == ("simple", "def1", "def2", "transcript_def1", "transcript_def2")
    golden = {"simple": instr, "def1": d1 + instr, "def2": d2 + instr,
              "transcript_def1": t + d1 + instr, "transcript_def2": t + d2 + instr}
    for name, text in golden.items():
        assert prompts.build_prompt(name, TRANSCRIPT) == text, name


def test_all_prompts_present_distinct_and_well_formed():
    assert prompts.ALL_PROMPTS == prompts.PAPER_PROMPTS + ("transcript_simple", "evidence")
    texts = {n: prompts.build_prompt(n, TRANSCRIPT, evidence="face: neutral")
             for n in prompts.ALL_PROMPTS}
    assert len(set(texts.values())) == 7
    for name, text in texts.items():
        assert text.endswith(prompts.INSTRUCTION)
        assert "'Ambivalent'" in text and "'Non-Ambivalent'" in text
        assert (TRANSCRIPT in text) == prompts.uses_transcript(name), name
        assert text.startswith("Video transcript: ") == prompts.uses_transcript(name), name
    assert prompts.DEFINITION_1 in texts["def1"] and prompts.DEFINITION_1 in texts["transcript_def1"]
    assert prompts.DEFINITION_2 in texts["def2"] and prompts.DEFINITION_2 in texts["evidence"]
    assert texts["transcript_simple"] == f"Video transcript: {TRANSCRIPT}. " + prompts.INSTRUCTION
    assert "face: neutral" in texts["evidence"]
    # an empty segment transcript is said, not left blank; whitespace cannot break the line
    assert prompts.NO_SPEECH in prompts.build_prompt("transcript_simple", "  ")
    assert "\n" not in prompts.build_prompt("transcript_def1", "one\ntwo").split("Definition")[0]
    with pytest.raises(KeyError, match="unknown prompt 'definition_3'"):
        prompts.build_prompt("definition_3")
    with pytest.raises(ValueError, match="needs the evidence text"):
        prompts.build_prompt("evidence", TRANSCRIPT)


def _level1_arrays(n=100):
    """Synthetic level-1 tracks: smiling 60% of frames, flat pitch, pauses, positive words."""
    a, b, c, d = (int(round(f * n)) for f in (0.6, 0.8, 0.5, 0.7))
    face_expr = np.zeros((n, 7), np.float32)
    face_expr[:a, schema.FACE_EXPR.index("happy")] = 1.0
    face_expr[a:, schema.FACE_EXPR.index("neutral")] = 1.0
    face_desc = np.zeros((n, len(schema.FACE_DESC)), np.float32)
    face_desc[:a, schema.FACE_DESC.index("smile")] = 0.8
    prosody = np.zeros((n, len(schema.VOICE_PROSODY)), np.float32)
    col = schema.VOICE_PROSODY.index
    prosody[:b, col("voice_active")] = 1
    prosody[:b, col("voiced")] = 1
    prosody[:b, col("pitch_z")] = np.linspace(-0.2, 0.2, b)
    prosody[b:, col("pause")] = 1
    text = np.zeros((n, len(schema.TEXT_AFFECT)), np.float32)
    t = schema.TEXT_AFFECT.index
    text[:, t("word_present")] = 1
    text[:, t("sentiment")] = 0.5
    text[c:d, t("hedge")] = 1
    text[: int(0.3 * n), t("change_talk")] = 1
    text[d:, t("sustain_talk")] = 1
    return {"face_expr": face_expr, "face_desc": face_desc, "voice_prosody": prosody,
            "text_affect": text, "face_present": np.ones((n, 1), np.float32)}


def test_evidence_text_from_level1_arrays():
    arrays = _level1_arrays()
    line = prompts.describe_evidence(arrays, text=TRANSCRIPT)
    face, voice, words = line.split("; ", 2)[0], line.split("; voice")[1], line.split("words: ")[1]
    assert face.startswith("face: mostly happy (60%)") and "neutral (40%)" in face
    assert "expression changes 1 time" in face and "smiling 60% of the time" in line
    assert "speaking 80% of the time" in voice and "flat pitch" in voice
    assert "pauses 20% of the time" in voice
    assert words.startswith("positive") and "'but', 'maybe'" in words
    assert "both change talk and sustain talk" in words
    # a slice describes only its frames: the last 20 are a pause with a neutral face
    tail = prompts.describe_evidence(arrays, start=80, end=100)
    assert tail.startswith("face: mostly neutral (100%)") and "voice: silent" in tail
    with pytest.raises(ValueError):
        prompts.describe_evidence(arrays, start=100, end=100)


# ---- sampling and windows ---------------------------------------------------------------
def test_uniform_indices_match_the_reference():
    # np.linspace(0, total_frames - 1, 8, dtype=int), as the reference script
    assert zeroshot.uniform_indices(160).tolist() == [0, 22, 45, 68, 90, 113, 136, 159]
    assert zeroshot.uniform_indices(163).tolist() == np.linspace(0, 162, 8, dtype=int).tolist()
    assert zeroshot.uniform_indices(5).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    with pytest.raises(ValueError):
        zeroshot.uniform_indices(0)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 103, 696])
def test_segments_cover_every_frame_once(n):
    segs = zeroshot.segments(n, 8)
    covered = np.zeros(n, int)
    for a, b in segs:
        assert 0 <= a < b <= n and b - a <= 8
        covered[a:b] += 1
    assert np.all(covered == 1)
    assert all(b - a == 8 for a, b in segs[:-1])
    answers = np.arange(len(segs), dtype=float)
    per_frame = zeroshot.spread(n, segs, answers)
    for k, (a, b) in enumerate(segs):  # each segment's answer copied to its frames
        assert np.all(per_frame[a:b] == k)


def test_overlapping_segments_average_and_cover():
    segs = zeroshot.segments(20, 8, stride=4)
    assert segs == [(0, 8), (4, 12), (8, 16), (12, 20)]
    per_frame = zeroshot.spread(20, segs, [1.0, 0.0, 0.0, 1.0])
    assert per_frame[:4].tolist() == [1.0] * 4 and per_frame[4:8].tolist() == [0.5] * 4
    with pytest.raises(ValueError):
        zeroshot.segments(10, 8, stride=9)


def test_segment_words_follow_chunk_timestamps():
    from level1_affect.text import words_from_chunks
    chunks = [{"start": 0.0, "end": 1.0, "text": "I want"}, {"start": 2.0, "end": None, "text": "but no"}]
    words = words_from_chunks(chunks, end_time=4.0)
    # words share a chunk's span by length + 1: "I" is [0, 2/7 s), "want" [2/7, 1 s)
    assert zeroshot.words_in(words, 0.0, 0.25) == "I"
    assert zeroshot.words_in(words, 0.25, 0.34) == "I want"
    assert zeroshot.words_in(words, 0.5, 1.5) == "want"
    assert zeroshot.words_in(words, 1.2, 1.9) == ""
    assert zeroshot.words_in(words, 0.0, 10.0) == "I want but no"


def _write_video(path, n=21, size=32, fps=8):
    """An mp4 whose frame i is flat grey at level 10 * i (to read the index back)."""
    import av
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for i in range(n):
            frame = np.full((size, size, 3), 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


class _Recorder:
    """A multimodal stand-in that records the frames it is shown and answers by rule."""

    name, accepts_video = "recorder", True

    def __init__(self):
        self.clips = []

    def generate(self, prompt, images=None):
        self.clips.append([int(round(float(f.mean()) / 10)) for f in images])
        return Answer(prompts.POSITIVE if len(self.clips) % 2 else prompts.NEGATIVE, None)


def test_frames_reach_a_multimodal_backend_as_the_reference_samples_them(tmp_path):
    path = tmp_path / "v.mp4"
    _write_video(path, n=21)
    labels = np.array([1] * 8 + [0] * 13)
    item = zeroshot.VideoItem("v", 21, 8.0, TRANSCRIPT, [], labels, 1, video_path=str(path))
    rec = _Recorder()
    zeroshot.video_level(rec, item, "simple", zeroshot.AnswerCache())
    assert rec.clips == [zeroshot.uniform_indices(21).tolist()]
    rec.clips.clear()
    m = zeroshot.evaluate(rec, [item], "simple", "frame")
    # every frame shown once, in order, in 8-frame clips (the last one shorter)
    assert rec.clips == [list(range(0, 8)), list(range(8, 16)), list(range(16, 21))]
    # answers: positive, negative, positive -> copied to their frames
    assert m["N_ANSWERS"] == 3 and m["UNPARSED"] == 0.0
    assert m["F1_POS"] == pytest.approx(2 * 8 / (8 + 13))  # 8 true positives of 13 predicted
    rec.clips.clear()
    zeroshot.evaluate(rec, [item], "simple", "frame", size=8, stride=4)
    assert rec.clips[:2] == [list(range(0, 8)), list(range(4, 12))] and rec.clips[-1] == list(range(16, 21))


# ---- the GGUF backend (llama.cpp) ------------------------------------------------------
@pytest.fixture(scope="module")
def gguf():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/install_llm.sh)")
    from baselines.llm.backends import LlamaCppBackend
    return LlamaCppBackend(n_ctx=1024, max_tokens=6)


def test_gguf_answers_and_scores_both_labels(gguf):
    prompt = prompts.build_prompt("transcript_simple", TRANSCRIPT)
    answer = gguf.generate(prompt)
    assert isinstance(answer, Answer) and isinstance(answer.text, str)
    lp = answer.label_logprobs
    assert set(lp) == {prompts.POSITIVE, prompts.NEGATIVE}
    assert all(np.isfinite(v) and v < 0 for v in lp.values())
    assert gguf.score_labels(prompt) == lp
    assert gguf.generate(prompt).text == answer.text  # greedy: deterministic
    # the label scores are the model's: a different transcript moves them
    other = gguf.score_labels(prompts.build_prompt("transcript_simple", "Yes, I love it."))
    assert other != pytest.approx(lp, abs=1e-3)


def test_gguf_prompt_cache_reuse_is_exact(gguf, monkeypatch):
    """Scores do not depend on what was asked before: bit-identical after a prompt that
    shares a long prefix (whole cached blocks are reused, and only the rest is evaluated)
    and after one that shares nothing."""
    long = " ".join([TRANSCRIPT] * 6)
    a = prompts.build_prompt("transcript_simple", long + " Yes.")
    b = prompts.build_prompt("transcript_simple", long + " No.")
    toks_a = gguf._tokens(gguf.template.format(prompt=a.rstrip()))
    toks_b = gguf._tokens(gguf.template.format(prompt=b.rstrip()))
    n_a = len(toks_a)
    shared = next(i for i, (x, y) in enumerate(zip(toks_a, toks_b)) if x != y)
    assert gguf.BLOCK < shared < 2 * gguf.BLOCK and n_a > shared + 8
    lp = gguf.score_labels(a)
    gguf.generate(b)
    evaluated = []
    real_eval = gguf.llm.eval
    monkeypatch.setattr(gguf.llm, "eval", lambda toks: (evaluated.append(len(toks)), real_eval(toks))[1])
    assert gguf.score_labels(a) == lp
    assert evaluated[0] == n_a - gguf.BLOCK  # the shared first block was not re-run
    monkeypatch.undo()
    gguf.score_labels(prompts.build_prompt("simple"))
    assert gguf.score_labels(a) == lp


def test_gguf_label_score_is_the_token_chain(gguf):
    """The summed log-prob equals the label tokens' log-softmax read from a second model
    that keeps every position's logits (llama-cpp-python's own ``scores``), fed the same
    aligned blocks and single tokens (llama.cpp's numbers depend on the batch split)."""
    import llama_cpp
    prompt = prompts.build_prompt("simple")
    lp = gguf.score_labels(prompt)
    text = gguf.template.format(prompt=prompt.rstrip())
    toks = gguf._tokens(text)
    fresh = llama_cpp.Llama(model_path=str(gguf.model_path), n_ctx=256, n_batch=64,
                            logits_all=True, verbose=False)
    for label, value in lp.items():
        full = gguf._tokens(text + " " + label)
        assert full[: len(toks)] == toks and len(full) > len(toks) + 1  # several label tokens
        fresh.reset()
        for i in range(0, len(toks), gguf.BLOCK):
            fresh.eval(toks[i: i + gguf.BLOCK])
        for t in full[len(toks):]:
            fresh.eval([t])
        logits = np.asarray(fresh.scores[: len(full)], np.float64)
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        expected = sum(logp[i - 1, full[i]] for i in range(len(toks), len(full)))
        assert value == pytest.approx(expected, abs=1e-3), label


def test_gguf_refuses_frames_and_overlong_prompts(gguf):
    with pytest.raises(BackendError, match="text-only"):
        gguf.generate("x", images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(BackendError, match="does not fit"):
        gguf.score_labels("word " * 2000)


def test_zeroshot_evaluate_video_and_frame_level(gguf):
    from level1_affect.text import words_from_chunks
    chunks = [{"start": 0.0, "end": 1.0, "text": "I want to stop"},
              {"start": 1.0, "end": 1.6, "text": "but maybe not"}]
    items = []
    for k in range(3):  # 8 fps: 2-3 segments of 1 s each
        n = 16 + 4 * k
        labels = np.zeros(n, int)
        labels[4:12] = 1 if k != 1 else 0
        labels[-2:] = -1
        items.append(zeroshot.VideoItem(f"v{k}", n, 8.0, TRANSCRIPT, words_from_chunks(chunks, n / 8),
                                        labels, int(labels.max() == 1), arrays=_level1_arrays(n)))
    cache = zeroshot.AnswerCache()
    video = zeroshot.evaluate(gguf, items, "transcript_simple", "video", cache=cache)
    assert video["N_ANSWERS"] == 3 and video["N_CALLS"] == 1  # same transcript: one call
    frame = zeroshot.evaluate(gguf, items, "transcript_simple", "frame", cache=cache)
    n_segments = sum(len(zeroshot.segments(i.n_frames)) for i in items)
    assert frame["N_ANSWERS"] == n_segments == 8
    assert frame["N_CALLS"] == 3  # segments with the same words were answered once
    for m in (video, frame):
        assert {"AVGF1", "AP", "WAR", "F1_POS", "F1_NEG", "AVGF1_REF", "UNPARSED"} <= set(m)
        assert 0.0 <= m["AVGF1"] <= 1.0 and 0.0 <= m["UNPARSED"] <= 1.0
    evidence = zeroshot.evaluate(gguf, items[:1], "evidence", "frame")
    assert evidence["N_ANSWERS"] == evidence["N_CALLS"] == 2


# ---- the OpenAI-compatible HTTP backend --------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(gguf, tmp_path_factory):
    # No skip here: scripts/install_llm.sh installs the [server] extra with llama_cpp, and a
    # missing piece shows up below as the server's own import error.
    port = _free_port()
    # The server logs a lot to stderr: a file, not a pipe nobody reads (it would block).
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    err = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf.model_path),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("llama_cpp.server did not start within 90 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        err.close()


@pytest.mark.slow
def test_http_backend_against_a_real_server(gguf, llama_server):
    """Text and scores from llama_cpp.server equal llama.cpp's own, computed here the way the
    server computes them (whole prompt in one batch): so the request (template, greedy, first
    line), the echoed label tokens and the first-token fallback are read right.

    The server's echo sorts the whole vocabulary (262k for Gemma) in Python for every
    prompt token, so the echo check uses a short prompt."""
    import llama_cpp
    ref = llama_cpp.Llama(model_path=str(gguf.model_path), n_ctx=512, n_threads=1,
                          logits_all=True, verbose=False)
    prompt = prompts.build_prompt("simple")
    text = gguf.template.format(prompt=prompt.rstrip())
    remote = OpenAIBackend(llama_server, "gemma", max_tokens=gguf.max_tokens, timeout=60,
                           retries=1, scoring="none").generate(prompt)
    direct = ref.create_completion(text, max_tokens=gguf.max_tokens, temperature=0)
    assert remote.text == direct["choices"][0]["text"].lstrip("\n").split("\n")[0].strip()
    # the same model answers the same through either backend (Gemma starts on a new line:
    # a server-side stop at newline would return nothing)
    assert remote.text and remote.text == gguf.generate(prompt).text

    short = "Answer:"  # with template "{prompt}": 3 prompt tokens, so 2 x 7 echoed tokens
    text = short
    toks = gguf._tokens(text)

    def logp_of(tokens):
        ref.reset()
        ref.eval(tokens)
        logits = np.asarray(ref.scores[: len(tokens)], np.float64)
        return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

    echo = OpenAIBackend(llama_server, scoring="echo", template="{prompt}", timeout=60).score_labels(short)
    for label, value in echo.items():
        full = gguf._tokens(text + " " + label)
        logp = logp_of(full)
        # The server reuses the prefix cached from its previous request, which changes
        # llama.cpp's batch split and so its numbers slightly (exact selection of the
        # echoed tokens is checked against the stub server below).
        assert value == pytest.approx(sum(logp[i - 1, full[i]] for i in range(len(toks), len(full))),
                                      abs=0.3), label
    first = OpenAIBackend(llama_server, scoring="first_token", template="{prompt}",
                          timeout=60).score_labels(short)
    row = logp_of(toks)[-1]
    top = np.argsort(-row)[:20]
    for label, value in first.items():
        hits = [row[t] for t in top if (piece := ref.detokenize([int(t)]).decode(errors="ignore").strip())
                and label.startswith(piece)]
        expected = np.logaddexp.reduce(hits) if hits else row[top].min() - np.log(2)
        assert value == pytest.approx(expected, abs=1e-3), label


def test_http_backend_server_down_fails_clearly_and_quickly():
    port = _free_port()  # nothing listens there
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", retries=2, backoff=0.05, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        backend.generate("Is this ambivalent?")
    assert time.monotonic() - t0 < 5
    message = str(err.value)
    assert f"127.0.0.1:{port}/v1/completions" in message and "3 attempt(s)" in message
    assert "llama_cpp.server" in message


class _Script(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a per-server script: a list of (status, body) consumed in order."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        status, reply = self.server.script.pop(0) if self.server.script else (500, "empty")
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    server.script, server.requests = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _text(text):
    return {"choices": [{"text": text, "logprobs": None}]}


def test_http_backend_malformed_answers(stub):
    server, url = stub
    backend = OpenAIBackend(url, retries=2, backoff=0.01, scoring="none")
    server.script[:] = [(200, b"<html>not json</html>")]
    with pytest.raises(BackendError, match="not JSON"):
        backend.generate("q")
    server.script[:] = [(200, {"object": "error"})]
    with pytest.raises(BackendError, match="no choices"):
        backend.generate("q")
    server.script[:] = [(400, {"error": "bad model"})]
    n = len(server.requests)
    with pytest.raises(BackendError, match="HTTP 400") as err:
        backend.generate("q")
    assert not isinstance(err.value, BackendUnavailable) and len(server.requests) == n + 1
    # 5xx is retried, then the answer is used; a rambling answer is unparsed, not guessed
    server.script[:] = [(503, "busy"), (500, "oops"), (200, _text(" I think the person is unsure"))]
    answer = backend.generate("q")
    assert answer.text == "I think the person is unsure" and answer.label_logprobs is None
    outcome = zeroshot.judge(answer)
    assert outcome.parsed is False and outcome.decision == 0 and outcome.reference == 1
    assert server.requests[-1][1]["temperature"] == 0
    # an answer that starts on a new line is read from its first non-empty line
    server.script[:] = [(200, _text("\nNon-Ambivalent\nBecause"))]
    assert backend.generate("q").text == "Non-Ambivalent"


def test_http_backend_echo_sums_exactly_the_label_tokens(stub):
    server, url = stub
    backend = OpenAIBackend(url, retries=0, template="{prompt}", scoring="echo")
    # "Q:" + " Non-Ambivalent" echoed, then one generated token "." that must not count
    tokens = ["Q", ":", " Non", "-", "Amb", "ivalent", "."]
    offsets = [0, 1, 2, 6, 7, 10, 17]
    values = [None, -1.0, -2.0, -0.5, -0.25, -0.125, -3.0]
    echoed = {"choices": [{"text": "Q: Non-Ambivalent.", "logprobs": {
        "tokens": tokens, "text_offset": offsets, "token_logprobs": values}}]}
    pos = {"choices": [{"text": "Q: Ambivalent.", "logprobs": {
        "tokens": ["Q", ":", " Amb", "ivalent", "."], "text_offset": [0, 1, 2, 6, 13],
        "token_logprobs": [None, -1.0, -4.0, -0.5, -9.0]}}]}
    server.script[:] = [(200, pos), (200, echoed)]
    scores = backend.score_labels("Q:")
    assert scores == {prompts.POSITIVE: -4.5, prompts.NEGATIVE: -2.875}
    assert [body["prompt"] for _, body in server.requests] == ["Q: Ambivalent", "Q: Non-Ambivalent"]
    assert all(body["echo"] and body["logprobs"] == 1 for _, body in server.requests)


def test_http_backend_falls_back_when_echo_is_refused(stub):
    server, url = stub
    backend = OpenAIBackend(url, retries=0)
    top = {" Non": -0.5, " Amb": -1.5, " The": -2.0, " Ambi": -3.0}
    server.script[:] = [(200, _text(" Non-Ambivalent")), (400, {"error": "echo not supported"}),
                        (200, {"choices": [{"text": " Non", "logprobs": {"top_logprobs": [top]}}]})]
    answer = backend.generate("q")
    assert parse.parse_answer(answer.text) == 0 and backend.scoring == "first_token"
    assert answer.label_logprobs[prompts.NEGATIVE] == pytest.approx(-0.5)
    assert answer.label_logprobs[prompts.POSITIVE] == pytest.approx(np.logaddexp(-1.5, -3.0))


# ---- Video-LLaVA (transformers, torch) ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_videollava():
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e .[videollava])")
    transformers = pytest.importorskip("transformers")
    # The pinned transformers (4.57.6) has it; losing it on an upgrade must fail, not skip.
    assert hasattr(transformers, "VideoLlavaForConditionalGeneration")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from baselines.llm.videollava import VideoLlavaBackend
    pre = pre_tokenizers.Whitespace()
    corpus = " ".join(prompts.build_prompt(n, TRANSCRIPT) for n in prompts.PAPER_PROMPTS)
    corpus += " USER: ASSISTANT: " + " ".join(prompts.LABELS)
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "<video>"]
    vocab = {t: i for i, t in enumerate(specials + sorted({w for w, _ in pre.pre_tokenize_str(corpus)}))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", additional_special_tokens=["<image>", "<video>"])
    torch.manual_seed(0)
    config = transformers.VideoLlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=28, patch_size=14, projection_dim=32),
        text_config=transformers.LlamaConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
            pad_token_id=1, bos_token_id=2, eos_token_id=3),
        image_token_index=vocab["<image>"], video_token_index=vocab["<video>"])
    model = transformers.VideoLlavaForConditionalGeneration(config).eval()
    return VideoLlavaBackend(model, tok, max_new_tokens=4)


def _clip(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (36, 48, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.slow
def test_videollava_plumbing(tiny_videollava):
    be = tiny_videollava
    frames = _clip()
    prompt = prompts.build_prompt("transcript_def1", TRANSCRIPT)
    inputs, n_answer = be.encode(prompt, frames, prompts.NEGATIVE)
    ids = inputs["input_ids"][0]
    # 8 frames x ((28 / 14)^2 patches + CLS) video tokens, then the answer's 3 tokens
    assert int((ids == be.model.config.video_token_index).sum()) == 8 * 5 and n_answer == 3
    assert tuple(inputs["pixel_values_videos"].shape) == (1, 8, 3, 28, 28)
    answer = be.generate(prompt, frames)
    assert isinstance(answer.text, str) and set(answer.label_logprobs) == set(prompts.LABELS)
    assert all(np.isfinite(v) and v < 0 for v in answer.label_logprobs.values())
    other = be.score_labels(prompt, _clip(seed=1))
    assert other != pytest.approx(answer.label_logprobs, abs=1e-6)  # the frames matter
    with pytest.raises(BackendError):
        be.generate(prompt)


def test_videollava_loads_from_a_local_folder(tiny_videollava, tmp_path):
    from baselines.llm.backends import make_backend
    tiny_videollava.model.save_pretrained(tmp_path / "vl")
    tiny_videollava.tokenizer.save_pretrained(tmp_path / "vl")
    loaded = make_backend("videollava", path=str(tmp_path / "vl"), device="cpu", dtype="float32")
    frames, prompt = _clip(), prompts.build_prompt("simple")
    assert loaded.score_labels(prompt, frames) == pytest.approx(
        tiny_videollava.score_labels(prompt, frames), abs=1e-5)
    with pytest.raises(BackendError, match="not found"):
        make_backend("videollava", path=str(tmp_path / "missing"))


def test_clip_preprocessing_matches_transformers():
    pytest.importorskip("torch", reason="torch is not installed")
    from transformers import VideoLlavaImageProcessor
    from baselines.llm.videollava import clip_preprocess
    yy, xx = np.mgrid[0:240, 0:320]
    frame = np.stack([(xx * 255 / 319), (yy * 255 / 239), 128 + 60 * np.sin(xx / 15.0)], -1).astype(np.uint8)
    ours = clip_preprocess([frame], 224).numpy()
    ref = VideoLlavaImageProcessor()(images=[frame], return_tensors="np")["pixel_values_images"]
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    assert np.abs(ours - ref).mean() < 0.01 and np.abs(ours - ref).max() < 0.1


def test_reference_frame_squash_matches_pil_then_processor():
    """The reference resizes each frame to 224 x 224 with PIL before the processor."""
    pytest.importorskip("torch", reason="torch is not installed")
    from PIL import Image
    from transformers import VideoLlavaImageProcessor
    from baselines.llm.videollava import TEMPLATE, clip_preprocess
    yy, xx = np.mgrid[0:240, 0:320]
    frame = np.stack([(xx * 255 / 319), (yy * 255 / 239), 128 + 60 * np.sin(xx / 15.0)], -1).astype(np.uint8)
    ours = clip_preprocess([frame], 224, squash=224).numpy()
    pil = np.asarray(Image.fromarray(frame).resize((224, 224), Image.BICUBIC))
    ref = VideoLlavaImageProcessor()(images=[pil], return_tensors="np")["pixel_values_images"]
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    assert np.abs(ours - ref).mean() < 0.01 and np.abs(ours - ref).max() < 0.15
    # the chat wrapper is the reference's, with the prompt verbatim between its parts
    assert TEMPLATE.format(prompt=prompts.build_prompt("simple")) == (
        "USER: <video>\n" + prompts.INSTRUCTION + "ASSISTANT:")


def test_lora_step_trains_only_the_adapters(tiny_videollava):
    import copy
    import torch
    from baselines.llm.videollava import LoRALinear, VideoLlavaBackend, add_lora, lora_parameters, lora_step
    base = tiny_videollava
    be = VideoLlavaBackend(copy.deepcopy(base.model), base.tokenizer, max_new_tokens=2)
    frames = _clip(seed=2)
    prompt = prompts.build_prompt("def2")
    before = be.score_labels(prompt, frames)
    wrapped = add_lora(be.model, rank=4, alpha=8)
    assert len(wrapped) == 4 and all(isinstance(be.model.get_submodule(n), LoRALinear) for n in wrapped)
    # B starts at zero: the adapted model answers exactly as the base one
    assert be.score_labels(prompt, frames) == pytest.approx(before, abs=1e-5)
    frozen = {n: p.detach().clone() for n, p in be.model.named_parameters() if ".lora_" not in n}
    params = lora_parameters(be.model)
    assert len(params) == 8 and all(p.requires_grad for p in params)
    opt = torch.optim.AdamW(params, lr=0.02)
    losses = [lora_step(be, opt, [(prompt, frames, 1)]) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    for n, p in be.model.named_parameters():
        if ".lora_" not in n:
            assert torch.equal(p, frozen[n]), n
    after = be.score_labels(prompt, frames)
    assert after[prompts.POSITIVE] > before[prompts.POSITIVE]


# ---- the experiment --------------------------------------------------------------------
@pytest.mark.slow
def test_table7_quick_runs_on_the_demo_and_split_files(gguf, tmp_path):
    from experiments import run as runner
    config = runner.build_config("table7", ["--config.quick=True"])
    results, run_dir = runner.run("table7", config, tmp_path)
    for level in ("video", "frame"):
        table = results[f"all-{level}"]
        assert set(table) == {"gguf:simple", "gguf:transcript_simple"}
        assert all(0 <= row["AVGF1"] <= 1 for row in table.values())
    assert (run_dir / "results.md").read_text().count("gguf:transcript_simple") == 2
    # without the transcript a text-only model gets one prompt for every segment
    assert results["all-frame"]["gguf:simple"]["N_CALLS"] == 0  # answered at video level
    # split-file mode, on split files written here in the release's format
    splits = tmp_path / "splits"
    splits.mkdir()
    rows = {"train": [(1, 1), (1, 0), (4, 1), (4, 1)], "val": [(1, 0), (4, 1), (4, 0), (1, 1)]}
    for split, lines in rows.items():
        (splits / f"{split}.txt").write_text("".join(
            f"Videos/{split}{i}/Visite_1/{split}{i}_Question_{q}_2024-10-02 16-03-28_Video.mp4,{y},"
            f"I want to, but maybe not {i}\n" for i, (q, y) in enumerate(lines)))
    config = runner.build_config("table7", ["--config.quick=True", f"--config.splits={splits}"])
    results, _ = runner.run("table7", config, tmp_path)
    table = results["val-video"]
    # max_videos=2 keeps the first positive and the first negative: labels [1, 0], their
    # questions 4 and 1, whose train A/H rates are 1.0 and 0.5
    from ahjax.core.metrics import bah_metrics
    expected = bah_metrics(np.array([1, 0]), np.array([1.0, 0.5]))
    for metric in ("AVGF1", "AP", "WAR"):
        assert table["question_only"][metric] == pytest.approx(expected[metric])
    assert set(table) == {"question_only", "gguf:transcript_simple"}  # transcript prompts only
    assert table["gguf:transcript_simple"]["N_ANSWERS"] == 2
    # a dead server costs only its own rows: the other backend's results and a note remain
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    config = runner.build_config("table7", [
        "--config.quick=True", f"--config.splits={splits}", "--config.backend.kinds=openai,gguf",
        f"--config.backend.server_url={dead}", "--config.backend.server_timeout=2"])
    results, _ = runner.run("table7", config, tmp_path)
    assert set(results["val-video"]) == {"question_only", "gguf:transcript_simple"}
    assert any(n.startswith("openai stopped at openai:transcript_simple") and dead in n
               for n in results["notes"])
