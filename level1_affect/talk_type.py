"""Level 1, talk type: a client utterance -> P(change), P(neutral), P(sustain).

Ambivalence is heard as change talk ("I want to cut down") and sustain talk ("but it
helps me relax") from the same person; this model learns the three talk types from
AnnoMI's expert labels (``level1_affect.annomi``) over a frozen encoder
(``level1_affect.encoders``): an MLP over sentence embeddings (``trainable_layers`` 0,
the default) or the top k layers fine-tuned. ``TalkTypeModel.save(dir)``/``load(dir)``;
the default model ships with the package (``default_dir()``). docs/talk_type.md has the
model, its class weighting and its scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ahjax.core import assets
from ahjax.core.train import engine
from level1_affect import annomi, encoders

LABELS = annomi.LABELS
_BUCKETS = (16, 32, 64, 100, 128)
DEFAULT_VERSION = 3   # bump when the default model changes: feature stores keyed by it renew


@dataclasses.dataclass(frozen=True)
class TalkTypeConfig:
    """Every hyperparameter of the talk-type model, written beside its weights."""
    # Top encoder layers fine-tuned on [context ; utterance] (the rest frozen), 1..layers;
    # 0: the encoder stays frozen and an MLP reads the sentence embeddings of the
    # utterance, the therapist turn before and the client's previous turn.
    trainable_layers: int = 0
    encoder: str = "mpnet"         # "minilm" (also ""), "mpnet" or a BERT/MPNet folder
    hidden: int = 256              # MLP width (trainable_layers=0)
    aux_weight: float = 0.0        # weight of the auxiliary loss: the therapist turn's behaviour
    context_tokens: int = 32       # last tokens of the preceding therapist turn / question
    utterance_tokens: int = 64     # first tokens of the utterance
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3    # fine-tuning encoder layers wants about 1e-4
    warmup: float = 0.1            # share of steps with a linear warm-up (from a tenth of the rate)
    weight_decay: float = 0.01
    dropout: float = 0.1
    class_weight_power: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.trainable_layers < 0:
            raise ValueError(f"trainable_layers={self.trainable_layers}: must be at least 0")
        if self.hidden < 1:
            raise ValueError(f"hidden={self.hidden}: must be at least 1")
        for name in ("learning_rate", "weight_decay", "dropout", "aux_weight", "warmup",
                     "class_weight_power"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value}: must be a finite number >= 0")
        if self.dropout >= 1:
            raise ValueError(f"dropout={self.dropout}: must be below 1")
        for name in ("context_tokens", "utterance_tokens"):
            if getattr(self, name) < 0 or getattr(self, name) > 120:
                raise ValueError(f"{name}={getattr(self, name)}: must be in 0..120")
        if self.utterance_tokens < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("utterance_tokens, epochs and batch_size must be at least 1")
        if self.encoder and self.encoder not in encoders.NAMED:   # checked now, not later
            try:
                encoders.check_folder(self.encoder)
            except FileNotFoundError as err:
                raise ValueError(f"encoder={self.encoder}: {err}") from None


# ------------------------------- network ----------------------------------------------
class TalkTypeNet(nnx.Module):
    """The encoder's top layers + a linear head over [utterance mean ; sequence mean].

    ``__call__(states, mask, segment)`` takes the frozen layers' token states (b, n, dim),
    the real-token mask and the segment ids (1 on the utterance) and returns
    ``(logits, aux)`` with ``aux = {"pooled": (b, 2 dim), "probs": (b, 3)}``.
    """

    def __init__(self, config: TalkTypeConfig, source: encoders.PretrainedEncoder,
                 rngs: nnx.Rngs):
        c = source.config
        first = _first_trained(config, c.num_hidden_layers)

        def copy(module, fresh):
            nnx.update(fresh, nnx.state(module, nnx.Param))
            return fresh

        self.layers = nnx.List([
            copy(source.model.layers[first + j],
                 encoders.Layer(c.hidden_size, c.intermediate_size, c.num_attention_heads,
                                c.layer_norm_eps, config.dropout, rngs))
            for j in range(config.trainable_layers)])
        self.rel = (copy(source.model.rel, encoders.RelativeBias(
            c.relative_attention_num_buckets, c.num_attention_heads, rngs))
            if source.model.rel is not None else None)
        self.head = nnx.Linear(2 * c.hidden_size, len(LABELS), rngs=rngs)
        self.behaviour = nnx.Linear(2 * c.hidden_size, len(annomi.BEHAVIOURS), rngs=rngs)
        self.drop = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, states, mask, segment):
        x = states
        bias = None if self.rel is None else self.rel(x.shape[1])
        for layer in self.layers:
            x = layer(x, mask, bias)
        utt = (mask * segment)[..., None].astype(x.dtype)
        every = mask[..., None].astype(x.dtype)
        pooled = jnp.concatenate([(x * utt).sum(1) / jnp.maximum(utt.sum(1), 1.0),
                                  (x * every).sum(1) / jnp.maximum(every.sum(1), 1.0)], -1)
        logits = self.head(self.drop(pooled))
        chex.assert_shape(logits, (states.shape[0], len(LABELS)))
        return logits, {"pooled": pooled, "probs": jax.nn.softmax(logits, -1),
                        "behaviour": self.behaviour(self.drop(pooled))}


class ContextHead(nnx.Module):
    """An MLP over frozen sentence embeddings [utterance ; therapist turn ; previous client
    turn ; presence flags]; returns ``(logits, aux)`` as :class:`TalkTypeNet` does."""

    def __init__(self, config: TalkTypeConfig, dim: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(3 * dim + 2, config.hidden, rngs=rngs)
        self.head = nnx.Linear(config.hidden, len(LABELS), rngs=rngs)
        self.behaviour = nnx.Linear(config.hidden, len(annomi.BEHAVIOURS), rngs=rngs)
        self.drop = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, features):
        h = self.drop(jax.nn.gelu(self.hidden(self.drop(features))))
        logits = self.head(h)
        chex.assert_shape(logits, (features.shape[0], len(LABELS)))
        return logits, {"hidden": h, "probs": jax.nn.softmax(logits, -1),
                        "behaviour": self.behaviour(h)}


# ------------------------------- inputs -----------------------------------------------
@dataclasses.dataclass
class Encoded:
    """Frozen-layer token states of a set of inputs (variable lengths, float16 on host)."""
    states: list[np.ndarray]
    segments: list[np.ndarray]

    def batch(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded ``(states, mask, segment)`` for the inputs ``idx`` (length bucketed)."""
        longest = max(len(self.states[i]) for i in idx)
        n = next((b for b in _BUCKETS if b >= longest), longest)
        dim = self.states[idx[0]].shape[1]
        x = np.zeros((len(idx), n, dim), np.float32)
        mask = np.zeros((len(idx), n), np.int32)
        seg = np.zeros((len(idx), n), np.int32)
        for r, i in enumerate(idx):
            m = len(self.states[i])
            x[r, :m], mask[r, :m], seg[r, :m] = self.states[i], 1, self.segments[i]
        return x, mask, seg

    def subset(self, idx: Sequence[int]) -> "Encoded":
        return Encoded([self.states[i] for i in idx], [self.segments[i] for i in idx])

    def __len__(self) -> int:
        return len(self.states)


