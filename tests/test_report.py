"""The first run's plan and the report's opening: computed from the config, the cache and the
results, never written by hand. Small and fast: no training, no media."""

import dataclasses
import io
import re

import numpy as np
import pytest

from ahjax.core.data.store import FeatureStore
from level1_affect.dataset import EXTRACT_LOAD_S, data_stages, demo_path, store_dir
from ahjax.core.progress import Plan, Stage, fmt_seconds
from ahjax.core.results import to_markdown
from experiments import two_level
from level2_conflict import plots, report


def _row(ap, sd=0.0, n=1, f1=0.5):
    return {"AP": ap, "AP_sd": sd, "AVGF1": f1, "AVGF1_sd": 0.0, "N": 100, "n_runs": n}


def _results(full_ap=0.60, fusion_ap=0.40):
    test = {"two_level": _row(full_ap, 0.05, 5), "two_level/no_duration_prior": _row(full_ap, 0.05, 5),
            "no_cross_modal": _row(0.50, 0.04, 5), "concat_tcn": _row(0.20),
            "text_only": _row(0.30), "best_fusion (can)": _row(fusion_ap)}
    folds = {"two_level": _row(0.70, 0.1, 8), "no_cross_modal": _row(0.72, 0.1, 8)}
    return {"test": test, "test_folds": folds,
            "verdict": {"test: AP above no_cross_modal": full_ap > 0.5}}


def test_summary_is_derived_from_the_results_table():
    results = _results()
    text = report.summary(results, folds=4, fold_seeds=2)
    # Leader, its runs and spread, the gap to the next model, the full model against the
    # best baseline, the folds' leader, and what the rows mean.
    assert text.startswith("On the default split's test videos, two_level leads on frame AP "
                           "with 0.600 ± 0.050 over 5 runs, 0.100 above the next, "
                           "no_cross_modal (0.500).")
    assert "0.200 AP above the best baseline, best_fusion (can) (0.400)" in text
    assert "over 4 participant folds x 2 seeds (8 runs) no_cross_modal leads with AP 0.720, " \
           "the full model 0.700" in text
    assert "Rows: two_level is the full model" in text
    assert len(re.findall(r"[.;] [A-Z]", text)) <= 3       # two or three sentences
    # Other numbers, another story: a baseline now leads and the full model is below it.
    text = report.summary(_results(full_ap=0.45, fusion_ap=0.55), folds=4, fold_seeds=2)
    assert text.startswith("On the default split's test videos, best_fusion (can) leads on "
                           "frame AP with 0.550 (one run), 0.050 above the next, "
                           "no_cross_modal (0.500).")
    assert "(AP 0.450 ± 0.050 over 5 runs) is 0.100 AP below the best baseline" in text
    # The readings of the full model's runs share its AP and are not ranked as models.
    assert "no_duration_prior" not in text.split("Rows:")[0]


def test_report_opens_with_the_summary_and_its_tables_fit_the_page(tmp_path):
    results = _results()
    results["summary"] = report.summary(results, 4, 2)
    md = to_markdown(results, "two_level")
    assert md.splitlines()[2] == results["summary"]            # right under the title
    assert "## verdict" in md and "- yes: test: AP above no_cross_modal" in md
    page = plots.report_html(md, [], tmp_path / "report.html").read_text()
    assert page.index("<p class='summary'>") < page.index("<table>")
    # Every table sits in a wrapper that scrolls inside the page; long header names break.
    assert page.count("<div class='table-wrap'><table>") == page.count("<table>") == 2
    assert re.search(r"\.table-wrap\{[^}]*max-width:100%[^}]*overflow-x:auto", page)
    assert "<th>AVGF1_<wbr>sd</th>" in page


def test_plan_says_what_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AHJAX_CACHE", str(tmp_path))
    config = two_level.get_config(quick=True)
    plan = two_level.make_plan(config)
    names = [s.name for s in plan.stages]
    assert names == ["demo dataset", "level-1 extraction", "two-level models", "baselines"]
    assert not any(s.cached for s in plan.stages) and plan.seconds > 0
    line = plan.line()
    assert line.startswith("two_level plan: 1. demo dataset (8 synthetic videos")
    assert "In all about" in line
    # The models load while the demo is made: the extraction's estimate leaves that out.
    alone = data_stages(config.data, config.extract)[1].seconds
    assert plan.stages[1].seconds == pytest.approx(alone - EXTRACT_LOAD_S)
    # The demo on disk and 3 of its 8 videos extracted: said so, and no time for the demo.
    root = demo_path(config.data)
    root.mkdir(parents=True)
    (root / "ground_truth.json").write_text("{}")
    store = FeatureStore(store_dir(root, config.extract))
    for i in range(3):
        store.write(f"v{i}", {"labels": np.zeros(4, np.int8)}, {"split": "train"})
    demo, extraction = two_level.make_plan(config).stages[:2]
    assert demo.cached and demo.estimate() == "cached"
    assert not extraction.cached and extraction.note == "3 of 8 videos cached"
    # No demo to make: the extraction loads its models itself.
    assert extraction.seconds == pytest.approx(data_stages(config.data, config.extract)[1].seconds)
    # With a BAH root given there is no demo stage.
    bah = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(tmp_path)))
    assert [s.name for s in two_level.make_plan(bah).stages][0] == "level-1 extraction"


def test_plan_stage_lines():
    out = io.StringIO()
    plan = Plan([Stage("demo dataset", "8 videos", cached=True),
                 Stage("training", "2 runs", 130.0, note="less when cached")], stream=out)
    plan.announce()
    with plan.stage(2):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == ("plan: 1. demo dataset (8 videos): cached; 2. training (2 runs): "
                        "about 2 min, less when cached. In all about 2 min.")
    assert lines[1] == "[2/2] training (2 runs): about 2 min, less when cached"
    assert lines[2].startswith("[2/2] training: done in ") and "training" in plan.took
    assert [fmt_seconds(s) for s in (3, 42, 150, 3900)] == ["3 s", "40 s", "2 min", "1 h 5 min"]
    # A stage beside another says so, and the total counts only what it adds.
    out = io.StringIO()
    plan = Plan([Stage("training", "2 runs", 240.0),
                 Stage("baselines", "4 trainings", 180.0, beside="training", adds=120.0)],
                stream=out)
    assert plan.seconds == 360.0
    assert plan.line() == ("plan: 1. training (2 runs): about 4 min; 2. baselines "
                           "(4 trainings): about 3 min beside the training. In all about 6 min.")


def test_report_notes_faithfulness_and_folds():
    table = {"two_level": dict(_row(0.6), named_share=1.0, AP_without_remainder=0.6,
                               AVGF1_without_remainder=0.5), "concat_tcn": _row(0.2)}
    assert list(report.faithfulness(table)) == ["two_level"]
    folds = [{"participants": ["p0"], "val_participant": "p1", "test": ("a", "b"),
              "val": ("c",), "train": ("d", "e", "f")}]
    assert report.describe_folds(folds) == [{"test_participants": ["p0"],
                                             "val_participant": "p1", "n_test": 2,
                                             "n_val": 1, "n_train": 3}]
    notes = report.notes(5, 4, 2, {"concat_tcn": "/cache/x"})
    assert notes[0].startswith("Two-level rows: mean over 5 seeds") and "concat_tcn" in notes[0]
    assert report.plural(1, "seed") == "1 seed" and report.plural(2, "seed") == "2 seeds"
