"""The paper's metrics: hand-computed golden values, sklearn agreement, the AP reference loop."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, auc, confusion_matrix, f1_score

from ahjax.core.metrics import AP_THRESHOLDS, bah_metrics, frame_ap, mean_std, video_level

# Tiny example. Probabilities sit between grid thresholds (x.xxx5) so no float rounding
# decides a comparison. The last frame is unlabelled (-1) and must be ignored.
Y = np.array([1, 1, 0, 0, 0, 0, 1, 0, -1])
P = np.array([0.8005, 0.3005, 0.6005, 0.1005, 0.2005, 0.4005, 0.5505, 0.0505, 0.9995])
# By hand, on the 8 labelled frames, predicting prob >= 0.5:
#   TP = 2 (0.8005, 0.5505), FN = 1 (0.3005), FP = 1 (0.6005), TN = 4.
#   F1_POS = 2*2 / (2*2 + 1 + 1) = 2/3;  F1_NEG = 2*4 / (2*4 + 1 + 1) = 0.8
#   AVGF1 = (0.8 + 2/3) / 2 = 11/15;  W_F1 = (0.8*5 + 2/3*3) / 8 = 0.75;  WAR = 6/8
#   CONF rows (true 0, true 1): [4/5, 1/5], [1/3, 2/3]
# AP: recall only changes where the threshold passes a positive's probability:
#   t 0.300 -> 0.301: (R, P) (1, 3/5) -> (2/3, 2/4): area 1/3 * (0.6 + 0.5)/2 = 11/60
#   t 0.550 -> 0.551: (2/3, 2/3) -> (1/3, 1/2):     area 1/3 * (2/3 + 1/2)/2 = 7/36
#   t 0.800 -> 0.801: (1/3, 1) -> (0, 0.0):        area 1/3 * (1 + 0)/2     = 1/6
#   AP = 11/60 + 7/36 + 1/6 = 98/180
GOLDEN = {"AVGF1": 11 / 15, "AP": 98 / 180, "WAR": 0.75, "F1_POS": 2 / 3, "F1_NEG": 0.8,
          "W_F1": 0.75}
GOLDEN_CONF = [[0.8, 0.2], [1 / 3, 2 / 3]]


def logits_of(p):
    """2-class logits whose softmax gives back p."""
    p = np.asarray(p, dtype=np.float64)
    return np.stack([np.log1p(-p), np.log(p)], axis=1)


def reference_ap(y, p):
    """The paper's AP written as the straightforward loop over thresholds + sklearn auc."""
    precisions, recalls = [], []
    for t in np.arange(0, 1, 0.001):
        pred = p >= t
        tp = np.sum(pred & (y == 1))
        fp = np.sum(pred & (y == 0))
        fn = np.sum(~pred & (y == 1))
        precisions.append(tp / (tp + fp) if tp + fp > 0 else 0.0)
        recalls.append(tp / (tp + fn))
    return auc(recalls, precisions)


def test_golden_values_by_hand():
    m = bah_metrics(Y, P)
    for key, want in GOLDEN.items():
        assert m[key] == pytest.approx(want, abs=1e-12), key
    np.testing.assert_allclose(m["CONF"], GOLDEN_CONF, atol=1e-12)
    assert m["N"] == 8
    assert isinstance(m["CONF"], list) and isinstance(m["AP"], float)


def test_unlabelled_frames_are_dropped():
    keep = Y != -1
    assert bah_metrics(Y, P) == bah_metrics(Y[keep], P[keep])
    # Whatever score the -1 frames carry does not matter.
    assert bah_metrics(Y, np.where(keep, P, 0.0)) == bah_metrics(Y, P)


def test_logits_and_probabilities_agree():
    by_prob = bah_metrics(Y, P)
    by_logit = bah_metrics(Y, logits_of(P))
    for key in GOLDEN:
        assert by_logit[key] == pytest.approx(by_prob[key], abs=1e-12), key
    np.testing.assert_allclose(by_logit["CONF"], by_prob["CONF"])