def _first_trained(config: TalkTypeConfig, n_layers: int) -> int:
    """Index of the first fine-tuned layer of an ``n_layers`` encoder."""
    if config.trainable_layers > n_layers:
        raise ValueError(f"trainable_layers={config.trainable_layers}: the encoder "
                         f"{config.encoder or '(bundled MiniLM)'} has {n_layers} layers")
    return n_layers - config.trainable_layers


def encoder(config: TalkTypeConfig, minilm=None) -> encoders.PretrainedEncoder:
    """The encoder a config names (``minilm`` if given), loaded once per process."""
    return minilm or encoders.load(config.encoder or "minilm")


@dataclasses.dataclass
class Pooled:
    """Frozen sentence embeddings of inputs with their context, one row each."""
    features: np.ndarray

    def batch(self, idx: Sequence[int]) -> tuple[np.ndarray]:
        return (self.features[np.asarray(idx)],)

    def subset(self, idx: Sequence[int]) -> "Pooled":
        return Pooled(self.features[np.asarray(idx)])

    def __len__(self) -> int:
        return len(self.features)


def sentence_rows(texts: Sequence[str], m: encoders.PretrainedEncoder,
                  cache: str | os.PathLike | None = None) -> np.ndarray:
    """(n, dim) sentence embeddings of ``texts`` (zero rows for empty ones), through an
    on-disk cache per text when ``cache`` names a folder."""
    texts = [str(t).strip() for t in texts]
    out = np.zeros((len(texts), m.dim), np.float32)
    todo = [i for i, t in enumerate(texts) if t]
    if todo:
        some = [texts[i] for i in todo]
        out[todo] = m.cached_sentences(some, cache) if cache else m.encode_sentences(some)
    return out


