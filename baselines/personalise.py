"""The personalisation protocol of the BAH paper (Table 5): each test subject is a domain.

Targets are the test participants with both classes; each target's frames are split into
``adapt`` / ``val`` / ``test`` parts by whole segments. :func:`run_personalisation` trains
one source model, runs every method on every target and returns per-target metrics and
their mean and std. The network is a :class:`Network`. The split rule:
docs/paper_setups.md, "The personalisation protocol".
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from ahjax.core import metrics as metrics_lib
from ahjax.core.data.store import FeatureStore
from ahjax.core.data.windows import load_or_compute_stats
from baselines import adapt as adapt_lib

PARTS = ("adapt", "val", "test")
SPLITS_FILE = "personalisation_splits.json"
Segment = tuple[int, int, int]  # (video index, start, stop): frames start..stop-1


class NotEligible(ValueError):
    """A target cannot be split with both classes in every part."""


@dataclasses.dataclass(frozen=True)
class Network:
    """The network every method adapts, and how its frames are read.

    ``standardise``: z-score each feature array with the source split's statistics;
    ``build(dims, cfg, seed) -> model`` (``None``: an :class:`~baselines.adapt.AdaptNet`);
    ``wrap(domain) -> domain`` turns each loaded domain into what the network reads
    (``None``: as loaded).
    """
    label: str = "backbone + classifier"
    standardise: bool = True
    build: Callable | None = None
    wrap: Callable[[adapt_lib.Domain], adapt_lib.Domain] | None = None


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Which frames are source and target and how a target is split."""
    source_split: str = "train"
    val_split: str = "val"             # selects the source model's epoch ("" = last epoch)
    target_split: str = "test"
    fractions: tuple[float, ...] = (0.5, 0.2, 0.3)   # adapt, val, test shares of each class
    max_source_frames: int = 200_000   # a seeded uniform subsample beyond this; 0 = all
    max_targets: int = 0               # 0 = every eligible participant
    seed: int = 0


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs ``(start, stop, label)`` of one label >= 0 (``-1`` frames end a run)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return []
    edges = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [labels.size]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, stops) if labels[a] >= 0]


def _rng(seed: int, name: str) -> np.random.Generator:
    # crc32, not hash(): Python salts string hashes per process.
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def split_target(labels: Sequence[np.ndarray], fractions: Sequence[float] = (0.5, 0.2, 0.3),
                 seed: int = 0, name: str = "") -> dict:
    """Split one target's videos (``labels``: one label array per video) into parts.

    Returns ``{"parts": {part: [(video, start, stop), ...]}, "frames": {part: {"0": n,
    "1": n}}, "halved": {"0": k, "1": k}}``, deterministic in ``(seed, name)``. Raises
    :class:`NotEligible` when a class has fewer labelled frames than parts.
    """
    fractions = np.asarray(fractions, np.float64)
    if fractions.shape != (len(PARTS),) or np.any(fractions <= 0):
        raise ValueError(f"fractions must be {len(PARTS)} positive shares, got {fractions}")
    fractions = fractions / fractions.sum()
    rng = _rng(seed, name)
    parts: dict[str, list[Segment]] = {p: [] for p in PARTS}
    frames = {p: {"0": 0, "1": 0} for p in PARTS}
    halved = {}
    for cls in (0, 1):
        segs = [(v, a, b) for v, lab in enumerate(labels) for a, b, c in label_runs(lab) if c == cls]
        total = sum(b - a for _, a, b in segs)
        if total < len(PARTS):
            raise NotEligible(f"{name or 'target'}: class {cls} has {total} labelled frame(s); "
                              f"each of the {len(PARTS)} parts needs one")
        halved[str(cls)] = 0
        while len(segs) < len(PARTS):
            i = max(range(len(segs)), key=lambda j: segs[j][2] - segs[j][1])
            v, a, b = segs.pop(i)
            mid = (a + b) // 2
            segs[i:i] = [(v, a, mid), (v, mid, b)]
            halved[str(cls)] += 1
        segs = [segs[i] for i in rng.permutation(len(segs))]
        have = np.zeros(len(PARTS))
        count = np.zeros(len(PARTS), int)
        for v, a, b in segs:
            deficit = fractions * total - have
            empty = count == 0
            # A part still missing this class takes priority: both classes in every part.
            candidates = np.flatnonzero(empty) if empty.any() else np.arange(len(PARTS))
            p = int(candidates[np.argmax(deficit[candidates])])
            parts[PARTS[p]].append((v, a, b))
            have[p] += b - a
            count[p] += 1
        for p, part in enumerate(PARTS):
            frames[part][str(cls)] = int(have[p])
    for part in PARTS:
        parts[part].sort()
    return {"parts": parts, "frames": frames, "halved": halved}


