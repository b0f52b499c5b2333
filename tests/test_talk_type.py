"""The talk-type model and its AnnoMI reader: grouped splits, labels, errors, one real step."""

import csv
import dataclasses
import gzip

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from level1_affect import annomi
from level1_affect import talk_type as tt

FULL_HEADER = ["mi_quality", "transcript_id", "video_title", "video_url", "topic", "utterance_id",
               "interlocutor", "timestamp", "utterance_text", "annotator_id",
               "main_therapist_behaviour", "client_talk_type"]


def _write(path, rows, header=FULL_HEADER):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "n/a") for k in header})
    return path


def _row(tid, uid, who, text, talk="n/a", annotator="0"):
    return dict(transcript_id=tid, utterance_id=uid, interlocutor=who, utterance_text=text,
                client_talk_type=talk, annotator_id=annotator)


@pytest.fixture(scope="module")
def bundled():
    return annomi.read_annomi(None)


def test_bundled_corpus_counts(bundled):
    # The 106 public conversations: 4255 client turns, majority labels as in AnnoMI-simple.
    assert len(bundled) == 4255
    assert len({e.transcript_id for e in bundled}) == 106
    assert np.bincount([e.label for e in bundled]).tolist() == [1042, 2725, 488]
    chex.assert_trees_all_close(np.stack([e.votes for e in bundled]).sum(1), np.ones(4255),
                                atol=1e-6)


def test_majority_ties_and_context(tmp_path):
    rows = [_row("7", 0, "therapist", "What would be good about quitting?"),
            _row("7", 1, "client", "I could breathe better.", "change", "1"),
            _row("7", 1, "client", "I could breathe better.", "neutral", "2"),
            _row("7", 1, "client", "I could breathe better.", "change", "3"),
            _row("7", 2, "client", "But I like it.", "neutral", "1"),
            _row("7", 2, "client", "But I like it.", "sustain", "2"),
            _row("8", 0, "client", "Hello.", "neutral", "1")]
    ex = annomi.read_annomi(_write(tmp_path / "AnnoMI-full.csv", rows))
    assert [(e.transcript_id, e.utterance_id) for e in ex] == [("7", 1), ("7", 2), ("8", 0)]
    assert annomi.LABELS[ex[0].label] == "change"
    chex.assert_trees_all_close(ex[0].votes, np.array([2 / 3, 1 / 3, 0], np.float32))
    assert annomi.LABELS[ex[1].label] == "neutral"          # a tie: the label given first
    assert ex[0].therapist == "What would be good about quitting?" and ex[0].previous == ""
    assert ex[1].therapist == ex[0].therapist and ex[1].previous == "I could breathe better."
    assert ex[2].therapist == "" and ex[2].previous == ""   # a new conversation resets context


def test_folder_prefers_full_and_reads_test_ids(tmp_path):
    _write(tmp_path / "AnnoMI-simple.csv", [_row("1", 0, "client", "x", "change")])
    assert annomi.resolve(tmp_path).name == "AnnoMI-simple.csv"
    _write(tmp_path / "AnnoMI-full.csv", [_row("1", 0, "client", "x", "sustain")])
    assert annomi.resolve(tmp_path).name == "AnnoMI-full.csv"
    assert annomi.test_ids(tmp_path) == []
    (tmp_path / "test_ids.txt").write_text("# held out\n3\n\n5\n")
    assert annomi.test_ids(tmp_path) == ["3", "5"]
    with pytest.raises(FileNotFoundError, match="no such AnnoMI file"):
        annomi.resolve(tmp_path / "missing")