def encode_inputs(texts: Sequence[str], contexts: Sequence[str], config: TalkTypeConfig,
           minilm=None, previous: Sequence[str] | None = None,
           cache: str | os.PathLike | None = None) -> Encoded | Pooled:
    """The model's inputs: with ``trainable_layers`` >= 1, token states after the frozen
    layers for ``[CLS] context [SEP] text [SEP]``; with 0, sentence embeddings of each
    text, its context and its ``previous`` turn (``cache``: a folder for those rows)."""
    m = encoder(config, minilm)
    if len(texts) != len(contexts) or (previous is not None and len(previous) != len(texts)):
        raise ValueError(f"{len(texts)} texts but {len(contexts)} contexts"
                         + ("" if previous is None else f" and {len(previous)} previous turns"))
    if config.trainable_layers == 0:
        previous = [""] * len(texts) if previous is None else list(previous)
        flags = np.array([[bool(str(c).strip()), bool(str(p).strip())]
                          for c, p in zip(contexts, previous)], np.float32).reshape(-1, 2)
        return Pooled(np.hstack([sentence_rows(texts, m, cache), sentence_rows(contexts, m, cache),
                                 sentence_rows(previous, m, cache), flags]))
    tok = m.tokenizer
    utt = [e.ids[:config.utterance_tokens] for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    ctx = [e.ids[len(e.ids) - config.context_tokens:] if config.context_tokens else []
           for e in tok.encode_batch(list(contexts), add_special_tokens=False)]
    seqs, segs = [], []
    for c, u in zip(ctx, utt):
        ids, seg = m.pair(c, u)
        seqs.append(ids)
        segs.append(np.array(seg, np.int32))
    layer = _first_trained(config, int(m.config.num_hidden_layers))
    states = m.token_states(seqs, segs, layer=layer)
    return Encoded([s.astype(np.float16) for s in states], segs)


# ------------------------------- training ---------------------------------------------
def class_weights(votes: np.ndarray, power: float) -> np.ndarray:
    """(3,) weights ``(n / (3 n_k)) ** power`` from the summed vote fractions."""
    counts = np.maximum(np.asarray(votes).sum(0), 1e-3)
    return ((counts.sum() / (len(LABELS) * counts)) ** power).astype(np.float32)


def _loss(model, inputs, targets, behaviour, weights, aux_weight):
    logits, aux = model(*inputs)
    per = optax.softmax_cross_entropy(logits, targets)
    w = targets @ weights
    loss = (per * w).sum() / w.sum()
    known = (behaviour >= 0).astype(logits.dtype)
    aux_per = optax.softmax_cross_entropy_with_integer_labels(
        aux["behaviour"], jnp.maximum(behaviour, 0))
    return loss + aux_weight * (aux_per * known).sum() / jnp.maximum(known.sum(), 1.0)


@nnx.jit
def train_step(model, optimizer: nnx.Optimizer, inputs, targets, behaviour, weights, aux_weight):
    """One bounded step: loss, gradient, update. Returns the loss."""
    loss, grads = nnx.value_and_grad(_loss)(model, inputs, targets, behaviour, weights,
                                            aux_weight)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _probs(model, inputs):
    return model(*inputs)[1]["probs"]


class TalkTypeModel:
    """A trained talk-type network with its config; ``predict_proba`` on raw texts."""

    def __init__(self, config: TalkTypeConfig, net: TalkTypeNet, info: dict | None = None):
        self.config, self.net, self.info = config, net, dict(info or {})

    def predict_encoded(self, enc: Encoded, batch_size: int = 64) -> np.ndarray:
        """(n, 3) probabilities over :data:`LABELS` for encoded inputs."""
        self.net.eval()
        out = np.zeros((len(enc), len(LABELS)), np.float32)
        order = (sorted(range(len(enc)), key=lambda i: len(enc.states[i]))
                 if isinstance(enc, Encoded) else list(range(len(enc))))
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            if len(idx) < batch_size and isinstance(enc, Pooled):   # one compiled shape
                idx = idx + [idx[-1]] * (batch_size - len(idx))
            out[idx] = np.asarray(_probs(self.net, enc.batch(idx)))
        return out

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None,
                      previous: Sequence[str] | None = None) -> np.ndarray:
        """(n, 3) P(change), P(neutral), P(sustain) for ``texts``; ``contexts`` are the
        preceding therapist turns or questions, ``previous`` the speaker's turns before
        ("" or None: none)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(LABELS)), np.float32)
        contexts = [c or "" for c in (contexts or [""] * len(texts))]
        previous = [p or "" for p in (previous or [""] * len(texts))]
        return self.predict_encoded(encode_inputs(texts, contexts, self.config, previous=previous))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``talk_type.json`` (config, info) and ``weights.npz`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        flat = {"/".join(map(str, k)): np.asarray(v.value)
                for k, v in nnx.to_flat_state(nnx.state(self.net, nnx.Param))}
        tmp = path / f".weights.{os.getpid()}.npz"
        np.savez(tmp, **flat)
        os.replace(tmp, path / "weights.npz")
        (path / "talk_type.json").write_text(json.dumps(
            {"config": dataclasses.asdict(self.config), "labels": list(LABELS), "info": self.info},
            indent=2))
        return path


def build(config: TalkTypeConfig, minilm=None, seed: int | None = None) -> TalkTypeNet:
    """A fresh network whose layers start from the encoder's weights."""
    rngs = nnx.Rngs(config.seed if seed is None else seed)
    if config.trainable_layers == 0:
        return ContextHead(config, encoder(config, minilm).dim, rngs)
    return TalkTypeNet(config, encoder(config, minilm), rngs)


