"""Tables 1 and 2 end to end through the runner on the cached quick demo, and the bench.

The quick configs reuse two_level's quick demo and extraction settings, so the feature
store is the one other tests have already extracted; each row trains one epoch of a tiny
model. No timing is asserted: the bench test checks the report's shape only.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flax import nnx

from baselines import fusion
from baselines.tcn import ConcatTCN, TCNConfig
from experiments import bench
from baselines import frame_tables as ft
from experiments import run as runner
from experiments import table1, table2, two_level


def _finite_row(row, metrics=ft.TABLE_METRICS):
    return all(isinstance(row[m], float) and math.isfinite(row[m]) for m in metrics)


def test_subset_codes_round_trip():
    assert [ft.subset_code(ft.modalities_of(s)) for s in ft.SUBSETS] == list(ft.SUBSETS)
    assert ft.modalities_of("t+v") == ("video", "text")
    for bad in ("", "V+V", "X", "V+Q"):
        with pytest.raises(ValueError):
            ft.modalities_of(bad)


def test_full_configs_follow_the_paper():
    t2 = table2.get_config()
    names = [r.name for r in table2.rows(t2)]
    assert len(names) == 28 and names[0] == "CAN / V" and names[-1] == "JMT / V+A+T"
    assert names[7] == "LFAN / V"  # method-major, the paper's subset order inside
    for cfg in (t2, table1.get_config()):
        assert (cfg.windows.window, cfg.windows.hop, cfg.windows.batch_size) == (696, 48, 4)
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.nesterov,
                cfg.train.weight_decay) == ("sgd", 0.008, 0.9, True, 1e-4)
        assert cfg.demo_window == two_level.get_config().baseline_windows.window
    assert [r.name for r in table1.rows(table1.get_config())] == [
        "V / no context (frame-wise)", "V / context (TCN)"]


@pytest.mark.slow
def test_quick_table1_end_to_end(tmp_path):
    cfg = runner.build_config("table1", ["--config.quick=True"])
    assert cfg.quick and cfg.data == two_level.get_config(quick=True).data
    results, run_dir = runner.run("table1", cfg, tmp_path)
    rows = ["V / no context (frame-wise)", "V / context (TCN)"]
    assert list(results["table1"]) == rows
    for name in rows:
        assert list(results["table1"][name]) == list(ft.TABLE_METRICS)
        assert _finite_row(results["table1"][name])
        assert results["table1"][name]["AP"] == results["test"][name]["AP"]
        assert _finite_row(results["val"][name])
        assert results["training"][name]["epochs"] == 1
    # Kernel 1 removes parameters from every conv: the frame-wise row is strictly smaller.
    assert results["training"][rows[0]]["params"] < results["training"][rows[1]]["params"]
    saved = json.loads((run_dir / "results.json").read_text())
    assert set(saved["val"]) == set(rows) and "## table1" in (run_dir / "results.md").read_text()
    assert "PARTIAL" not in (run_dir / "results.md").read_text()


def test_a_crash_after_the_first_row_keeps_it_on_disk(tmp_path, monkeypatch):
    calls = []
    real = ft.train_row

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "train_row", crash_on_second)
    cfg = runner.build_config("table1", ["--config.quick=True"])
    with pytest.raises(RuntimeError, match="killed"):
        runner.run("table1", cfg, tmp_path)
    run_dir = next(tmp_path.glob("table1-*"))
    saved = json.loads((run_dir / "results.json").read_text())
    assert list(saved["test"]) == ["V / no context (frame-wise)"]
    assert any("PARTIAL: 1 of 2" in n for n in saved["notes"])
    assert "(partial: 1/2)" in (run_dir / "results.md").read_text()
    # --resume finishes the table in the same folder; the first row is restored, not retrained.
    first = run_dir / "models" / ft.slug("V / no context (frame-wise)") / "metrics.jsonl"
    lines = first.read_text().splitlines()
    monkeypatch.setattr(ft, "train_row", real)
    assert runner.main(["table1", "--config.quick=True", "--config.train.lr=0.5",
                        "--resume", str(run_dir)]) == 2           # not the run's config
    assert runner.main(["table1", "--config.quick=True", "--resume", str(tmp_path)]) == 2
    results, again = runner.run("table1", cfg, tmp_path, resume=run_dir)
    assert again == run_dir and len(results["test"]) == 2
    assert first.read_text().splitlines() == lines
    assert "PARTIAL" not in (run_dir / "results.md").read_text()


@pytest.mark.slow
def test_quick_table2_end_to_end(tmp_path):
    cfg = runner.build_config("table2", ["--config.quick=True"])
    results, run_dir = runner.run("table2", cfg, tmp_path)
    rows = [f"{table2.LABELS[m]} / {s}" for m in cfg.methods for s in cfg.subsets]
    assert 2 <= len(rows) <= 3
    assert list(results["table2"]) == rows + [ft.PAPER_LABEL]
    for name in rows:
        assert list(results["table2"][name]) == list(ft.TABLE_METRICS)
        assert _finite_row(results["table2"][name]) and _finite_row(results["val"][name])
    # The reference row carries exactly the two published numbers, and nowhere else.
    assert results["table2"][ft.PAPER_LABEL] == {"AVGF1": 0.5586, "AP": 0.2631}
    assert ft.PAPER_LABEL not in results["test"] and ft.PAPER_LABEL not in results["val"]
    assert any("MT/JMT" in n for n in results["notes"])
    assert results["setup"]["window"] == cfg.windows.window
    md = (run_dir / "results.md").read_text()
    assert "## table2" in md and ft.PAPER_LABEL in md


@pytest.mark.slow
def test_bench_registry_builds_every_model():
    assert {"concat_tcn", "can", "lfan", "mt", "jmt", "two_level"} <= set(bench.MODELS)
    for name, entry in bench.MODELS.items():
        model = nnx.eval_shape(lambda e=entry: e.build(dict(e.dims), nnx.Rngs(params=0, dropout=1)))
        n = fusion.param_count(model)
        assert n > 0, name
        if name == "lfan":   # the same model as the reference's: 5,001,378 parameters
            assert n == pytest.approx(5_001_378, rel=0.01)
    assert {n for n, e in bench.MODELS.items() if e.reference} == set(bench.REFERENCE_MODELS)
    assert set(bench.MODELS["two_level"].dims) == set(bench.TRACK_DIMS)
    batch = bench._track_inputs(np.random.default_rng(0), bench.TRACK_DIMS, 2, 8)
    assert batch["valid"].shape == (2, 8) and batch["face_desc"].shape == (2, 8, 9)


def test_bench_compare_against_reference():
    ref = {"train_frames_per_s": 1000.0, "infer_frames_per_s": 4000.0, "params": 5e6,
           "train_peak_rss_mb": 800.0}
    ours = {"train_frames_per_s": 2500.0, "infer_frames_per_s": 6000.0, "params": 5e6,
            "train_peak_rss_mb": 600.0}
    got = bench.compare(ours, ref)
    assert got["train_speed_ratio"] == pytest.approx(2.5)
    assert got["infer_speed_ratio"] == pytest.approx(1.5)
    assert got["train_peak_rss_ratio"] == pytest.approx(0.75) and got["target_met"]
    ours["train_frames_per_s"] = 1900.0            # faster, but not 2x
    assert not bench.compare(ours, ref)["target_met"]


def test_bench_runs_the_reference_script_with_our_settings(tmp_path, monkeypatch):
    """``--reference DIR`` runs DIR/bench_ref.py in a child process with the same batch,
    window and threads as ours and reads its JSON line (a stand-in script here: the real
    one needs the reference code and is run by hand, see experiments/results)."""
    (tmp_path / "bench_ref.py").write_text(
        "import json, sys\n"
        "a = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "print('some log line')\n"
        "print(json.dumps({'model': a['--model'], 'batch': int(a['--batch']),\n"
        "                  'window': int(a['--window']), 'threads': int(a['--threads']),\n"
        "                  'infer_batch': int(a['--infer_batch']), 'train_frames_per_s': 1.0}))\n")
    monkeypatch.chdir(tmp_path.parent)        # a relative folder, as on the command line
    got = bench.run_reference(tmp_path.name, "lfan", 2, 4, 696, 2)
    assert got == {"model": "lfan", "batch": 4, "window": 696, "threads": 2, "infer_batch": 4,
                   "train_frames_per_s": 1.0}
    with pytest.raises(FileNotFoundError, match="no bench_ref.py"):
        bench.run_reference(tmp_path / "nowhere", "lfan", 2, 4, 696, 2)


def test_bench_rounds_alternate_and_report_medians(monkeypatch):
    """``--rounds N --variants``: per round the reference, then ours under each XLA
    setting, in that order; ratios per round and their median and spread."""
    calls = []

    def ref(folder, name, *a):
        calls.append(("ref", name))
        return {"train_frames_per_s": next(speeds), "infer_frames_per_s": 10.0,
                "params": 1, "train_peak_rss_mb": 100.0}

    def ours(name, steps, batch, frames, threads, flags=""):
        calls.append(("ours", name, flags))
        return {"train_frames_per_s": next(speeds), "infer_frames_per_s": 20.0,
                "params": 1, "train_peak_rss_mb": 150.0}
    monkeypatch.setattr(bench, "run_reference", ref)
    monkeypatch.setattr(bench, "run_ours", ours)
    variants = bench.parse_variants("default;xnn=--xla_cpu_experimental_xnn_fusion_type=dot")
    assert variants == {"default": "", "xnn": "--xla_cpu_experimental_xnn_fusion_type=dot"}
    speeds = iter([1000.0, 900.0, 800.0, 1000.0, 1100.0, 1200.0])   # ref, ours x 2, per round
    got = bench.side_by_side("ref", ["lfan"], 2, 4, 696, 2, rounds=2, variants=variants)["lfan"]
    assert calls == [("ref", "lfan"), ("ours", "lfan", ""), ("ours", "lfan", variants["xnn"])] * 2
    train = got["variants"]["default"]["train_speed_ratio"]
    assert train["values"] == pytest.approx([0.9, 1.1]) and train["median"] == pytest.approx(1.0)
    assert got["variants"]["xnn"]["train_speed_ratio"]["min"] == pytest.approx(0.8)
    assert got["train_speed_ratio"] == pytest.approx(1.0)   # the first variant's median
    assert got["variants"]["xnn"]["infer_speed_ratio"]["median"] == pytest.approx(2.0)
    for bad in ("", "a=1;a=2", "=--flag"):
        with pytest.raises(ValueError, match="--variants"):
            bench.parse_variants(bad)


@pytest.fixture
def tiny(monkeypatch):
    """A tiny model registered the way any family registers: paper-size models take tens of
    seconds to compile on two shared cores, and the report's shape does not depend on size."""
    model = bench.BenchModel(
        lambda dims, rngs: ConcatTCN(dims, TCNConfig(video=(8,), audio=(4,), text=(8,)), rngs=rngs),
        {"video": 6, "audio": 3, "text": 5})
    monkeypatch.setitem(bench.MODELS, "tiny_tcn", model)
    return model


