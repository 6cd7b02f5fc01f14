"""The per-cell statistics and the same-minus-different interval pinned against references:
``bootstrap_interval`` against ``scipy.stats.bootstrap`` (percentile method), macro-F1 by
hand, relative score and ``transfer_gain``'s rule on hand-computed cases, and
``same_minus_diff_interval(value="transfer_gain")`` on hand-built predictions tables whose
every resample's answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from prompt_core.analysis import (
    bootstrap_interval,
    same_minus_diff_interval,
    transfer_gain,
    transfer_summary,
)
from prompt_core.cell_stats import cell_statistics
from prompt_core.evaluation import accuracy, macro_f1
from tests.stats_helpers import TYPES, gain_tables, hits_first, known_targets

pytestmark = pytest.mark.reference

# -- bootstrap_interval vs scipy.stats.bootstrap -------------------------------------------


def _vector_macro_f1(pred: np.ndarray, gold: np.ndarray, axis: int = -1,
                     n_labels: int = 3) -> np.ndarray:
    """Macro-F1 along ``axis`` (vectorised for scipy): mean over classes of 2 tp / (2 tp + fp
    + fn), 0 for a class never predicted nor present (scikit-learn's zero_division=0)."""
    f1 = []
    for c in range(n_labels):
        p, g = pred == c, gold == c
        tp = np.sum(p & g, axis=axis)
        denom = np.sum(p, axis=axis) + np.sum(g, axis=axis)
        f1.append(np.divide(2 * tp, denom, out=np.zeros(tp.shape), where=denom > 0))
    return np.mean(f1, axis=0)


def _vector_accuracy(pred: np.ndarray, gold: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(pred == gold, axis=axis)


@pytest.mark.parametrize("metric, statistic", [("accuracy", _vector_accuracy),
                                               ("macro_f1", _vector_macro_f1)])
def test_bootstrap_interval_is_scipys_percentile_bootstrap(metric, statistic):
    """Same data, same number of resamples, independent random streams: the two intervals'
    ends agree to Monte Carlo error.

    Tolerance: the p-quantile of B resamples has standard error about
    sqrt(p (1 - p) / B) / f(q_p), with f the bootstrap distribution's density at the
    quantile, taken as normal: f = phi(z_p) / sigma_boot (sigma_boot from scipy's resamples).
    The two estimates are independent, so their difference has sqrt(2) times that; we allow 4
    such standard errors (a chance failure about 1 in 10^4 per end) plus one step of the
    statistic's grid (1 / N: quantiles of a discrete statistic move by whole steps). The test
    also checks that this tolerance is tight enough to tell a 95% from a 90% interval."""
    n, B, n_labels = 1000, 20000, 3
    rng = np.random.default_rng(11)
    gold = rng.integers(0, n_labels, n)
    pred = np.where(rng.random(n) < 0.7, gold, rng.integers(0, n_labels, n))
    want = accuracy(pred, gold) if metric == "accuracy" else macro_f1(pred, gold, n_labels)
    assert float(statistic(pred, gold)) == pytest.approx(want)

    low, high = bootstrap_interval(pred, gold, n_labels, metric, n_boot=B, seed=3)
    ref = stats.bootstrap((pred, gold), statistic, paired=True, vectorized=True,
                          n_resamples=B, batch=1000, confidence_level=0.95,
                          method="percentile", random_state=np.random.default_rng(4))
    dist = ref.bootstrap_distribution
    sigma = float(np.std(dist))
    p = 0.025
    z = stats.norm.ppf(1 - p)
    se = math.sqrt(p * (1 - p) / B) / (stats.norm.pdf(z) / sigma)
    tol = 4 * math.sqrt(2) * se + 1 / n
    assert low == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert high == pytest.approx(ref.confidence_interval.high, abs=tol)
    # tight enough to matter: a 90% interval's ends are further away than the tolerance
    q90 = np.quantile(dist, [0.05, 0.95])
    assert abs(q90[0] - ref.confidence_interval.low) > tol
    assert abs(q90[1] - ref.confidence_interval.high) > tol
    assert low < want < high


def test_macro_f1_by_hand():
    """The metric both bootstraps resample: per class 2 tp / (2 tp + fp + fn), averaged over
    all ``n_labels`` classes, 0 for a class neither present nor predicted."""
    gold, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 0, 2])
    f1 = [2 / (2 + 1 + 1), 4 / (4 + 1 + 0), 2 / (2 + 0 + 1)]  # classes 0, 1, 2
    assert macro_f1(pred, gold, 3) == pytest.approx(sum(f1) / 3)
    assert macro_f1(pred, gold, 4) == pytest.approx(sum(f1) / 4)
    assert _vector_macro_f1(pred, gold, n_labels=4) == pytest.approx(sum(f1) / 4)


