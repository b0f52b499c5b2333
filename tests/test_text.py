"""Level-1 text: lexicon features, MiniLM embeddings and placement of words on frames."""

import numpy as np
import pytest

from level1_affect import schema
from level1_affect import text as T

COL = {name: i for i, name in enumerate(schema.TEXT_AFFECT)}


@pytest.fixture(scope="module")
def lex():
    return T.Lexicons()


@pytest.fixture(scope="module")
def model():
    from level1_affect import minilm
    return minilm.load()


def _words(indicators, kind, words):
    return [words[i] for i in np.flatnonzero(indicators[kind])]


# ---- lexicons ---------------------------------------------------------------------------
def test_change_and_sustain_talk_in_one_sentence(lex):
    words = "I want to quit smoking but I can't".split()
    ind = lex.word_indicators(words)
    assert ind["events"]["change"] == [(0, 2)]                    # "I want to"
    assert ind["events"]["sustain"] == [(5, 7)]                   # "but I can't", one phrase
    assert ind["events"]["flip"] == [(5, 5)]                      # "but" after change talk
    assert _words(ind, "change", words) == ["I", "want", "to", "quit", "smoking"]
    assert _words(ind, "sustain", words) == ["but", "I", "can't"]
    f = T.video_text_features(" ".join(words), lex)
    assert f["change_and_sustain"] == 1.0 and f["talk_flips"] == 1.0
    assert f["but_after_change"] == 1.0 and f["sustain_after_change"] == 1.0
    assert f["first_flip_pos"] == pytest.approx(5 / 8)


def test_hedges_and_negated_commitment(lex):
    words = "maybe I will, I guess".split()
    ind = lex.word_indicators(words)
    assert ind["events"]["hedge"] == [(0, 0), (3, 4)]             # "maybe", "I guess"
    assert ind["events"]["change"] == [(1, 2)]                    # "I will"
    # Negation turns commitment and ability into sustain talk, never change talk.
    for sentence in ("I won't do it", "I will not do it", "I cannot stop", "I don't want to go"):
        ev = lex.word_indicators(sentence.split())["events"]
        assert ev["change"] == [] and ev["sustain"], sentence
    assert T.video_text_features("I am not sure, maybe, kind of", lex)["hedge_rate"] > 0.4


def test_hesitation_markers(lex):
    words = "Um, I I mean... it is uh hard".split()
    ev = lex.word_indicators(words)["events"]["hesitation"]
    marked = {words[i] for a, b in ev for i in range(a, b + 1)}
    assert {"Um,", "I", "mean...", "uh"} <= marked
    assert lex.word_indicators("I mean it".split())["events"]["hesitation"] == [(0, 1)]
    assert lex.word_indicators("It is fine today".split())["events"]["hesitation"] == []


def test_vader_and_nrc_signs(lex):
    pos = lex.word_features("I love this wonderful happy day".split())
    neg = lex.word_features("I hate this terrible awful mess".split())
    assert (pos[:, COL["sentiment"]] > 0).all() and (neg[:, COL["sentiment"]] < 0).all()
    assert pos[:, COL["positive"]].mean() > pos[:, COL["negative"]].mean()
    assert neg[:, COL["negative"]].mean() > neg[:, COL["positive"]].mean()
    assert pos[:, COL["nrc_joy"]].max() > 0 and neg[:, COL["nrc_joy"]].max() == 0
    assert (pos[:, COL["word_present"]] == 1).all()
    # NRC's suffix fallback: "abandoning" is not in the lexicon, "abandon" is.
    assert lex.nrc_vector("abandoning")[T.NRC_EMOTIONS.index("fear")] == 1
    assert T.video_text_features("I love it", lex)["sentiment"] > 0
    assert T.video_text_features("I hate it", lex)["sentiment"] < 0


def test_clause_swings(lex):
    f = T.video_text_features("I love my job. But I hate the commute, it is awful.", lex)
    assert f["clause_swings"] >= 1 and f["clause_valence_conflict"] > 0.3
    flat = T.video_text_features("I love my job. I like my team.", lex)
    assert flat["clause_swings"] == 0 and flat["clause_valence_conflict"] == 0


