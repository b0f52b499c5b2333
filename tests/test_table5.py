"""Table 5 end to end through the runner, on a tiny synthetic feature store.

Each participant answers two questions (videos); frames carry a face and a voice array
whose first column follows the A/H label, plus a participant-specific offset: the
per-subject shift that personalisation is about. The arrays have the level-1 widths
(``level1_affect.schema``) and a few plausible columns (presence, voice activity, word
presence, valence) so that the two-level block can read them too.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ahjax.core.data.store import FeatureStore
from experiments import run as runner
from experiments import table5

SPLITS = {"train": ["p1", "p2", "p3"], "val": ["p4"], "test": ["p5", "p6", "p7"]}


def make_store(root, seed=0):
    rng = np.random.default_rng(seed)
    store = FeatureStore(root)
    for split, pids in SPLITS.items():
        for pid in pids:
            offset = rng.normal(0, 1.5, 3)
            for q in range(2):
                # Alternating label runs of 10-30 frames: several A/H segments per video.
                runs = [np.full(rng.integers(10, 30), (k + q) % 2) for k in range(6)]
                labels = np.concatenate(runs).astype(np.int8)
                if pid == "p7":
                    labels[:] = 0  # a test subject without A/H: not a target
                n = len(labels)
                signal = np.where(labels == 1, 1.5, -1.5)[:, None]
                face = rng.normal(0, 1, (n, 7)) + offset[0]
                face[:, :1] += signal
                voice = rng.normal(0, 1, (n, 6)) + offset[1]
                voice[:, :1] += 0.5 * signal
                voice[:, 4] = rng.random(n) < 0.8           # voice_active
                voice[:, 5] = 1.0 - voice[:, 4]             # pause
                text = rng.normal(0, 0.3, (n, 18))
                text[:, 0] = np.tanh(0.5 * signal[:, 0] + rng.normal(0, 0.5, n))  # sentiment
                text[:, 17] = rng.random(n) < 0.6          # word_present
                desc = rng.normal(0, 0.3, (n, 9))
                desc[:, 0] = np.tanh(offset[2] - 0.3 * signal[:, 0])  # valence
                store.write(f"{pid}/{pid}_Question_{q}", {
                    "face_expr": face, "voice_prosody": voice, "text_affect": text,
                    "face_desc": desc, "face_present": np.ones((n, 1)),
                    "labels": labels}, {"split": split, "participant": pid, "fps": 25})
    return store


@pytest.mark.slow
def test_quick_table5_runs_end_to_end(tmp_path):
    make_store(tmp_path / "store")
    cfg = runner.build_config("table5", ["--config.quick=True",
                                         f"--config.data.store={tmp_path / 'store'}",
                                         "--config.arrays.video=face_expr", "--config.arrays.text=()"])
    assert cfg.quick and cfg.arrays.spec() == {"video": ("face_expr",), "audio": ("voice_prosody",)}
    cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol, max_targets=0))
    results, run_dir = runner.run("table5", cfg, tmp_path / "runs")

    methods = [name for name, _ in table5.ROWS]
    # The paper's block, then the two-level model's (beyond the paper).
    assert list(results["test"]) == methods + [f"two_level/{m}" for m in methods]
    for name, row in results["test"].items():
        assert row["targets"] == 2  # p5 and p6; p7 has no A/H frame
        for metric in ("AVGF1", "AP", "WAR"):
            assert 0.0 <= row[metric] <= 1.0 and row[f"{metric}_std"] >= 0.0
    table = results["table5"]
    assert list(table) == [label for _, label in table5.ROWS]
    two = results["table5_two_level"]
    assert list(two) == list(table)
    for label, row in two.items():
        assert set(row) == set(table[label]), label
        assert all(np.isfinite(v) for v in row.values()), (label, row)
    assert "p6 / two-level / TTA: Tent" in results["per_target"]
    assert any("table5_two_level" in n for n in results["notes"])
    assert set(table["UDA: MMD"]) == {"AVGF1", "AVGF1_std", "AP", "AP_std"}
    assert set(table["SFDA: NRC"]) == {"AVGF1", "AVGF1_std", "AP", "AP_std"}
    assert set(table["TTA: Tent"]) == {"AVGF1", "AVGF1_std", "WAR", "WAR_std"}
    assert {"AVGF1", "AP", "WAR"} <= set(table["Oracle"])
    assert len(results["per_target"]) == 2 * 2 * len(methods)
    assert "p5 / Oracle" in results["per_target"]
    assert any("skipped p7" in n for n in results["notes"])

    # The mean over targets is the mean of the per-target rows.
    per = [results["per_target"][f"{p} / UDA: MMD"]["AVGF1"] for p in ("p5", "p6")]
    assert results["test"]["mmd"]["AVGF1"] == pytest.approx(np.mean(per))
    assert results["test"]["mmd"]["AVGF1_std"] == pytest.approx(np.std(per))

    # The splits are saved with the run, whole segments on one side each.
    saved = json.loads((run_dir / "personalisation_splits.json").read_text())
    assert set(saved["targets"]) == {"p5", "p6"} and "p7" in saved["skipped"]
    for part in ("adapt", "val", "test"):
        assert saved["targets"]["p5"]["parts"][part]
    md = (run_dir / "results.md").read_text()
    assert "## table5" in md and "UDA: ACPL" in md and "## per_target" in md
    assert "## table5_two_level" in md
    assert set(json.loads((run_dir / "per_target_two_level.json").read_text())) == {"p5", "p6"}


def test_missing_store_is_a_clear_error(tmp_path):
    cfg = table5.get_config(quick=True)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, store=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="feature store .*nope does not exist"):
        table5.run(cfg, tmp_path)