# -- relative score and transfer_gain's rule -----------------------------------------------


def test_relative_score_is_score_over_the_own_prompts_score():
    n = 20
    gold = np.arange(n) % 2
    preds = {"src": hits_first(n, 12, gold), "own": hits_first(n, 16, gold),
             "zero": hits_first(n, 0, gold)}
    out = cell_statistics({"src": 0}, preds, gold, 2, own={0: "own"}, n_boot=50)
    st = out["src", "accuracy"]
    assert (st.score, st.own_score) == (0.6, 0.8)
    assert st.relative_score == 0.6 / 0.8
    assert out["src", "macro_f1"].relative_score == (
        macro_f1(preds["src"], gold, 2) / macro_f1(preds["own"], gold, 2))
    # an own score of 0 (or none at all) has no relative score
    assert cell_statistics({"src": 0}, preds, gold, 2, own={0: "zero"},
                           n_boot=50)["src", "accuracy"].relative_score is None
    assert cell_statistics({"src": 0}, preds, gold, 2, own={},
                           n_boot=50)["src", "accuracy"].relative_score is None


@pytest.mark.parametrize("score, none, own, margin, own_low, want", [
    (0.8, 0.5, 0.9, 0.0, None, (0.8 - 0.5) / (0.9 - 0.5)),  # the ratio
    (0.8, 0.5, 0.5, 0.0, None, None),      # own - none = 0 <= margin
    (0.8, 0.5, 0.45, 0.0, None, None),     # own below none
    (0.8, 0.5, 0.54, 0.05, None, None),    # own - none = 0.04 <= margin
    (0.8, 0.5, 0.6, 0.05, None, (0.8 - 0.5) / (0.6 - 0.5)),  # beyond the margin
    (0.8, 0.5, 0.9, 0.0, 0.5, None),       # none = own_low: not below the own interval
    (0.8, 0.5, 0.9, 0.0, 0.45, None),      # none inside the own interval
    (0.8, 0.5, 0.9, 0.0, 0.55, (0.8 - 0.5) / (0.9 - 0.5)),  # none below it: the ratio
    (0.3, 0.5, 0.9, 0.0, 0.8, (0.3 - 0.5) / (0.9 - 0.5)),   # negative: worse than none
])
def test_transfer_gain_rule(score, none, own, margin, own_low, want):
    got = transfer_gain(score, none, own, min_margin=margin, own_low=own_low)
    assert got is None if want is None else got == want


def test_cell_statistics_takes_own_low_from_the_own_prompts_interval():
    """transfer_gain in a row uses the own cell's own 95% bootstrap interval (seeded by the
    seed) as ``own_low``: a narrow own gain inside it gives None, a clear one the ratio."""
    n = 20
    gold = np.arange(n) % 2
    preds = {"src": hits_first(n, 20, gold), "barely": hits_first(n, 11, gold),
             "clear": hits_first(n, 20, gold), "none": hits_first(n, 10, gold)}
    barely_low = bootstrap_interval(preds["barely"], gold, 2, "accuracy", 1000, seed=5)[0]
    assert barely_low < 0.5  # none (0.5) is inside the own prompt's interval
    got = cell_statistics({"src": 5}, preds, gold, 2, own={5: "barely"}, none={5: "none"})
    assert got["src", "accuracy"].transfer_gain is None
    assert got["src", "accuracy"].relative_score == 1.0 / 0.55
    got = cell_statistics({"src": 5}, preds, gold, 2, own={5: "clear"}, none={5: "none"})
    assert got["src", "accuracy"].transfer_gain == (1.0 - 0.5) / (1.0 - 0.5)
    assert (got["src", "accuracy"].score_low, got["src", "accuracy"].score_high) == (
        bootstrap_interval(preds["src"], gold, 2, "accuracy", 1000, seed=5))


