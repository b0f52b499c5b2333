"""Change / neutral / sustain talk on real counselling data (AnnoMI).

``python -m experiments.run talk_type`` scores, by conversation-grouped cross-validation
(no conversation in both the training and the scored part), detectors of the client's talk
type: ``lexicon`` (level 1's phrase rules), ``tfidf_logreg``, ``minilm_logreg``/
``mpnet_logreg`` (frozen sentence embeddings) and ``talk_type`` (the learned model of
``level1_affect.talk_type``; ``talk_type/no_context`` reads each utterance alone). Every
method is scored against the majority label. With ``--data.annomi=DIR`` and
``DIR/test_ids.txt`` the listed conversations are held out and scored once; the learned
model trained on every other conversation is saved in ``models/talk_type``.
docs/talk_type.md ("The methods compared") has the details.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from level1_affect.dataset import DataConfig, annomi_source
from ahjax.core import assets
from level1_affect import annomi, encoders
from level1_affect import talk_type as tt
from level1_affect.text import Lexicons

METHODS = ("lexicon", "tfidf_logreg", "minilm_logreg", "mpnet_logreg", "talk_type")


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: tt.TalkTypeConfig = tt.TalkTypeConfig()
    methods: tuple = METHODS
    folds: int = 5
    seed: int = 0
    logreg_c: tuple = (0.03, 0.1, 0.3, 1.0, 3.0)
    inner_folds: int = 3
    # Variants of ``model`` for the learned method, as (field, value) overrides; with more
    # than one, each outer training part chooses by an inner grouped CV (nested).
    choices: tuple = ((("encoder", "minilm"),), (("encoder", "mpnet"),),
                      (("encoder", "minilm"), ("aux_weight", 0.5)),
                      (("encoder", "mpnet"), ("aux_weight", 0.5)))
    install_default: bool = False   # copy the trained model to the packaged default's folder
    quick: bool = False


def get_config(quick: bool = False) -> Config:
    """The full run, or (``quick``) 12 conversations, 3 folds, one epoch, for tests."""
    if not quick:
        return Config()
    return Config(data=DataConfig(max_conversations=12),
                  model=tt.TalkTypeConfig(encoder="minilm", hidden=32, epochs=2),
                  methods=tuple(m for m in METHODS if m != "mpnet_logreg"),
                  choices=((), (("aux_weight", 0.5),)),
                  folds=3, logreg_c=(0.3, 3.0), inner_folds=2, quick=True)


# ---- the baselines ---------------------------------------------------------------------
def lexicon_predict(texts) -> np.ndarray:
    """Talk type by the phrase rules: more change or more sustain words; neutral if none."""
    lex = Lexicons()
    out = []
    for text in texts:
        ind = lex.word_indicators(text.split())
        c, s = float(ind["change"].sum()), float(ind["sustain"].sum())
        out.append(1 if c == 0 and s == 0 else (0 if c > s else 2))
    return np.array(out, int)


def _logreg_oof(x, y, groups, c_grid, folds, seed):
    """Best C by inner grouped CV (macro-F1), then the model fitted on all of ``x``."""
    from sklearn.linear_model import LogisticRegression

    def model(c):
        return LogisticRegression(C=c, max_iter=3000, class_weight="balanced")

    inner = annomi.grouped_folds(groups, folds, seed)
    best = None
    for c in c_grid:
        pred = np.zeros(len(y), int)
        for tr, te in inner:
            pred[te] = model(c).fit(_take(x, tr), y[tr]).predict(_take(x, te))
        score = annomi.macro_f1(y, pred)["macro_F1"]
        if best is None or score > best[0]:
            best = (score, c)
    return model(best[1]).fit(x, y), best[1]


def _take(x, idx):
    return x[idx] if not isinstance(x, list) else [x[i] for i in idx]


class _Features:
    """Every method's inputs for a list of examples, computed once."""

    def __init__(self, examples, config: Config, methods):
        texts = [e.text for e in examples]
        self.texts = texts
        self.tfidf_texts = texts
        cache = assets.cache_dir() / "sentence_emb"
        self.sentence = {}
        for name in ("minilm", "mpnet"):
            if f"{name}_logreg" in methods:
                m = encoders.load(name)
                self.sentence[name] = np.hstack([
                    tt.sentence_rows(texts, m, cache),
                    tt.sentence_rows([e.therapist for e in examples], m, cache)])
        self.examples, self.cache, self._inputs = examples, cache, {}
        self.behaviour = np.array([e.behaviour for e in examples])
        if "talk_type" in methods:
            for model in candidates(config):
                self.inputs(model)

    def inputs(self, model: tt.TalkTypeConfig, plain: bool = False):
        """The encoded inputs for a model config (computed once per encoder setting);
        ``plain``: the same utterances with no context, as level 1 reads a monologue."""
        key = (model.encoder or "minilm", model.trainable_layers, model.context_tokens,
               model.utterance_tokens, plain)
        if key not in self._inputs:
            ex = self.examples
            self._inputs[key] = tt.encode_inputs(
                self.texts, [""] * len(ex) if plain else [e.therapist for e in ex], model,
                previous=None if plain else [e.previous for e in ex], cache=self.cache)
        return self._inputs[key]


