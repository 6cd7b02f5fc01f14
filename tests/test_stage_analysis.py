"""prompt_core.analysis for the cross_model and tpt stages, on hand-made inputs with known
answers: bootstrap intervals, TPT curve measures (steps / seconds to target, speed-ups and
their None cases), the stage summaries and their refusal of mixed configurations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from prompt_core.analysis import (
    MixedCellsError,
    _boot_stats,
    bootstrap_interval,
    cross_model_summary,
    curve_from_rows,
    reach,
    score_at,
    tpt_metrics,
    tpt_summary,
)
from tasks.tables import TptRow

# -- bootstrap ------------------------------------------------------------------------------


def _predictions(n: int, acc: float, n_labels: int = 3, seed: int = 0):
    """Gold labels and predictions right on exactly round(acc * n) examples."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, n_labels, n)
    pred = gold.copy()
    wrong = rng.permutation(n)[: n - round(acc * n)]
    pred[wrong] = (gold[wrong] + 1) % n_labels
    return pred, gold


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_contains_the_estimate_and_shrinks_with_more_examples(metric):
    from prompt_core.evaluation import scores

    widths = []
    for n in (100, 2500):
        pred, gold = _predictions(n, 0.7)
        point = scores(pred, gold, 3)[metric]
        low, high = bootstrap_interval(pred, gold, 3, metric, n_boot=500)
        assert low < point < high, (n, low, point, high)
        widths.append(high - low)
    # the width of a proportion's interval goes as 1 / sqrt(n): 5x fewer here
    assert widths[1] < widths[0] / 3, widths
    assert 0.1 < widths[0] < 0.25  # about 2 x 1.96 x sqrt(0.7 x 0.3 / 100) = 0.18


def test_bootstrap_is_a_percentile_interval_and_deterministic():
    pred, gold = _predictions(60, 0.6)
    a = bootstrap_interval(pred, gold, 3, n_boot=400, seed=7, level=0.9)
    assert a == bootstrap_interval(pred, gold, 3, n_boot=400, seed=7, level=0.9)
    assert a != bootstrap_interval(pred, gold, 3, n_boot=400, seed=8, level=0.9)
    # the same resamples drawn by hand: the 5% and 95% quantiles of the resampled accuracy
    idx = np.random.default_rng(7).integers(0, 60, size=(400, 60))
    want = np.quantile((pred == gold)[idx].mean(axis=1), [0.05, 0.95])
    assert a == pytest.approx(tuple(want), abs=1e-12)


def test_bootstrap_macro_f1_resamples_match_evaluation_macro_f1():
    from prompt_core.evaluation import macro_f1

    pred, gold = _predictions(40, 0.5, n_labels=4, seed=3)
    pred[:3] = 5  # a label id outside the task's labels: counted wrong, as in evaluation
    idx = np.random.default_rng(0).integers(0, 40, size=(25, 40))
    got = _boot_stats(pred, gold, idx, "macro_f1", 4)
    want = [macro_f1(pred[i], gold[i], 4) for i in idx]
    assert got == pytest.approx(want, abs=1e-12)