@pytest.mark.parametrize("bad, message", [
    ("missing_column", r"AnnoMI-full.csv: missing column\(s\) client_talk_type"),
    ("unknown_label", r"AnnoMI-full.csv: line 3, column client_talk_type: 'maybe'"),
    ("unknown_speaker", r"AnnoMI-full.csv: line 2, column interlocutor: 'coach'"),
    ("bad_id", r"AnnoMI-full.csv: line 2, column utterance_id: 'x1'"),
])
def test_malformed_csv_names_file_column_row(tmp_path, bad, message):
    rows = [_row("1", 0, "therapist", "Hi."), _row("1", 1, "client", "Hm.", "neutral")]
    header = FULL_HEADER
    if bad == "missing_column":
        header = [h for h in FULL_HEADER if h != "client_talk_type"]
    elif bad == "unknown_label":
        rows[1]["client_talk_type"] = "maybe"
    elif bad == "unknown_speaker":
        rows[0]["interlocutor"] = "coach"
    else:
        rows[0]["utterance_id"] = "x1"
    path = _write(tmp_path / "AnnoMI-full.csv", rows, header)
    with pytest.raises(annomi.AnnoMIError, match=message):
        annomi.read_annomi(path)


def test_gzip_and_empty(tmp_path):
    rows = [_row("1", 0, "client", "I will stop.", "change")]
    src = _write(tmp_path / "a.csv", rows)
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert annomi.read_annomi(gz)[0].label == 0
    with pytest.raises(annomi.AnnoMIError, match="no client utterance"):
        annomi.read_annomi(_write(tmp_path / "b.csv", [_row("1", 0, "therapist", "Hi.")]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_folds_never_leak(seed):
    rng = np.random.default_rng(seed)
    groups = [f"c{g}" for g in rng.integers(0, 23, 400)]
    folds = annomi.grouped_folds(groups, 5, seed)
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(400))        # everyone tested exactly once
    for tr, te in folds:
        assert not {groups[i] for i in tr} & {groups[i] for i in te}
        assert len(set(tr.tolist()) | set(te.tolist())) == 400
    with pytest.raises(ValueError, match="cannot make 5 grouped folds"):
        annomi.grouped_folds(["a", "a", "b"], 5)


def test_grouped_folds_on_the_real_conversations(bundled):
    groups = [e.transcript_id for e in bundled]
    folds = annomi.grouped_folds(groups, 5, 0)
    for tr, te in folds:
        assert not {groups[i] for i in tr} & {groups[i] for i in te}
    sizes = [len(te) for _, te in folds]
    assert max(sizes) - min(sizes) < 60


def test_macro_f1_golden():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 2, 2])
    m = annomi.macro_f1(y, p)
    # change: P 1/1 R 1/2 -> 2/3; neutral: P 2/3 R 2/3 -> 2/3; sustain: P 1/2 R 1 -> 2/3
    assert m["F1_change"] == pytest.approx(2 / 3) and m["F1_sustain"] == pytest.approx(2 / 3)
    assert m["macro_F1"] == pytest.approx(2 / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert annomi.macro_f1(np.array([1, 1]), np.array([1, 1]))["F1_sustain"] == 0.0


def test_config_ranges():
    with pytest.raises(ValueError, match="trainable_layers=-1"):
        tt.TalkTypeConfig(trainable_layers=-1)
    with pytest.raises(ValueError, match="context_tokens=200"):
        tt.TalkTypeConfig(context_tokens=200)


def test_class_weights_favour_the_rare_class():
    votes = np.eye(3)[[0] * 20 + [1] * 70 + [2] * 10]
    w = tt.class_weights(votes, 1.0)
    chex.assert_trees_all_close(w, np.array([100 / 60, 100 / 210, 100 / 30], np.float32), rtol=1e-5)
    assert tt.class_weights(votes, 0.0).tolist() == [1.0, 1.0, 1.0]


def test_rebuilt_layer_equals_minilm():
    """The NNX copy of MiniLM's last layer maps layer-5 states to MiniLM's own output."""
    from level1_affect import minilm
    m = minilm.load()
    enc = tt.encode_inputs(["I want to cut down but it helps me relax."], ["How do you feel about it?"],
                    tt.TalkTypeConfig(trainable_layers=1, encoder="minilm"))
    net = tt.build(tt.TalkTypeConfig(trainable_layers=1, encoder="minilm"))
    net.eval()
    x, mask, seg = enc.batch([0])
    ours = np.asarray(net.layers[0](jnp.asarray(x), jnp.asarray(mask)))[0, :mask.sum()]
    ids = m.tokenizer.encode("How do you feel about it?", add_special_tokens=False).ids
    utt = m.tokenizer.encode("I want to cut down but it helps me relax.", add_special_tokens=False).ids
    seq = [m.cls_id] + ids + [m.sep_id] + utt + [m.sep_id]
    theirs = m.token_states([seq], [enc.segments[0]], layer=6)[0]
    # float16 storage of the frozen states bounds the agreement
    chex.assert_trees_all_close(ours, theirs, atol=2e-2)
    chex.assert_shape(ours, (len(seq), 384))


def test_one_real_step_save_and_load(tmp_path, bundled):
    config = tt.TalkTypeConfig(trainable_layers=1, encoder="minilm", epochs=1, batch_size=8,
                               utterance_tokens=24, context_tokens=8, learning_rate=1e-4)
    few = [e for e in bundled if e.transcript_id == bundled[0].transcript_id][:8]
    model = tt.train_examples(few, config)
    probs = model.predict_proba([e.text for e in few], [e.therapist for e in few])
    chex.assert_shape(probs, (8, 3))
    chex.assert_tree_all_finite(probs)
    chex.assert_trees_all_close(probs.sum(1), np.ones(8), atol=1e-5)
    model.save(tmp_path / "m")
    again = tt.load(tmp_path / "m")
    assert again.config == config
    chex.assert_trees_all_close(
        again.predict_proba([e.text for e in few], [e.therapist for e in few]), probs, atol=1e-5)
    # the step moved the head away from MiniLM's initial weights
    fresh = tt.build(config)
    assert not np.allclose(np.asarray(fresh.head.kernel.value), np.asarray(again.net.head.kernel.value))


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory):
    """A 3-layer BERT of random weights in transformers' format, with MiniLM's tokenizer:
    what a user's own encoder folder looks like (config.json, model.safetensors,
    tokenizer.json)."""
    import shutil
    import transformers
    from ahjax.core import assets
    folder = tmp_path_factory.mktemp("bert") / "small-bert"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=512)
    import torch
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(str(folder), safe_serialization=True)
    shutil.copy(assets.fetch("minilm") / "tokenizer.json", folder / "tokenizer.json")
    return folder