def candidates(config: Config) -> list[tt.TalkTypeConfig]:
    """The learned method's model configs: ``model`` with each override of ``choices``."""
    return [dataclasses.replace(config.model, **dict(c)) for c in config.choices]


def _choose(feats: _Features, votes, y, groups, tr, config: Config) -> tuple[int, list]:
    """Index of the candidate with the best inner grouped-CV macro-F1 on ``tr`` alone,
    and every candidate's inner score."""
    models = candidates(config)
    if len(models) == 1:
        return 0, []
    inner = annomi.grouped_folds([groups[i] for i in tr], config.inner_folds, config.seed)
    scores = []
    for model in models:
        pred = np.zeros(len(tr), int)
        enc = feats.inputs(model)
        for itr, ite in inner:
            fitted = tt.fit(enc.subset(tr[itr]), votes[tr[itr]], model,
                            behaviour=feats.behaviour[tr[itr]])
            pred[ite] = fitted.predict_encoded(enc.subset(tr[ite])).argmax(1)
        scores.append(annomi.macro_f1(y[tr], pred)["macro_F1"])
    return int(np.argmax(scores)), scores


def _fit_predict(method, feats: _Features, y, votes, groups, tr, te, config: Config, tag: str):
    """Predictions (n_te,) of ``method`` trained on ``tr``, ``{variant: predictions}`` of
    the same trained model read another way (``talk_type``: without context), and the
    index of the chosen candidate (``talk_type``; else None)."""
    if method == "lexicon":
        return lexicon_predict([feats.texts[i] for i in te]), {}, None
    if method == "tfidf_logreg":
        from sklearn.feature_extraction.text import TfidfVectorizer
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x_tr = vec.fit_transform(_take(feats.texts, tr))
        model, _ = _logreg_oof(x_tr, y[tr], [groups[i] for i in tr], config.logreg_c,
                               config.inner_folds, config.seed)
        return model.predict(vec.transform(_take(feats.texts, te))), {}, None
    if method in ("minilm_logreg", "mpnet_logreg"):
        x = feats.sentence[method.split("_")[0]]
        model, _ = _logreg_oof(x[tr], y[tr], [groups[i] for i in tr],
                               config.logreg_c, config.inner_folds, config.seed)
        return model.predict(x[te]), {}, None
    if method == "talk_type":
        best, scores = _choose(feats, votes, y, groups, tr, config)
        chosen = candidates(config)[best]
        if scores:
            print(f"[talk_type {tag}] chosen {dict(config.choices[best])} (inner macro-F1 "
                  + ", ".join(f"{s:.3f}" for s in scores) + ")", file=sys.stderr, flush=True)
        model = tt.fit(feats.inputs(chosen).subset(tr), votes[tr], chosen, progress=tag,
                       behaviour=feats.behaviour[tr])
        return (model.predict_encoded(feats.inputs(chosen).subset(te)).argmax(1),
                {"no_context": model.predict_encoded(
                    feats.inputs(chosen, plain=True).subset(te)).argmax(1)}, best)
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def _confusion_figure(table: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(m, r) for m, r in table.items() if "confusion" in r]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, (method, row) in zip(axes[0], rows):
        conf = np.array(row["confusion"], float)
        share = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black", fontsize=8)
        ax.set_xticks(range(3), annomi.LABELS, fontsize=7)
        ax.set_yticks(range(3), annomi.LABELS, fontsize=7)
        ax.set_title(f"{method}\nmacro-F1 {row['macro_F1']:.3f}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("expert (majority)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: Config, workdir) -> dict:
    """Grouped CV on the non-test conversations (and the held-out test when listed)."""
    for method in config.methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    workdir = Path(workdir)
    source = annomi_source(config.data)
    examples = annomi.read_annomi(source)
    held = set(annomi.test_ids(config.data.annomi))
    unknown = held - {e.transcript_id for e in examples}
    if unknown:
        raise ValueError(f"{config.data.annomi}/test_ids.txt lists conversations not in "
                         f"{source.name}: {sorted(unknown)[:5]}")
    if config.data.max_conversations:
        keep = list(dict.fromkeys(e.transcript_id for e in examples if e.transcript_id not in held))
        keep = set(keep[:config.data.max_conversations]) | held
        examples = [e for e in examples if e.transcript_id in keep]
    y = np.array([e.label for e in examples])
    votes = np.stack([e.votes for e in examples])
    groups = [e.transcript_id for e in examples]
    dev = np.array([g not in held for g in groups])
    dev_idx, test_idx = np.flatnonzero(dev), np.flatnonzero(~dev)
    print(f"[talk_type] {source}: {len(examples)} client utterances in "
          f"{len(set(groups))} conversations ({len(held)} held out for test)", file=sys.stderr)
    t0 = time.perf_counter()
    feats = _Features(examples, config, config.methods)
    encode_s = time.perf_counter() - t0

    folds = annomi.grouped_folds([groups[i] for i in dev_idx], config.folds, config.seed)
    results: dict = {"cv": {}, "cv_folds": {}}
    for method in config.methods:
        t0 = time.perf_counter()
        preds: dict = {method: np.full(len(dev_idx), -1)}
        per_fold: dict = {method: []}
        for k, (tr, te) in enumerate(folds):
            p, extra, chosen = _fit_predict(method, feats, y, votes, groups, dev_idx[tr],
                                            dev_idx[te], config, f"fold {k + 1}/{len(folds)}")
            if chosen is not None and len(config.choices) > 1:
                results.setdefault("chosen", {})[f"fold{k + 1}"] = {"candidate": chosen}
            for name, q in {method: p, **{f"{method}/{v}": q for v, q in extra.items()}}.items():
                preds.setdefault(name, np.full(len(dev_idx), -1))[te] = q
                per_fold.setdefault(name, []).append(annomi.macro_f1(y[dev_idx[te]], q)["macro_F1"])
        for name, pred in preds.items():
            row = annomi.macro_f1(y[dev_idx], pred)
            folds_f1 = per_fold[name]
            row.update(macro_F1_fold_mean=float(np.mean(folds_f1)),
                       macro_F1_fold_sd=float(np.std(folds_f1, ddof=1)) if len(folds_f1) > 1 else 0.0,
                       seconds=round(time.perf_counter() - t0, 1))
            results["cv"][name] = row
            results["cv_folds"][name] = {f"fold{k + 1}": f for k, f in enumerate(folds_f1)}
            print(f"[talk_type] cv {name}: macro-F1 {row['macro_F1']:.3f} "
                  f"(folds {row['macro_F1_fold_mean']:.3f} +- {row['macro_F1_fold_sd']:.3f})",
                  file=sys.stderr)
    if len(test_idx):
        results["test"] = {}
        for method in config.methods:
            p, extra, _ = _fit_predict(method, feats, y, votes, groups, dev_idx, test_idx,
                                       config, "test")
            results["test"][method] = annomi.macro_f1(y[test_idx], p)
            for v, q in extra.items():
                results["test"][f"{method}/{v}"] = annomi.macro_f1(y[test_idx], q)
    if "talk_type" in config.methods:
        best, _ = _choose(feats, votes, y, groups, dev_idx, config)
        chosen = candidates(config)[best]
        deployed = best
        model = tt.fit(feats.inputs(chosen).subset(dev_idx), votes[dev_idx], chosen,
                       progress="deploy", behaviour=feats.behaviour[dev_idx])
        model.info.update(data=str(source), n_conversations=len({groups[i] for i in dev_idx}))
        model.save(workdir / "models" / "talk_type")
        if config.install_default:
            import shutil
            target = tt.default_dir()
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(workdir / "models" / "talk_type", target)
            print(f"[talk_type] installed as the default model: {target}", file=sys.stderr)
    (workdir / "plots").mkdir(exist_ok=True)
    for split in ("cv", "test"):
        if split in results:
            _confusion_figure(results[split], workdir / "plots" / f"confusion_{split}.png")
    n_dev = {k: int(np.sum(y[dev_idx] == i)) for i, k in enumerate(annomi.LABELS)}
    choice_notes = []
    if "talk_type" in config.methods and len(config.choices) > 1:
        listed = "; ".join(f"{i}: " + (", ".join(f"{k}={v}" for k, v in c) or "model as is")
                           for i, c in enumerate(config.choices))
        choice_notes = [f"talk_type candidates ({listed}), chosen inside each outer training "
                        f"part by {config.inner_folds}-fold grouped CV (table chosen); the "
                        f"deployed model: candidate {deployed}, chosen the same way on all of it"]
    results["notes"] = [
        f"data: {source} ({len(examples)} client utterances, {len(set(groups))} conversations)",
        f"cv: {config.folds} folds grouped by conversation over {len(dev_idx)} utterances "
        f"({n_dev}); macro_F1 on the pooled out-of-fold predictions, fold mean and sd beside it",
        "labels: majority of annotators (ties: the label given first); talk_type trains on "
        "the vote fractions, the others on the majority label",
        f"encoding of every input (sentence embeddings cached under $AHJAX_CACHE/sentence_emb): "
        f"{encode_s:.0f} s",
        *choice_notes,
    ]
    return results