def find_targets(store: FeatureStore, split: str) -> dict[str, list[str]]:
    """``{participant: [video ids]}`` of ``split`` (meta ``participant``), sorted."""
    out: dict[str, list[str]] = {}
    for vid in store.video_ids(split):
        pid = str(store.meta(vid).get("participant", ""))
        if not pid:
            raise ValueError(f"{vid}: feature-store meta has no 'participant' field")
        out.setdefault(pid, []).append(vid)
    return dict(sorted(out.items()))


def _labels(store: FeatureStore, vid: str) -> np.ndarray:
    if not (store.path(vid) / "labels.npy").is_file():
        return np.full(int(store.meta(vid)["n_frames"]), -1, np.int32)
    return np.asarray(store.read(vid, "labels"), np.int32).reshape(-1)


def load_domain(store: FeatureStore, video_ids: Sequence[str], spec: Mapping[str, Sequence[str]],
                stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                name: str = "") -> adapt_lib.Domain:
    """Every frame of ``video_ids`` as a :class:`~baselines.adapt.Domain` whose members are
    the labelled frames; features standardised with ``stats`` (name -> (mean, std))."""
    xs: dict[str, list[np.ndarray]] = {m: [] for m in spec}
    ys, firsts, offset = [], [], 0
    for vid in video_ids:
        y = _labels(store, vid)
        for m, names in spec.items():
            cols = []
            for a in names:
                x = np.asarray(store.read(vid, a), np.float32).reshape(len(y), -1)
                if stats is not None and a in stats:
                    x = (x - stats[a][0]) / stats[a][1]
                cols.append(x)
            xs[m].append(np.concatenate(cols, axis=1))
        ys.append(y)
        firsts.append(np.full(len(y), offset, np.int64))
        offset += len(y)
    y = np.concatenate(ys) if ys else np.zeros(0, np.int32)
    dom = adapt_lib.Domain.from_arrays({m: np.concatenate(v) for m, v in xs.items()}, y,
                                       np.concatenate(firsts) if firsts else None, name)
    return dom.part(np.flatnonzero(y >= 0))


