"""Windows over a feature store: padding, masks, order, resumption, standardisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ahjax.core.data.store import FeatureStore, StoreError
from ahjax.core.data import windows as win

SPEC = {"video": ("face_expr", "face_blend"), "text": ("text_emb",)}


def make_store(root, lengths=(23, 9, 40), split="train", seed=0, dims=(3, 2, 4),
               learnable=False, prefix="v"):
    """A tiny random store: arrays face_expr/face_blend/text_emb and labels per video.

    With ``learnable`` the label is 1 exactly where face_expr[:, 0] > 0.5, so a model can
    learn it from one frame.
    """
    rng = np.random.default_rng(seed)
    store = FeatureStore(root)
    for i, n in enumerate(lengths):
        expr = rng.normal(size=(n, dims[0])).astype(np.float32)
        labels = rng.integers(0, 2, n).astype(np.int8)
        if learnable:
            labels = (expr[:, 0] > 0.5).astype(np.int8)
        if n > 5:
            labels[2] = -1  # an unlabelled frame, as in BAH's gaps
        store.write(f"{prefix}{split}{i}", {
            "face_expr": expr,
            "face_blend": rng.normal(size=(n, dims[1])).astype(np.float32) + 3.0,
            "text_emb": rng.normal(size=(n, dims[2])).astype(np.float32),
            "labels": labels,
        }, {"split": split, "fps": 24.0})
    return store


def test_window_starts_cover_every_frame():
    assert win.window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert win.window_starts(3, 4, 2) == [0]
    assert win.window_starts(8, 4, 4) == [0, 4]
    for n in (1, 7, 50, 51):
        starts = win.window_starts(n, 8, 3)
        covered = set()
        for s in starts:
            covered.update(range(s, min(s + 8, n)))
        assert covered == set(range(n))
        assert starts[-1] + 8 >= n and (len(starts) == 1 or starts[-2] + 8 < n)


def test_elements_pad_with_zeros_and_mask(tmp_path):
    store = make_store(tmp_path)
    ws = win.Windows(store, SPEC, "train", window=16, hop=8)
    vid = ws.video_ids[0]
    n = ws.n_frames[0]
    assert ws.dims == {"video": 5, "text": 4}
    last = [i for i, (vi, _) in enumerate(ws.index) if vi == 0][-1]
    el = ws[last]
    start = int(el["start"])
    real = n - start
    assert el["video"].shape == (16, 5) and el["video"].dtype == np.float32
    assert el["labels"].dtype == np.int32 and el["mask"].dtype == np.float32
    expr = np.asarray(store.read(vid, "face_expr"))
    np.testing.assert_array_equal(el["video"][:real, :3], expr[start:])
    assert np.all(el["video"][real:] == 0) and np.all(el["text"][real:] == 0)
    assert np.all(el["labels"][real:] == -1) and np.all(el["mask"][real:] == 0)
    # The unlabelled frame 2 of the first window is masked too.
    first = ws[0]
    assert first["labels"][2] == -1 and first["mask"][2] == 0
    assert np.all(first["mask"][first["labels"] >= 0] == 1)


def test_order_is_seeded_and_reshuffled_per_epoch(tmp_path):
    ws = win.Windows(make_store(tmp_path), SPEC, "train", window=8, hop=4)
    cfg = win.WindowConfig(window=8, hop=4, batch_size=3, seed=5, standardize=False)

    def order(loader, epoch):
        return [(int(v), int(s)) for b in loader.iterator({"epoch": epoch, "position": 0})
                for v, s in zip(b["video_index"], b["start"])]

    a, b = win.WindowLoader(ws, cfg), win.WindowLoader(ws, cfg)
    assert order(a, 0) == order(b, 0)
    assert order(a, 0) != order(a, 1)
    real = [x for x in order(a, 0) if x[0] >= 0]
    assert sorted(real) == sorted(map(tuple, ws.index.tolist()))  # every window once
    other = win.WindowLoader(ws, win.WindowConfig(batch_size=3, seed=6, standardize=False))
    assert order(other, 0) != order(a, 0)


def test_last_batch_is_filled_with_padding(tmp_path):
    ws = win.Windows(make_store(tmp_path), SPEC, "train", window=8, hop=4)
    cfg = win.WindowConfig(batch_size=4, shuffle=False, standardize=False)
    loader = win.WindowLoader(ws, cfg)
    batches = list(loader.iterator())
    assert len(batches) == loader.num_batches(0) == -(-len(ws) // 4)
    for b in batches:
        assert b["video"].shape == (4, 8, 5)
    n_pad = 4 * len(batches) - len(ws)
    last = batches[-1]
    assert np.sum(last["video_index"] == -1) == n_pad
    assert np.all(last["mask"][last["video_index"] == -1] == 0)
    assert sum(float(b["mask"].sum()) for b in batches) == sum(
        float(ws[i]["mask"].sum()) for i in range(len(ws)))


def test_resumed_iterator_yields_exactly_the_rest(tmp_path):
    ws = win.Windows(make_store(tmp_path), SPEC, "train", window=8, hop=4)
    loader = win.WindowLoader(ws, win.WindowConfig(batch_size=2, seed=1, standardize=False))
    full = list(loader.iterator({"epoch": 3, "position": 0}))
    it = loader.iterator({"epoch": 3, "position": 0})
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert state == {"epoch": 3, "position": 4}
    rest = list(loader.iterator(state))
    assert len(rest) == len(full) - 4
    for x, y in zip(rest, full[4:]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(ValueError):
        loader.iterator({"epoch": 3, "position": len(full) + 1})


def test_undersampling_keeps_positive_windows(tmp_path):
    store = make_store(tmp_path, lengths=(60, 60, 60, 60))
    # Pretend only the first three windows hold a positive frame.
    ws = win.Windows(store, SPEC, "train", window=4, hop=4)
    ws.has_positive[:] = False
    ws.has_positive[:3] = True
    cfg = win.WindowConfig(batch_size=4, neg_window_keep=0.25, seed=2, standardize=False)
    loader = win.WindowLoader(ws, cfg)
    sel0, sel1 = loader.selection(0), loader.selection(1)
    assert {0, 1, 2} <= set(sel0.tolist()) and {0, 1, 2} <= set(sel1.tolist())
    assert 0.1 * len(ws) < len(sel0) < 0.45 * len(ws)
    assert not np.array_equal(sel0, sel1)
    np.testing.assert_array_equal(sel0, win.WindowLoader(ws, cfg).selection(0))


def test_streaming_stats_match_numpy_and_are_cached(tmp_path):
    store = make_store(tmp_path, lengths=(30, 17, 5))
    make_store(tmp_path, lengths=(11,), split="val", seed=1)
    stats = win.compute_stats(store, ["face_blend", "text_emb"], store.video_ids("train"),
                              chunk=7)
    full = np.concatenate([np.asarray(store.read(v, "face_blend"))
                           for v in store.video_ids("train")])
    np.testing.assert_allclose(stats["face_blend"][0], full.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["face_blend"][1], full.std(0), rtol=1e-5)
    cached = win.load_or_compute_stats(store, ["face_blend"], "train")
    assert (tmp_path / win.STATS_DIR).is_dir()
    assert store.video_ids() == sorted(store.video_ids("train") + store.video_ids("val"))
    again = win.load_or_compute_stats(store, ["face_blend"], "train")
    np.testing.assert_array_equal(cached["face_blend"][1], again["face_blend"][1])
    cfg = win.WindowConfig(window=8, hop=8)
    ws = win.make_windows(store, SPEC, "train", cfg)
    vids = np.concatenate([ws[i]["video"][ws[i]["mask"] > 0] for i in range(len(ws))])
    assert abs(float(vids[:, 3:].mean())) < 0.2  # face_blend was centred from mean 3


def test_bad_spec_names_the_array(tmp_path):
    store = make_store(tmp_path)
    with pytest.raises(StoreError, match="voice_emb"):
        win.Windows(store, {"audio": ("voice_emb",)}, "train", window=8, hop=4)
    with pytest.raises(StoreError, match="no videos"):
        win.Windows(store, SPEC, "test", window=8, hop=4)


def test_process_shards_concatenate_to_the_one_process_batch(tmp_path):
    # Each process of a multi-process run reads only its rows of every batch; in process
    # order they are the one-process batch, padding of the last batch included.
    store = make_store(tmp_path / "s", lengths=(23, 9, 40))
    ws = win.make_windows(store, SPEC, "train", win.WindowConfig(window=8, hop=4))
    cfg = win.WindowConfig(window=8, hop=4, batch_size=4, seed=5)
    whole = list(win.WindowLoader(ws, cfg).iterator({"epoch": 1, "position": 0}))
    parts = [list(win.WindowLoader(ws, cfg, shard=(i, 2)).iterator({"epoch": 1, "position": 0}))
             for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for b, (p0, p1) in enumerate(zip(*parts)):
        for k in whole[b]:
            assert p0[k].shape[0] == 2
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), whole[b][k])
    with pytest.raises(ValueError, match="must split evenly over 3 processes"):
        win.WindowLoader(ws, cfg, shard=(0, 3))


def test_multi_process_settings_are_checked():
    from ahjax.core.train import engine
    assert engine.initialize_distributed(None, 1, 0) == (0, 1)     # one process: nothing
    with pytest.raises(ValueError, match="need a coordinator address"):
        engine.initialize_distributed(None, 2, 0)
    with pytest.raises(ValueError, match="process id 2 outside 0..1"):
        engine.initialize_distributed("127.0.0.1:1", 2, 2)