def test_bootstrap_degenerate_inputs():
    gold = np.array([0, 1] * 100)
    assert bootstrap_interval(gold, gold, 2) == (1.0, 1.0)
    assert bootstrap_interval(gold, gold, 2, "macro_f1") == (1.0, 1.0)
    assert bootstrap_interval(1 - gold, gold, 2) == (0.0, 0.0)
    low, high = bootstrap_interval(np.array([], int), np.array([], int), 2)
    assert math.isnan(low) and math.isnan(high)
    assert bootstrap_interval(np.array([1]), np.array([1]), 2) == (1.0, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_interval(gold[:3], gold, 2)
    with pytest.raises(ValueError, match="metric"):
        bootstrap_interval(gold, gold, 2, "f1")


# -- TPT curves -----------------------------------------------------------------------------

# (step, elapsed_s, dev_accuracy); baseline best 0.8 at step 30, so the 0.9 target is 0.72
BASE = [(0, 0.0, 0.5), (10, 5.0, 0.6), (20, 10.0, 0.7), (30, 15.0, 0.8), (40, 20.0, 0.75)]
TPT = [(0, 1.0, 0.65), (10, 6.0, 0.73), (20, 11.0, 0.78), (30, 16.0, 0.79), (40, 21.0, 0.81)]
TPT_FIELDS = {"target_score", "score_at_k", "baseline_score_at_k", "init_score",
              "baseline_init_score", "best_score", "baseline_best", "steps_to_target",
              "seconds_to_target", "baseline_steps_to_target", "baseline_seconds_to_target",
              "speedup_steps", "speedup_seconds"}


def test_score_at_and_reach():
    assert score_at(BASE, 0) == 0.5
    assert score_at(BASE, 25) == 0.7  # the last evaluation at or before step 25
    assert score_at(BASE, 1000) == 0.75
    assert reach(BASE, 0.72) == (30, 15.0)
    assert reach(BASE, 0.5) == (10, 5.0)  # the init (step 0) never counts
    assert reach(BASE, 0.81) == (None, None)
    with pytest.raises(ValueError, match="at or before step -1"):
        score_at(BASE, -1)


def test_tpt_metrics_known_answer():
    m = tpt_metrics(TPT, BASE, 0.9, k=20)
    assert set(m) == TPT_FIELDS
    assert TPT_FIELDS <= {f.name for f in dataclasses.fields(TptRow)}
    assert m["target_score"] == pytest.approx(0.72)
    assert m["baseline_best"] == 0.8 and m["best_score"] == 0.81
    assert (m["init_score"], m["baseline_init_score"]) == (0.65, 0.5)
    assert (m["score_at_k"], m["baseline_score_at_k"]) == (0.78, 0.7)
    assert (m["steps_to_target"], m["seconds_to_target"]) == (10, 6.0)
    assert (m["baseline_steps_to_target"], m["baseline_seconds_to_target"]) == (30, 15.0)
    assert m["speedup_steps"] == pytest.approx(3.0)
    assert m["speedup_seconds"] == pytest.approx(2.5)
    # another fraction: target 0.8 x 0.8 = 0.64; baseline reaches it at 20, TPT at 10
    m = tpt_metrics(TPT, BASE, 0.8, k=15)
    assert (m["baseline_steps_to_target"], m["steps_to_target"]) == (20, 10)
    assert m["speedup_steps"] == 2.0 and m["score_at_k"] == 0.73


def test_tpt_metrics_none_and_edge_cases():
    # TPT never reaches the target: no steps, no speed-up; the baseline still does
    low = [(0, 0.0, 0.6), (10, 5.0, 0.65), (20, 10.0, 0.7)]
    m = tpt_metrics(low, BASE, k=10)
    assert m["steps_to_target"] is None and m["seconds_to_target"] is None
    assert m["speedup_steps"] is None and m["speedup_seconds"] is None
    assert m["baseline_steps_to_target"] == 30 and m["best_score"] == 0.7
    # an init above the target does not count: the first trained evaluation at or above it
    dip = [(0, 0.0, 0.9), (10, 5.0, 0.6), (20, 10.0, 0.75), (30, 15.0, 0.8)]
    m = tpt_metrics(dip, BASE, k=10)
    assert m["init_score"] == 0.9 and m["steps_to_target"] == 20
    assert m["speedup_steps"] == 1.5
    # already above the target at the first evaluated step: that step, never 0
    m = tpt_metrics([(0, 0.0, 0.9), (10, 5.0, 0.9)], BASE, k=10)
    assert m["steps_to_target"] == 10 and m["speedup_steps"] == 3.0
    # zero elapsed seconds at the reaching step: no seconds speed-up (steps still)
    m = tpt_metrics([(0, 0.0, 0.9), (10, 0.0, 0.9)], BASE, k=10)
    assert m["speedup_seconds"] is None and m["speedup_steps"] == 3.0
    # training-loss-only points (no dev accuracy) are skipped
    gaps = [(0, 0.0, 0.5), (5, 2.0, None), (10, 5.0, 0.6), (15, 7.0, float("nan")),
            (20, 10.0, 0.7), (30, 15.0, 0.8)]
    m = tpt_metrics(gaps, BASE, k=15)
    assert m["score_at_k"] == 0.6 and m["steps_to_target"] == 30


@pytest.mark.parametrize("curve, base, kw, match", [
    (TPT, BASE, {"fraction": 0.0}, "fraction"),
    (TPT, BASE, {"fraction": 1.5}, "fraction"),
    (TPT[1:], BASE, {}, "TPT curve has no step-0"),
    (TPT, BASE[1:], {}, "baseline curve has no step-0"),
    (TPT, BASE[:1], {}, "baseline curve has no evaluation after training"),
    (TPT[:1], BASE, {}, "TPT curve has no evaluation after training"),
    (TPT[::-1], BASE, {}, "strictly increasing"),
    (TPT + TPT[-1:], BASE, {}, "strictly increasing"),
])
def test_tpt_metrics_refuses_bad_curves(curve, base, kw, match):
    with pytest.raises(ValueError, match=match):
        tpt_metrics(curve, base, k=10, **kw)


def test_curve_from_rows_skips_loss_only_points_and_sorts():
    df = pd.DataFrame({"prompt_key": "p", "step": [10, 0, 5, 20],
                       "elapsed_s": [5.0, 0.0, 2.0, 10.0],
                       "dev_accuracy": [0.6, 0.5, None, 0.7]})
    assert curve_from_rows(df) == [(0, 0.0, 0.5), (10, 5.0, 0.6), (20, 10.0, 0.7)]
    with pytest.raises(ValueError, match="2 prompts"):
        curve_from_rows(pd.concat([df, df.assign(prompt_key="q")]))


# -- summaries ------------------------------------------------------------------------------


def _cross_model_rows() -> pd.DataFrame:
    rows = []

    def add(obj, src, tgt, rel, held, seed=0, metric="accuracy", score=None):
        rows.append({"source_model": "a", "target_model": "b", "objective": obj,
                     "source_task": src, "target_task": tgt, "seed": seed, "metric": metric,
                     "held_out": held, "relative_score": rel,
                     "score": 0.5 if score is None else score})

    # distance: x is a training task; held-out diagonal y (two seeds) and z; one off-diagonal
    add("distance", "y", "y", 0.8, True, score=0.6)
    add("distance", "y", "y", 0.6, True, seed=1, score=0.4)
    add("distance", "z", "z", 0.5, True, score=0.5)
    add("distance", "y", "z", 0.4, True)
    add("distance", "x", "x", 0.95, False)
    add("distance", "x", "y", 0.9, False)
    # task: one diagonal cell without a relative score (no own prompt): left out of means
    add("task", "y", "y", 0.9, True, score=0.7)
    add("task", "z", "z", None, True)
    # other metrics, with values that would change every answer if mixed in
    add("distance", "y", "y", 0.0, True, metric="macro_f1")
    add("task", "z", "z", 0.0, True, metric="macro_f1")
    return pd.DataFrame(rows)


def test_cross_model_summary_known_answer():
    s = cross_model_summary(_cross_model_rows()).set_index("objective")
    assert list(s.index) == ["distance", "task"]
    d = s.loc["distance"]
    assert (d["source_model"], d["target_model"]) == ("a", "b")
    assert d["diag_rel"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert d["diag_score"] == pytest.approx(0.5)
    assert d["held_out_rel"] == pytest.approx((0.8 + 0.6 + 0.5 + 0.4) / 4)
    assert (d["n_diag"], d["n_held_out"]) == (3, 4)
    t = s.loc["task"]
    assert t["diag_rel"] == pytest.approx(0.9) and t["held_out_rel"] == pytest.approx(0.9)
    assert (t["n_diag"], t["n_held_out"]) == (1, 1)


def test_cross_model_summary_empty_and_mixed():
    df = _cross_model_rows()
    assert cross_model_summary(df[df["metric"] == "nope"]).empty
    mixed = pd.concat([df, df.iloc[[2]].assign(relative_score=0.1)])
    with pytest.raises(MixedCellsError, match="source_task=z, target_task=z, seed=0"):
        cross_model_summary(mixed)


def _tpt_rows() -> pd.DataFrame:
    rows = []

    def add(kind, src, tgt, same, speedup, best, base_best, at_k, base_at_k, seed=0,
            src_model="m"):
        rows.append({"model": "m", "source_kind": kind, "source_model": src_model,
                     "source_task": src, "target_task": tgt, "seed": seed, "same_type": same,
                     "speedup_steps": speedup,
                     "speedup_seconds": None if speedup is None else speedup / 2,
                     "best_score": best, "baseline_best": base_best, "score_at_k": at_k,
                     "baseline_score_at_k": base_at_k})

    add("task", "s1", "t1", True, 2.0, 0.80, 0.78, 0.70, 0.60)
    add("task", "s1", "t1", True, None, 0.76, 0.78, 0.58, 0.60, seed=1)
    add("task", "s2", "t2", True, 4.0, 0.90, 0.90, 0.85, 0.75)
    add("task", "s3", "t1", False, 0.5, 0.70, 0.78, 0.50, 0.60)
    add("model", "s1", "t1", True, None, 0.70, 0.78, 0.55, 0.60, src_model="other")
    return pd.DataFrame(rows)


def test_tpt_summary_known_answer():
    s = tpt_summary(_tpt_rows()).set_index(["source_kind", "same_type"])
    same = s.loc[("task", True)]
    assert (same["n"], same["n_reached"]) == (3, 2)
    assert same["mean_speedup_steps"] == pytest.approx(3.0)  # None is left out
    assert same["mean_speedup_seconds"] == pytest.approx(1.5)
    assert same["mean_best_gain"] == pytest.approx((0.02 - 0.02 + 0.0) / 3)
    assert same["mean_gain_at_k"] == pytest.approx((0.1 - 0.02 + 0.1) / 3)
    diff = s.loc[("task", False)]
    assert (diff["n"], diff["n_reached"], diff["mean_speedup_steps"]) == (1, 1, 0.5)
    assert diff["mean_best_gain"] == pytest.approx(-0.08)
    proj = s.loc[("model", True)]
    assert (proj["n"], proj["n_reached"]) == (1, 0)
    assert math.isnan(proj["mean_speedup_steps"])
    assert proj["mean_gain_at_k"] == pytest.approx(-0.05)
    assert set(s.reset_index()["model"]) == {"m"}


def test_tpt_summary_refuses_mixed_configurations():
    df = _tpt_rows()
    with pytest.raises(MixedCellsError, match="source_task=s2, target_task=t2, seed=0"):
        tpt_summary(pd.concat([df, df.iloc[[2]]]))
    # the same source and target from another model is another cell
    assert len(tpt_summary(pd.concat([df, df.iloc[[2]].assign(source_model="x")]))) == 3