def target_parts(domain: adapt_lib.Domain, lengths: Sequence[int], split: dict
                 ) -> dict[str, adapt_lib.Domain]:
    """The adapt / val / test parts of a target loaded by :func:`load_domain` from videos
    of ``lengths`` frames (in load order), as ``split["parts"]`` (video index, start, stop)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = {}
    for part in PARTS:
        rows = [np.arange(starts[v] + a, starts[v] + b) for v, a, b in split["parts"][part]]
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        out[part] = dataclasses.replace(domain, rows=rows, name=f"{domain.name}/{part}")
    return out


def run_personalisation(store: FeatureStore, spec: Mapping[str, Sequence[str]],
                        methods: Sequence[str], cfg: adapt_lib.AdaptConfig,
                        protocol: ProtocolConfig = ProtocolConfig(),
                        workdir: str | Path | None = None, log=print,
                        network: Network = Network()) -> dict:
    """Run ``methods`` on every eligible target, adapting ``network``; returns a dict with

    - ``per_target``: ``{participant: {method: bah_metrics(...)}}``,
    - ``summary``: ``{method: {metric: {"mean", "std", "n"}}}`` over targets,
    - ``splits``: what was written to ``personalisation_splits.json``,
    - ``skipped``: ``{participant: reason}``.
    """
    spec = {m: tuple(v) for m, v in spec.items() if v}
    if not spec:
        raise ValueError("the modality spec selects no feature array")
    names = sorted({a for v in spec.values() for a in v})
    stats = load_or_compute_stats(store, names, protocol.source_split) \
        if network.standardise else None
    wrap = network.wrap or (lambda domain: domain)
    candidates = find_targets(store, protocol.target_split)
    splits, skipped, targets = {}, {}, {}
    for pid, vids in candidates.items():
        labels = [_labels(store, v) for v in vids]
        if not any((l == 1).any() for l in labels) or not any((l == 0).any() for l in labels):
            skipped[pid] = "one class only"
            continue
        try:
            split = split_target(labels, protocol.fractions, protocol.seed, pid)
        except NotEligible as err:
            skipped[pid] = str(err)
            continue
        splits[pid] = dict(split, videos=list(vids),
                           parts={p: [[vids[v], a, b] for v, a, b in s]
                                  for p, s in split["parts"].items()})
        targets[pid] = (vids, split)
        if protocol.max_targets and len(targets) >= protocol.max_targets:
            break
    if not targets:
        raise ValueError(f"no participant of split {protocol.target_split!r} has both classes "
                         f"(skipped: {skipped})")
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / SPLITS_FILE).write_text(json.dumps(
            {"seed": protocol.seed, "fractions": list(protocol.fractions), "targets": splits,
             "skipped": skipped}, indent=1))

    source_ids = [v for pid, vids in find_targets(store, protocol.source_split).items()
                  if pid not in targets for v in vids]
    source = wrap(load_domain(store, source_ids, spec, stats, "source"))
    if protocol.max_source_frames and len(source) > protocol.max_source_frames:
        keep = np.sort(_rng(protocol.seed, "source").choice(
            len(source), protocol.max_source_frames, replace=False))
        source = source.part(keep)
    if len(source) == 0:
        raise ValueError(f"no labelled source frames in split {protocol.source_split!r}")
    val_ids = store.video_ids(protocol.val_split) if protocol.val_split else []
    source_val = wrap(load_domain(store, val_ids, spec, stats, "source-val")) if val_ids else None
    log(f"{network.label}: source {len(source)} frames from {len(source_ids)} videos; "
        f"targets: {len(targets)}")
    net = None if network.build is None else network.build(source.dims, cfg, cfg.seed)
    model = adapt_lib.train_source(source, cfg, source_val, net=net)

    built = [adapt_lib.build_method(m, cfg) for m in methods]
    per_target: dict[str, dict[str, dict]] = {}
    for pid, (vids, split) in targets.items():
        domain = wrap(load_domain(store, vids, spec, stats, pid))
        parts = target_parts(domain, [len(_labels(store, v)) for v in vids], split)
        per_target[pid] = {}
        for name, method in zip(methods, built):
            key = jax.random.fold_in(jax.random.key(cfg.seed), zlib.crc32(f"{pid}/{name}".encode()))
            adapt_part = parts["adapt"] if name == "oracle" else parts["adapt"].unlabelled()
            adapted = method.adapt(model, source, adapt_part, parts["val"], key)
            logits = method.predict(adapted, parts["test"], jax.random.fold_in(key, 1))
            per_target[pid][name] = metrics_lib.bah_metrics(parts["test"].labels, logits)
        log(f"{network.label}, target {pid}: "
            + ", ".join(f"{m} {r['AVGF1']:.3f}" for m, r in per_target[pid].items()))
    summary = {m: metrics_lib.mean_std({pid: rows[m] for pid, rows in per_target.items()})
               for m in methods}
    return {"per_target": per_target, "summary": summary, "splits": splits, "skipped": skipped}
