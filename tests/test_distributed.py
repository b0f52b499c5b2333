"""Level-1 extraction on Ray: the same arrays as one worker, plain folders of videos, and
clear errors when Ray or the videos are missing."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ahjax.core.data.store import FeatureStore
from level1_affect.dataset import QUICK_DATA, QUICK_EXTRACT, dataset_records, demo_root, extract_dataset


def _folder_of_videos(tmp_path, n=2, broken=True):
    """A plain folder (not a BAH tree) with ``n`` demo videos, one in a sub-folder with a
    space in its name, and a broken file that must fail alone."""
    videos = sorted(Path(demo_root(QUICK_DATA)).rglob("*.mp4"))[:n]
    folder = tmp_path / "videos"
    (folder / "day one").mkdir(parents=True)
    shutil.copy(videos[0], folder / "day one" / "first.mp4")
    for i, v in enumerate(videos[1:]):
        shutil.copy(v, folder / f"clip{i}.mp4")
    if broken:
        (folder / "broken.mp4").write_bytes(b"not a video at all")
    return folder


def test_a_plain_folder_is_indexed_by_relative_paths(tmp_path):
    folder = tmp_path / "v"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.MP4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video")
    records = dataset_records(folder)
    assert [r.video_id for r in records] == ["a/x"]
    assert records[0].frame_labels is None and records[0].split == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no video files .* not a BAH tree"):
        dataset_records(empty)


def test_workers_without_ray_say_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "ray", None)       # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[distributed\]\""):
        extract_dataset(folder, tmp_path / "store", QUICK_EXTRACT, progress=False, workers=2)
    with pytest.raises(ValueError, match="workers=0"):
        extract_dataset(folder, tmp_path / "store", QUICK_EXTRACT, progress=False, workers=0)


@pytest.mark.slow
def test_two_ray_workers_give_the_arrays_of_one(tmp_path):
    pytest.importorskip("ray")
    folder = _folder_of_videos(tmp_path)
    one = extract_dataset(folder, tmp_path / "one", QUICK_EXTRACT, progress=False)
    two = extract_dataset(folder, tmp_path / "two", QUICK_EXTRACT, progress=False, workers=2)
    for summary in (one, two):
        assert summary["done"] == 2 and set(summary["failed"]) == {"broken"}
    assert set(FeatureStore(tmp_path / "two").video_ids()) == {"day one/first", "clip0"}
    a, b = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    for vid in a.video_ids():
        meta_a, meta_b = a.meta(vid), b.meta(vid)
        assert meta_a["shapes"] == meta_b["shapes"] and meta_a["words"] == meta_b["words"]
        for name in meta_a["shapes"]:
            np.testing.assert_allclose(np.asarray(b.read(vid, name), np.float64),
                                       np.asarray(a.read(vid, name), np.float64),
                                       rtol=0, atol=1e-6, err_msg=f"{vid}/{name}")
    # Resumable on Ray too: a second run skips what is stored and retries only the failure.
    again = extract_dataset(folder, tmp_path / "two", QUICK_EXTRACT, progress=False, workers=2)
    assert again["skipped"] == 2 and again["done"] == 0 and set(again["failed"]) == {"broken"}
    assert "broken" in (tmp_path / "two" / "failures.json").read_text()


def test_an_unreachable_ray_address_fails_in_seconds_with_one_line(tmp_path):
    import subprocess
    import time
    pytest.importorskip("ray")
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(b"")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "ahjax", "extract", "--root", str(folder),
                           "--out", str(tmp_path / "store"), "--workers", "2",
                           "--ray-address", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120)
    assert time.time() - t0 < 60
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot reach the Ray cluster at 127.0.0.1:9"), lines
    assert "Traceback" not in proc.stderr
    from level1_affect.distributed import check_address
    with pytest.raises(ValueError, match="expected host:port"):
        check_address("nonsense")


class DyingWorker:
    """An extraction worker whose process dies on the video ``clip0``."""

    def __init__(self, *args):
        from level1_affect.distributed import ExtractWorker
        self.inner = ExtractWorker(*args)

    def extract(self, record):
        import os
        if record.video_id == "clip0":
            os._exit(3)
        return self.inner.extract(record)


@pytest.mark.slow
def test_a_worker_dying_mid_video_loses_only_that_video(tmp_path):
    ray = pytest.importorskip("ray")
    from level1_affect import distributed
    folder = _folder_of_videos(tmp_path, n=3, broken=False)
    records = dataset_records(folder)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        results = {r["video_id"]: r for r in distributed.extract_on_ray(
            records, tmp_path / "store", QUICK_EXTRACT, folder, workers=2, progress=False,
            worker=DyingWorker)}
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert results["clip0"]["status"] == "failed"
    assert results["clip0"]["error"].startswith("WorkerDied")
    assert results["clip1"]["status"] == results["day one/first"]["status"] == "done"
    store = FeatureStore(tmp_path / "store")
    assert set(store.video_ids()) == {"clip1", "day one/first"}      # nothing of clip0
    again = extract_dataset(folder, tmp_path / "store", QUICK_EXTRACT, progress=False,
                            workers=2)
    assert again["done"] == 1 and again["skipped"] == 2 and not again["failed"]