def test_another_bert_encoder_by_path(tmp_path, bundled, small_bert):
    config = tt.TalkTypeConfig(trainable_layers=2, epochs=1, batch_size=8, utterance_tokens=24,
                               context_tokens=8, encoder=str(small_bert))
    few = [e for e in bundled if e.transcript_id == bundled[0].transcript_id][:8]
    enc = tt.encode_inputs([e.text for e in few], [e.therapist for e in few], config)
    assert enc.states[0].shape[1] == 32        # the folder's width, not MiniLM's 384
    model = tt.fit(enc, np.stack([e.votes for e in few]), config)
    assert len(model.net.layers) == 2
    probs = model.predict_proba([e.text for e in few], [e.therapist for e in few])
    chex.assert_shape(probs, (8, 3))
    chex.assert_tree_all_finite(probs)
    model.save(tmp_path / "m")                 # the folder is part of the saved config
    again = tt.load(tmp_path / "m")
    assert again.config.encoder == str(small_bert)
    chex.assert_trees_all_close(
        again.predict_proba([e.text for e in few], [e.therapist for e in few]), probs, atol=1e-5)
    with pytest.raises(ValueError, match="trainable_layers=4: the encoder .*small-bert has 3 layers"):
        tt.build(tt.TalkTypeConfig(trainable_layers=4, encoder=str(small_bert)))
    broken = tmp_path / "no-weights"
    broken.mkdir()
    (broken / "config.json").write_bytes((small_bert / "config.json").read_bytes())
    with pytest.raises(ValueError, match="no-weights lacks model.safetensors"):
        tt.TalkTypeConfig(encoder=str(broken))   # at once, not after the data is encoded


def test_load_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a talk-type model"):
        tt.load(tmp_path)


# ---- into the frame tracks and the video-level view ----------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, bundled):
    config = tt.TalkTypeConfig(trainable_layers=1, encoder="minilm", epochs=1, batch_size=8,
                               utterance_tokens=24, context_tokens=8, learning_rate=1e-4)
    path = tmp_path_factory.mktemp("talk") / "model"
    tt.train_examples(bundled[:16], config).save(path)
    return path