def test_bench_quick_reports_json(capsys, tiny):
    assert bench.main(["--quick", "--models", "tiny_tcn", "--frames", "24", "--steps", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    got = report["models"]["tiny_tcn"]
    for key in ("params", "inputs", "batch", "train_frames_per_s", "infer_frames_per_s",
                "train_first_call_s", "infer_first_call_s", "peak_rss_delta_mb"):
        assert key in got, key
    assert got["batch"] == [bench.BATCH, 24] and got["train_frames_per_s"] > 0
    assert got["inputs"] == tiny.dims and got["train_peak_rss_mb"] > 0
    assert "side_by_side" not in report     # no ratio without a reference run
    assert {"device", "load_average", "models"} <= set(report) and "extraction" not in report


def test_bench_profile_splits_the_step(capsys, tiny):
    assert bench.main(["--profile", "--models", "tiny_tcn", "--frames", "24", "--steps", "1"]) == 0
    got = json.loads(capsys.readouterr().out)["profile"]["tiny_tcn"]
    secs = got["seconds"]
    assert all(secs[k] >= 0 for k in ("forward", "backward", "optimizer_update", "rest_of_step"))
    assert secs["forward_and_backward"] >= secs["forward"] * 0.5
    assert got["forward_and_backward_gflop"] > got["forward_gflop"] > 0
    assert got["train_step_hlo_ops"].get("convolution", 0) + got["train_step_hlo_ops"].get("dot", 0) > 0
    mem = got["train_step_memory_mb"]      # XLA's buffer plan: the state and batch at least
    assert mem["argument"] > 0 and mem["temp"] >= 0 and mem["output"] > 0


def test_bench_matmul_peak_measures_both_precisions():
    got = bench.matmul_peak(size=128, steps=1)
    assert got["size"] == 128
    assert got["float32_gflop_per_s"] > 0
    assert got["bfloat16_operands_float32_accumulation_gflop_per_s"] > 0


def test_bench_warm_figure_is_the_median_of_the_calls_after_the_first():
    calls = [{"total_s": t} for t in (40.0, 12.0, 30.0, 14.0)]
    assert bench._warm_seconds(calls) == 14.0           # the compiling first call left out
    assert bench._warm_seconds(calls[:2]) == 12.0
    assert bench._warm_seconds(calls[:1]) == 40.0       # one call: it is all there is