# -- same_minus_diff_interval(value="transfer_gain") ---------------------------------------

def test_a_cell_without_a_stored_gain_never_enters_a_resample():
    """b1's own prompt beats no prompt by 1/20, inside its interval: its cells have no stored
    gain. Their ratio (10 on the full data, undefined when a resample misses example 10)
    must not reach any resample: every defined resample gives exactly 1 - 0, and no resample
    is undefined because of them."""
    cells, preds = gain_tables(known_targets("b1", "right"),
                           {"a1": True, "a2": True, "b1": False, "b2": True})
    b1 = cells[(cells["target_task"] == "b1") & (cells["source_kind"] == "prompt")]
    assert b1["transfer_gain"].isna().all()  # the rule: none (0.5) >= the own interval's low
    r = same_minus_diff_interval(cells, preds, value="transfer_gain", n_boot=1000, seed=1)
    s = transfer_summary(cells)
    assert r["point"] == s["same_type_gain"] - s["diff_type_gain"] == 1.0
    assert r["low"] == pytest.approx(1.0, abs=1e-12)
    assert r["high"] == pytest.approx(1.0, abs=1e-12)
    assert r["n_undefined_cells"] == 0  # b1's own - none hits 0 often, but b1 has no gain
    # undefined resamples are only those that drew b1 alone (no cell with a gain): rare
    assert r["n_valid"] + r["n_undefined"] == 1000 and r["n_undefined"] < 20
    assert (r["n_same_type_cells"], r["n_diff_type_cells"]) == (3, 6)


def test_resamples_where_a_gain_cells_own_minus_none_is_not_positive_are_undefined():
    """a1's own prompt beats no prompt by 1/20 and its cells have stored gains (the plain
    rule). A resample whose draw of a1 misses example 10 has own - none = 0 there: it is
    undefined (counted, not averaged without a1's cells). A draw of a1 misses it with
    probability q = (19/20)^20 = 0.358, and a resample draws a1 Binomial(4, 1/4) times, so
    about 1 - (1 - q/4)^4 = 31% of the resamples are undefined."""
    cells, preds = gain_tables(known_targets("a1", "copy"), dict.fromkeys(TYPES, True))
    assert cells[cells["source_kind"] == "prompt"]["transfer_gain"].notna().all()
    r = same_minus_diff_interval(cells, preds, value="transfer_gain", n_boot=1000, seed=2)
    s = transfer_summary(cells)
    assert r["point"] == s["same_type_gain"] - s["diff_type_gain"] == 1.0
    assert r["n_valid"] + r["n_undefined"] == 1000
    q = (19 / 20) ** 20
    expected = 1 - (1 - q / 4) ** 4
    sd = math.sqrt(expected * (1 - expected) / 1000)
    assert abs(r["n_undefined"] / 1000 - expected) < 4 * sd, r["n_undefined"]
    # each undefined draw of a1 makes its three gain cells (a2, b1, b2 on a1) undefined
    assert r["n_undefined_cells"] % 3 == 0
    assert r["n_undefined_cells"] >= 3 * r["n_undefined"]
    # the defined resamples: exactly 1 - 0
    assert r["low"] == pytest.approx(1.0, abs=1e-12)
    assert r["high"] == pytest.approx(1.0, abs=1e-12)
    # relative_score on the same cells: never undefined (no own score is 0)
    rel = same_minus_diff_interval(cells, preds, n_boot=1000, seed=2)
    assert (rel["n_valid"], rel["n_undefined"], rel["n_undefined_cells"]) == (1000, 0, 0)