def test_sentences_golden():
    from level1_affect.talk_type import sentences
    words = "I want to stop. But I love it, you know, honestly I do".split()
    assert sentences(words) == [(0, 4), (4, 13)]
    assert sentences(["a"] * 50, max_words=40) == [(0, 40), (40, 50)]
    assert sentences([]) == []


def test_frame_tracks_come_from_the_model(tiny_model):
    from level1_affect import schema
    from level1_affect.talk_type import talk_by_sentence
    from level1_affect.text import TextEncoder
    words = [("I", 0.0, 0.2), ("will", 0.2, 0.4), ("quit.", 0.4, 0.8), ("But", 1.0, 1.2),
             ("I", 1.2, 1.3), ("love", 1.3, 1.6), ("it.", 1.6, 2.0)]
    learned = TextEncoder(embeddings=False, talk_type=str(tiny_model), window=1)
    lexicon = TextEncoder(embeddings=False, talk_type="lexicon", window=1)
    a = learned.encode(words, fps=10, n_frames=20)["text_affect"]
    b = lexicon.encode(words, fps=10, n_frames=20)["text_affect"]
    col = {n: i for i, n in enumerate(schema.TEXT_AFFECT)}
    talk = talk_by_sentence([w for w, _, _ in words], learned.talk_model())
    # window 1: a frame's column is its word's sentence probability
    chex.assert_trees_all_close(a[1, [col["change_talk"], col["sustain_talk"]]], talk[0], atol=1e-6)
    chex.assert_trees_all_close(a[14, [col["change_talk"], col["sustain_talk"]]], talk[5], atol=1e-6)
    assert 0 < a[1, col["change_talk"]] < 1                    # probabilities, not 0/1 rules
    assert b[1, col["change_talk"]] in (0.0, 1.0)
    # the other columns do not depend on where talk types come from
    other = [i for n, i in col.items() if n not in ("change_talk", "sustain_talk")]
    chex.assert_trees_all_close(a[:, other], b[:, other])


def test_extract_config_checks():
    from level1_affect.extract import ExtractConfig
    with pytest.raises(ValueError, match="detect_every=0"):
        ExtractConfig(detect_every=0)
    with pytest.raises(ValueError, match="talk_type='nowhere'"):
        ExtractConfig(talk_type="nowhere")
    with pytest.raises(ValueError, match="asr='sometimes'"):
        ExtractConfig(asr="sometimes")


def test_video_talk_features_golden(tiny_model):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
    f = tt.video_talk_features(probs)
    assert list(f) == list(tt.VIDEO_TALK_FEATURES)
    assert f["talk_change_max"] == pytest.approx(0.7) and f["talk_sustain_max"] == pytest.approx(0.6)
    assert f["talk_change_and_sustain"] == pytest.approx(0.42)
    assert f["talk_flips"] == 2.0                                 # c, s, (neutral), c
    assert f["talk_balance"] == pytest.approx(2 * 1.0 / 2.5)
    assert tt.video_talk_features(np.zeros((0, 3)))["talk_flips"] == 0.0
    model = tt.load(tiny_model)
    per = tt.transcript_talk(["I will quit. But I love it.", ""], model)
    assert per[0].shape == (2, 3) and per[1].shape == (0, 3)
    assert len(tt.model_id(tiny_model)) == 12


def test_feature_stores_are_keyed_by_the_talk_type_model(tmp_path, tiny_model, monkeypatch):
    from level1_affect.extract import ExtractConfig, default_store_dir, talk_identity
    monkeypatch.setenv("AHJAX_CACHE", str(tmp_path / "cache"))
    dirs = {t: default_store_dir(tmp_path, ExtractConfig(talk_type=t))
            for t in ("learned", "lexicon", str(tiny_model))}
    assert len(set(dirs.values())) == 3
    assert talk_identity("learned") == f"default-v{tt.DEFAULT_VERSION}"
    assert talk_identity(str(tiny_model)) == tt.model_id(tiny_model)
    # a retrained default (a new version) gets a new store
    monkeypatch.setattr(tt, "DEFAULT_VERSION", tt.DEFAULT_VERSION + 1)
    assert default_store_dir(tmp_path, ExtractConfig()) != dirs["learned"]