# ---- MiniLM -----------------------------------------------------------------------------
def test_sentence_embeddings(model):
    e = model.encode_sentences(["This is an example sentence", "Each sentence is converted",
                                "I love my cat.", "I adore my kitten.", "The stock market fell."])
    assert e.shape == (5, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # sentence-transformers' all-MiniLM-L6-v2 on the model card's example sentence.
    np.testing.assert_allclose(e[0, :5], [0.0676569, 0.0634959, 0.0487131, 0.0793050, 0.0374480],
                               atol=1e-4)
    assert e[2] @ e[3] > e[2] @ e[4] + 0.2


def test_padding_and_bucketing_do_not_change_vectors(model):
    short = "I guess so."
    alone = model.encode_sentences([short])
    mixed = model.encode_sentences(["word " * 20, short, "hello"])
    np.testing.assert_allclose(alone[0], mixed[1], atol=2e-5)


def test_word_embeddings(model):
    words, v = model.encode_words("I sat on the river bank, then went to the bank counter.")
    assert words[5] == "bank," and words[10] == "bank" and v.shape == (len(words), 384)
    cos = v[5] @ v[10] / np.linalg.norm(v[5]) / np.linalg.norm(v[10])
    assert cos < 0.98                                   # contextual, not a lookup table
    words, v = model.encode_words(["unbelievably", "", "ok"])
    assert words == ["unbelievably", "ok"] and v.shape == (2, 384)
    long_words, lv = model.encode_words(" ".join(["alpha beta"] * 200))   # > 256 tokens
    assert lv.shape == (400, 384) and np.all(np.abs(lv).sum(1) > 0)
    assert model.encode_words("")[1].shape == (0, 384)


# ---- placement on frames ----------------------------------------------------------------
def test_timed_words_land_on_their_frames(lex, model):
    enc = T.TextEncoder(lexicons=lex, minilm=model)
    words = [{"word": "I", "start": 1.0, "end": 1.2}, {"word": "want", "start": 1.2, "end": 1.5},
             {"word": "to", "start": 1.5, "end": 1.6}, {"word": "quit", "start": 1.6, "end": 2.0},
             {"word": "but", "start": 3.0, "end": 3.2}, {"word": "I", "start": 3.2, "end": 3.3},
             {"word": "can't", "start": 3.3, "end": 3.8}]
    out = enc.encode(words, fps=10.0, n_frames=50)
    a, e = out["text_affect"], out["text_emb"]
    assert a.shape == (50, 18) and e.shape == (50, 384)
    present = np.flatnonzero(a[:, COL["word_present"]])
    assert present.tolist() == list(range(10, 20)) + list(range(30, 38))
    silent = a[:, COL["word_present"]] == 0
    assert not a[silent].any() and not e[silent].any()
    assert a[12:15, COL["change_talk"]].min() > 0 and a[30:32, COL["sustain_talk"]].min() > 0
    # Frames of one word carry its contextual vector.
    np.testing.assert_allclose(e[12], e[14])
    # Tuples are accepted too, and words beyond the video are dropped without error.
    out2 = enc.encode([("late", 9.0, 9.5), ("hi", 0.0, 0.1)], fps=10.0, n_frames=50)
    assert np.flatnonzero(out2["text_affect"][:, -1]).tolist() == [0]


def test_chunks_spread_within_their_spans(lex):
    from ahjax.core.data.transcript import Chunk
    chunks = [Chunk(0.0, 2.0, "hi extraordinarily", "en"), Chunk(3.0, None, "bye now", "en")]
    timed = T.words_from_chunks(chunks)
    assert [w["word"] for w in timed] == ["hi", "extraordinarily", "bye", "now"]
    assert timed[0]["start"] == 0.0 and timed[1]["end"] == pytest.approx(2.0)
    # Proportional to characters: the long word takes most of its chunk.
    assert timed[1]["end"] - timed[1]["start"] > 4 * (timed[0]["end"] - timed[0]["start"])
    assert timed[2]["start"] == 3.0 and timed[3]["end"] == pytest.approx(3.0 + 2 / T.SPEECH_RATE_WPS)
    out = T.TextEncoder(embeddings=False, lexicons=lex).encode(chunks, fps=10.0, n_frames=50)
    assert "text_emb" not in out
    present = out["text_affect"][:, COL["word_present"]]
    assert present[:20].all() and not present[20:30].any() and present[30:38].all()
    assert not present[38:].any()


def test_empty_transcripts_give_zero_features(lex):
    enc = T.TextEncoder(lexicons=lex, minilm=object())   # MiniLM is never touched
    for empty in ([], None, "", "   ", [{"word": " ", "start": 0.0, "end": 1.0}]):
        out = enc.encode(empty, fps=24.0, n_frames=30)
        assert out["text_affect"].shape == (30, 18) and not out["text_affect"].any()
        assert out["text_emb"].shape == (30, 384) and not out["text_emb"].any()
    assert enc.encode([("a", 0, 1)], fps=24.0, n_frames=0)["text_affect"].shape == (0, 18)
    assert T.words_from_chunks(None) == [] and T.words_from_chunks([]) == []
    f = T.video_text_features("", lex)
    assert list(f) == list(T.VIDEO_FEATURES) and f["first_flip_pos"] == 1.0
    assert sum(abs(v) for k, v in f.items() if k != "first_flip_pos") == 0
    with pytest.raises(ValueError):
        enc.encode([], fps=0.0, n_frames=10)