def fit(enc: Encoded | Pooled, votes: np.ndarray, config: TalkTypeConfig, minilm=None,
        progress: str | None = None, behaviour: np.ndarray | None = None) -> TalkTypeModel:
    """Train on encoded inputs and their vote fractions (n, 3); ``behaviour`` (n,) the
    therapist turn's behaviour index (-1: unknown) for the auxiliary loss; ``progress`` a
    label for a line per epoch on stderr."""
    votes = np.asarray(votes, np.float32)
    if len(votes) != len(enc):
        raise ValueError(f"{len(enc)} inputs but {len(votes)} targets")
    behaviour = (np.full(len(votes), -1, np.int32) if behaviour is None
                 else np.asarray(behaviour, np.int32))
    net = build(config, minilm)
    n = len(votes)
    steps = config.epochs * max(1, -(-n // config.batch_size))
    warmup = max(1, int(config.warmup * steps))
    schedule = optax.warmup_cosine_decay_schedule(
        0.1 * config.learning_rate, config.learning_rate, warmup, max(steps, warmup + 1))
    optimizer = nnx.Optimizer(net, optax.adamw(schedule, weight_decay=config.weight_decay),
                              wrt=nnx.Param)
    weights = jnp.asarray(class_weights(votes, config.class_weight_power))
    rng = np.random.default_rng(config.seed)
    net.train()
    pooled = isinstance(enc, Pooled)
    lengths = np.zeros(n) if pooled else np.array([len(s) for s in enc.states])
    n_batches = -(-n // config.batch_size)
    aux_weight = jnp.float32(config.aux_weight)

    def batches(epoch):
        # Batches of similar length (little padding), visited in random order; pooled
        # inputs: full batches (the last one topped up from the start) so one shape compiles.
        order = (rng.permutation(n) if pooled
                 else np.argsort(lengths + rng.uniform(0, 8, n), kind="stable"))
        if pooled and n % config.batch_size:
            order = np.concatenate([order, order[:config.batch_size - n % config.batch_size]])
        chunks = [order[b:b + config.batch_size] for b in range(0, len(order), config.batch_size)]
        for i in rng.permutation(len(chunks)):
            yield chunks[i]

    def step(idx, epoch):
        return {"loss": train_step(net, optimizer, enc.batch(idx), jnp.asarray(votes[idx]),
                                   jnp.asarray(behaviour[idx]), weights, aux_weight)}

    def report(record):
        if progress:
            import sys
            print(f"[talk_type {progress}] epoch {record['epoch'] + 1}/{config.epochs} loss "
                  f"{record['loss']:.4f} ({record['seconds']:.0f} s)", file=sys.stderr,
                  flush=True)

    # The project's one epoch loop: a non-finite loss raises NonFiniteLossError.
    engine.run_epochs(epochs=config.epochs, batches=batches, step=step, end_epoch=report,
                      desc="talk-type training", flush_every=n_batches)
    net.eval()
    return TalkTypeModel(config, net, {"n_train": int(n)})


def train_examples(examples: Sequence[annomi.Example], config: TalkTypeConfig = TalkTypeConfig(),
                   progress: str | None = None, cache: str | os.PathLike | None = None
                   ) -> TalkTypeModel:
    """Encode AnnoMI examples (utterance, the therapist turn before, the client's previous
    turn) and fit, with the therapist's behaviour as the auxiliary target."""
    enc = encode_inputs([e.text for e in examples], [e.therapist for e in examples], config,
                 previous=[e.previous for e in examples], cache=cache)
    return fit(enc, np.stack([e.votes for e in examples]), config, progress=progress,
               behaviour=np.array([e.behaviour for e in examples]))


# ------------------------------- storage ----------------------------------------------
def load(path: str | os.PathLike) -> TalkTypeModel:
    """A model saved by :meth:`TalkTypeModel.save`; a clear error for anything else."""
    path = Path(path)
    meta_file, weights_file = path / "talk_type.json", path / "weights.npz"
    if not meta_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(f"{path}: not a talk-type model (needs talk_type.json and weights.npz)")
    meta = json.loads(meta_file.read_text())
    if list(meta.get("labels", [])) != list(LABELS):
        raise ValueError(f"{meta_file}: labels {meta.get('labels')} differ from {list(LABELS)}")
    config = TalkTypeConfig(**meta["config"])
    net = build(config)
    state = nnx.state(net, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    with np.load(weights_file) as saved:
        keys = {"/".join(map(str, k)): k for k in flat}
        # Models saved before the auxiliary head lack it; it is not used for prediction.
        keys = {n: k for n, k in keys.items() if n in saved.files or not n.startswith("behaviour/")}
        if set(saved.files) != set(keys):
            raise ValueError(f"{weights_file}: parameters do not match the config "
                             f"({len(saved.files)} arrays, expected {len(keys)})")
        for name, k in keys.items():
            if saved[name].shape != flat[k].value.shape:
                raise ValueError(f"{weights_file}: {name} has shape {saved[name].shape}, "
                                 f"expected {flat[k].value.shape}")
            flat[k].value = jnp.asarray(saved[name])
    nnx.update(net, nnx.from_flat_state(flat))
    net.eval()
    return TalkTypeModel(config, net, meta.get("info"))


def default_dir() -> Path:
    """The packaged default model (``level1_affect/data/talk_type``): trained by
    ``python -m experiments.run talk_type --config.install_default=True``."""
    return Path(__file__).parent / "data" / "talk_type"


def _trained_default_dir() -> Path:
    """Where a default trained on first use is cached when the package has none."""
    return assets.cache_dir() / "talk_type" / f"default-v{DEFAULT_VERSION}"


def ensure_default(config: TalkTypeConfig = TalkTypeConfig(), quiet: bool = False) -> Path:
    """The default model's folder: the packaged one, or (when the package lacks it) one
    trained once on the bundled AnnoMI and cached."""
    for target in (default_dir(), _trained_default_dir()):
        if (target / "weights.npz").is_file() and (target / "talk_type.json").is_file():
            return target
    import shutil
    import sys
    if not quiet:
        print(f"[talk_type] training the default talk-type model on the bundled AnnoMI "
              f"into {target} (once)", file=sys.stderr, flush=True)
    examples = annomi.read_annomi(None)
    model = train_examples(examples, config, progress=None if quiet else "default",
                           cache=assets.cache_dir() / "sentence_emb")
    model.info.update(data="bundled AnnoMI-full (106 conversations)", version=DEFAULT_VERSION)
    tmp = target.parent / f".{target.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_default() -> TalkTypeModel:
    """The packaged default model (trained and cached on first use)."""
    return load(ensure_default())


# ------------------------------- sentences --------------------------------------------
# The same clause and sentence ends as level1_affect.text's word tokens.
_CLAUSE_END = re.compile(r"[.!?;:,…]$|\.\.\.$|[-—]$")
_SENTENCE_END = re.compile(r"[.!?…]$")


def sentences(words: Sequence[str], max_words: int = 40) -> list[tuple[int, int]]:
    """``(first, end)`` word ranges of the sentences of a word list: split after . ! ? ...
    and, in a long run without any, after a clause end or every ``max_words`` words."""
    out, start = [], 0
    for i, w in enumerate(words):
        n = i + 1 - start
        if _SENTENCE_END.search(w) or (n >= max_words // 2 and _CLAUSE_END.search(w)) \
                or n >= max_words:
            out.append((start, i + 1))
            start = i + 1
    if start < len(words):
        out.append((start, len(words)))
    return out


def talk_by_sentence(words: Sequence[str], model: "TalkTypeModel", context: str = ""
                     ) -> np.ndarray:
    """(n_words, 2) P(change), P(sustain) per word: each sentence's talk type from ``model``,
    given to every word of that sentence."""
    spans = sentences(words)
    out = np.zeros((len(words), 2), np.float32)
    if not spans:
        return out
    probs = model.predict_proba([" ".join(words[a:b]) for a, b in spans], [context] * len(spans))
    for (a, b), p in zip(spans, probs):
        out[a:b] = p[[0, 2]]
    return out


# ------------------------------- video level ------------------------------------------
#: Named video-level summary of an answer's talk types (``video_talk_features``).
VIDEO_TALK_FEATURES = ("talk_change_mean", "talk_sustain_mean", "talk_change_max",
                       "talk_sustain_max", "talk_change_and_sustain", "talk_balance",
                       "talk_flips", "talk_n_sentences_log")


def video_talk_features(probs: np.ndarray) -> dict[str, float]:
    """Summary of one answer from its sentences' (n, 3) talk-type probabilities, in order.

    Level 1 aggregated: mean and max P(change) and P(sustain). Level 2 (conflict within
    text): both present (max change x max sustain), their balance (1 when the summed
    probabilities are equal, 0 when one is absent) and flips (switches between sentences
    leaning change and sentences leaning sustain, neutral-leaning ones skipped).
    """
    probs = np.asarray(probs, np.float64).reshape(-1, len(LABELS))
    f = dict.fromkeys(VIDEO_TALK_FEATURES, 0.0)
    if len(probs) == 0:
        return f
    c, s = probs[:, 0], probs[:, 2]
    f.update(talk_change_mean=c.mean(), talk_sustain_mean=s.mean(), talk_change_max=c.max(),
             talk_sustain_max=s.max(), talk_change_and_sustain=c.max() * s.max(),
             talk_n_sentences_log=np.log1p(len(probs)))
    f["talk_balance"] = 2.0 * min(c.sum(), s.sum()) / (c.sum() + s.sum()) if c.sum() + s.sum() else 0.0
    lean = [("c" if ci > si else "s") for ci, si, ni in zip(c, s, probs[:, 1])
            if max(ci, si) > ni]
    f["talk_flips"] = float(sum(a != b for a, b in zip(lean, lean[1:])))
    return {k: float(v) for k, v in f.items()}


def transcript_talk(texts: Sequence[str], model: TalkTypeModel) -> list[np.ndarray]:
    """Per transcript, the (n_sentences, 3) talk-type probabilities of its sentences
    (:func:`sentences`; no context, as in a monologue)."""
    spans, owner = [], []
    for k, text in enumerate(texts):
        words = str(text).split()
        for a, b in sentences(words):
            spans.append(" ".join(words[a:b]))
            owner.append(k)
    probs = model.predict_proba(spans, [""] * len(spans)) if spans else np.zeros((0, 3))
    owner = np.array(owner, int)
    return [probs[owner == k] for k in range(len(texts))]


def model_id(path: str | os.PathLike) -> str:
    """A short content hash of a saved model (its weights file), for caches keyed by model."""
    import hashlib
    digest = hashlib.sha1()
    with open(Path(path) / "weights.npz", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