def test_behaviour_of_the_therapist_turn_before(tmp_path):
    rows = [dict(_row("7", 0, "therapist", "What would be good about quitting?"),
                 main_therapist_behaviour="question"),
            _row("7", 1, "client", "I could breathe better.", "change", "1"),
            dict(_row("7", 2, "therapist", "You'd breathe better.", annotator="1"),
                 main_therapist_behaviour="reflection"),
            dict(_row("7", 2, "therapist", "You'd breathe better.", annotator="2"),
                 main_therapist_behaviour="reflection"),
            dict(_row("7", 2, "therapist", "You'd breathe better.", annotator="3"),
                 main_therapist_behaviour="question"),
            _row("7", 3, "client", "But I like it.", "sustain", "1"),
            _row("8", 0, "client", "Hello.", "neutral", "1")]
    ex = annomi.read_annomi(_write(tmp_path / "AnnoMI-full.csv", rows))
    assert [annomi.BEHAVIOURS[e.behaviour] if e.behaviour >= 0 else None for e in ex] == \
        ["question", "reflection", None]          # majority of annotators; none before "Hello."
    assert ex[1].previous == "I could breathe better."


def test_context_head_step_save_load_and_aux(tmp_path, bundled):
    """The frozen-encoder head: real MiniLM sentence embeddings of the utterance, the
    therapist turn and the previous client turn; one epoch; saved and read back."""
    few = [e for e in bundled if e.transcript_id == bundled[0].transcript_id][:16]
    config = tt.TalkTypeConfig(trainable_layers=0, encoder="minilm", hidden=32, epochs=2, batch_size=8,
                               learning_rate=1e-3, aux_weight=0.5)
    enc = tt.encode_inputs([e.text for e in few], [e.therapist for e in few], config,
                    previous=[e.previous for e in few], cache=tmp_path / "rows")
    assert isinstance(enc, tt.Pooled) and enc.features.shape == (16, 3 * 384 + 2)
    # presence flags: the first client turn has no previous turn
    assert enc.features[0, -1] == 0.0 and enc.features[1, -1] == 1.0
    np.testing.assert_array_equal(enc.features[0, 2 * 384:3 * 384], 0.0)
    assert len(list((tmp_path / "rows").rglob("*.npy"))) > 0     # rows cached by text
    model = tt.fit(enc, np.stack([e.votes for e in few]), config,
                   behaviour=np.array([e.behaviour for e in few]))
    probs = model.predict_proba([e.text for e in few], [e.therapist for e in few],
                                [e.previous for e in few])
    chex.assert_shape(probs, (16, 3))
    chex.assert_trees_all_close(probs, model.predict_encoded(enc), atol=1e-5)
    model.save(tmp_path / "m")
    again = tt.load(tmp_path / "m")
    assert again.config == config
    chex.assert_trees_all_close(again.predict_encoded(enc), probs, atol=1e-5)
    # the auxiliary head learns from the behaviour labels only when it is weighted (no
    # weight decay in the unweighted run, which would move it too)
    votes, beh = np.stack([e.votes for e in few]), np.array([e.behaviour for e in few])
    off = tt.fit(enc, votes, dataclasses.replace(config, aux_weight=0.0, weight_decay=0.0),
                 behaviour=beh)
    fresh = tt.build(config)
    moved = lambda m: not np.allclose(np.asarray(m.net.behaviour.kernel.value),
                                      np.asarray(fresh.behaviour.kernel.value))
    assert moved(model) and not moved(off)


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", float("inf"), "learning_rate=inf: must be a finite number"),
    ("aux_weight", -1.0, "aux_weight=-1.0: must be a finite number >= 0"),
    ("dropout", 1.0, "dropout=1.0: must be below 1"),
    ("hidden", 0, "hidden=0: must be at least 1"),
    ("trainable_layers", -1, "trainable_layers=-1: must be at least 0")])
def test_context_head_config_checks(field, value, message):
    with pytest.raises(ValueError, match=message):
        tt.TalkTypeConfig(**{field: value})