def test_thresholds_are_the_papers():
    assert len(AP_THRESHOLDS) == 1000
    assert AP_THRESHOLDS[0] == 0.0 and AP_THRESHOLDS[-1] == pytest.approx(0.999)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_where_definitions_coincide(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.2).astype(int)
    logits = rng.normal(size=(400, 2)) + y[:, None] * np.array([0.0, 1.0])
    pred = logits.argmax(1)
    m = bah_metrics(y, logits)
    per_class = f1_score(y, pred, average=None, labels=[0, 1], zero_division=0)
    assert m["F1_NEG"] == pytest.approx(per_class[0])
    assert m["F1_POS"] == pytest.approx(per_class[1])
    assert m["AVGF1"] == pytest.approx(per_class.mean())
    assert m["W_F1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["WAR"] == pytest.approx(accuracy_score(y, pred))
    np.testing.assert_allclose(m["CONF"], confusion_matrix(y, pred, normalize="true"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ap_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.3).astype(int)
    # Some scores exactly on the grid (ties with thresholds), some float32 as models give.
    p = np.clip(rng.beta(2, 3, 300) + 0.3 * y, 0, 1)
    p[:50] = np.round(p[:50], 3)
    p32 = p.astype(np.float32)
    assert frame_ap(y, p) == pytest.approx(reference_ap(y, p), abs=1e-12)
    assert frame_ap(y, p32) == pytest.approx(reference_ap(y, p32), abs=1e-12)


def test_ap_constant_scores_and_perfect_ranking():
    y = np.array([0, 1, 0, 1])
    # Every threshold keeps everything positive: recall stays 1, the area is 0.
    assert frame_ap(y, np.full(4, 0.9995)) == 0.0
    # Perfect separation: precision rises 0.5 -> 2/3 -> 1 while recall stays 1, and the
    # only recall drop is 1 -> 0 where t passes 0.9, with precision 1 -> 0 (nothing
    # predicted): area = 1 * (1 + 0) / 2 = 0.5, whichever side of 0.9 the grid value falls.
    assert frame_ap(y, np.array([0.2, 0.9, 0.1, 0.9])) == pytest.approx(0.5)


def test_zero_division_gives_zero():
    m = bah_metrics(np.array([1, 1, 1]), np.array([0.9, 0.8, 0.7]))
    assert m["F1_NEG"] == 0.0 and m["F1_POS"] == 1.0 and m["AVGF1"] == 0.5
    assert m["CONF"] == [[0.0, 0.0], [0.0, 1.0]]


def test_errors():
    with pytest.raises(ValueError, match="without a positive"):
        bah_metrics(np.array([0, 0, -1]), np.array([0.1, 0.7, 0.9]))
    with pytest.raises(ValueError, match=r"shape \(3,\).*\(3, 2\).*got \(4,\)"):
        bah_metrics(np.array([0, 1, 1]), np.array([0.1, 0.7, 0.9, 0.3]))
    with pytest.raises(ValueError, match=r"got \(3, 3\)"):
        bah_metrics(np.array([0, 1, 1]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0, 1 or -1"):
        bah_metrics(np.array([0, 2, 1]), np.array([0.1, 0.7, 0.9]))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        bah_metrics(np.array([0, 1, 1]), np.array([0.1, 1.7, 0.9]))
    with pytest.raises(ValueError, match="NaN"):
        bah_metrics(np.array([0, 1, 1]), np.array([0.1, np.nan, 0.9]))
    with pytest.raises(ValueError, match="no labelled frames"):
        bah_metrics(np.array([-1, -1]), np.array([0.1, 0.2]))


def test_video_level_methods():
    # Video 0 by hand: votes 2/3; mean prob (0.9 + 0.2 + 0.6)/3; log-odds ln 9, ln 1/4,
    # ln 1.5 average to ln 1.5 (9 * 1/4 * 1.5 = 1.5^3), so mean logits give 0.6.
    probs = [np.array([0.9, 0.2, 0.6]), np.array([0.1, 0.3])]
    np.testing.assert_allclose(video_level(probs, "vote"), [2 / 3, 0.0])
    np.testing.assert_allclose(video_level(probs, "mean_probs"), [1.7 / 3, 0.2])
    # Video 1: log-odds ln 1/9 and ln 3/7 -> sigmoid of their mean = 1/(1 + sqrt(9 * 7/3)).
    np.testing.assert_allclose(video_level(probs, "mean_logits"), [0.6, 1 / (1 + np.sqrt(21))])
    logits = [logits_of(p) for p in probs]
    for method in ("vote", "mean_probs", "mean_logits"):
        np.testing.assert_allclose(video_level(logits, method), video_level(probs, method))
    with pytest.raises(ValueError, match="unknown video-level method 'max'"):
        video_level(probs, "max")
    with pytest.raises(ValueError, match="video 1 has no frames"):
        video_level([np.array([0.5]), np.array([])], "vote")


def test_mean_std_over_subjects():
    per_subject = {"s1": {"AP": 0.5, "AVGF1": 0.6, "CONF": [[1.0, 0.0], [0.0, 1.0]], "N": 10},
                   "s2": {"AP": 0.7, "AVGF1": 0.8, "N": 30}}
    out = mean_std(per_subject)
    assert set(out) == {"AP", "AVGF1", "N"}
    assert out["AP"]["mean"] == pytest.approx(0.6) and out["AP"]["std"] == pytest.approx(0.1)
    assert out["N"] == {"mean": 20.0, "std": 10.0, "n": 2}
    assert mean_std(per_subject, ddof=1)["AP"]["std"] == pytest.approx(np.sqrt(0.02))
