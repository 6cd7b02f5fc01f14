"""Seed summaries and the hierarchical bootstrap of "same type transfers better"
(:func:`prompt_core.analysis.same_minus_diff_interval`) on hand-made tables with known
answers: the cells and their per-example predictions are built from correctness patterns, so
every score, relative score and transfer gain is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prompt_core.analysis import (
    HEADLINE,
    MissingPredictionsError,
    MixedCellsError,
    over_seeds,
    same_minus_diff_interval,
    seed_summaries,
    transfer_summary,
)
from tests.stats_helpers import coin, four_tasks, halves, tables

# -- the interval ---------------------------------------------------------------------------


def test_interval_collapses_when_every_resample_gives_the_point():
    """Same-type sources always right, different-type always wrong: every resample of
    targets and examples gives relative 1 vs 0, so the interval is [1, 1]."""
    cells, preds = four_tasks(lambda n, t, s: np.ones(n), lambda n, t, s: np.zeros(n))
    r = same_minus_diff_interval(cells, preds, n_boot=200, seed=3)
    assert r["point"] == 1.0 and r["low"] == pytest.approx(1.0) and r["high"] == pytest.approx(1.0)
    assert (r["n_boot"], r["n_valid"], r["n_targets"]) == (200, 200, 4)
    assert (r["n_same_type_cells"], r["n_diff_type_cells"]) == (4, 8)
    assert (r["n_same_type_pairs"], r["n_diff_type_pairs"]) == (4, 8)


def test_same_type_clearly_better_gives_an_interval_above_zero():
    cells, preds = four_tasks(coin(0.9), coin(0.55, salt=1), n=200)
    r = same_minus_diff_interval(cells, preds, n_boot=500)
    assert r["point"] == pytest.approx(0.9 - 0.55)
    assert 0 < r["low"] < r["point"] < r["high"]


def test_equal_by_construction_straddles_zero():
    """Same-type sources right on the first half, different-type on the second: point 0,
    and resamples move the two means apart in both directions."""
    cells, preds = four_tasks(halves(True), halves(False), n=60)
    r = same_minus_diff_interval(cells, preds, n_boot=500)
    assert r["point"] == 0.0
    assert r["low"] < 0 < r["high"]
    assert r["low"] == pytest.approx(-r["high"], abs=0.08)  # about symmetric


def test_deterministic_per_seed():
    cells, preds = four_tasks(coin(0.8), coin(0.6, salt=1), n=50, seeds=(0, 1))
    a = same_minus_diff_interval(cells, preds, n_boot=300, seed=7)
    b = same_minus_diff_interval(cells.sample(frac=1, random_state=1),
                                 preds.sample(frac=1, random_state=2), n_boot=300, seed=7)
    assert a == b
    c = same_minus_diff_interval(cells, preds, n_boot=300, seed=8)
    assert (c["low"], c["high"]) != (a["low"], a["high"]) and c["point"] == a["point"]


@pytest.mark.parametrize("value, short", [("relative_score", "rel"), ("transfer_gain", "gain")])
def test_point_is_transfer_summarys_difference(value, short):
    cells, preds = four_tasks(coin(0.85), coin(0.6, salt=1), n=40, seeds=(0, 1),
                              none_hit=coin(0.5, salt=2))
    s = transfer_summary(cells)
    r = same_minus_diff_interval(cells, preds, n_boot=200, value=value)
    assert r["point"] == s[f"same_type_{short}"] - s[f"diff_type_{short}"]
    assert r["low"] <= r["point"] <= r["high"]
    if value == "relative_score":
        assert r["point"] == s["same_minus_diff"]
    # own 1.0, none 0.5: gain = (acc - 0.5) / 0.5
    want = (0.85 - 0.5) / 0.5 - (0.6 - 0.5) / 0.5 if value == "transfer_gain" else 0.85 - 0.6
    assert r["point"] == pytest.approx(want)


def test_macro_f1_resamples_match_the_evaluation_semantics():
    """On all examples (weights 1) the recomputed macro-F1 is prompt_core.evaluation's."""
    from prompt_core.analysis import _weighted_scores
    from prompt_core.evaluation import macro_f1

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 30)
    pred = rng.integers(0, 3, (4, 30))
    got = _weighted_scores(np.ones((1, 30)), pred, gold, "macro_f1", 3)[0]
    assert got == pytest.approx([macro_f1(p, gold, 3) for p in pred])
    w = rng.multinomial(30, np.full(30, 1 / 30), size=1)  # a resample as counts
    idx = np.repeat(np.arange(30), w[0])
    assert _weighted_scores(w, pred, gold, "macro_f1", 3)[0] == pytest.approx(
        [macro_f1(p[idx], gold[idx], 3) for p in pred])


def test_missing_predictions_mixed_cells_and_bad_arguments():
    cells, preds = four_tasks(coin(0.8), coin(0.6, salt=1))
    with pytest.raises(MissingPredictionsError, match="no predictions row"):
        same_minus_diff_interval(cells, preds.iloc[1:])
    with pytest.raises(MixedCellsError):
        same_minus_diff_interval(pd.concat([cells, cells.iloc[:1]]), preds)
    bad = preds.copy()
    bad.at[0, "gold"] = [1 - g for g in bad.at[0, "gold"]]
    with pytest.raises(ValueError, match="differ in their gold labels"):
        same_minus_diff_interval(cells, bad)
    for kw in ({"metric": "f2"}, {"value": "score"}, {"n_boot": 0}, {"level": 1.0}):
        with pytest.raises(ValueError):
            same_minus_diff_interval(cells, preds, **kw)
    empty = same_minus_diff_interval(cells, preds, metric="macro_f1")
    assert empty["n_valid"] == 0 and math.isnan(empty["low"])


# -- seeds ----------------------------------------------------------------------------------


def two_seeds() -> pd.DataFrame:
    """Seed 0: same-type relative 0.8, different-type 0.5; seed 1: 0.6 and 0.5. Random 0.5
    and 0.3; own beats none on 3 and on 1 of the 3 targets."""
    types = {"a": "A", "b": "A", "c": "B"}
    own = {(t, s): 0.8 for t in types for s in (0, 1)}
    rows = []

    def add(kind, src, tgt, seed, score):
        o = own[(tgt, seed)]
        rows.append({"source_kind": kind, "source_task": src, "target_task": tgt,
                     "seed": seed, "metric": "accuracy", "score": score,
                     "same_type": types[src] == types[tgt] if src else None,
                     "relative_score": score / o, "transfer_gain": None})

    for seed, (same, diff, rnd, none) in {0: (0.8, 0.5, 0.5, (0.7, 0.7, 0.7)),
                                          1: (0.6, 0.5, 0.3, (0.7, 0.9, 0.9))}.items():
        for t in types:
            add("prompt", t, t, seed, own[(t, seed)])
            add("random", None, t, seed, rnd * 0.8)
            add("none", None, t, seed, none["abc".index(t)])
            for s in types:
                if s != t:
                    add("prompt", s, t, seed, (same if types[s] == types[t] else diff) * 0.8)
    return pd.DataFrame(rows)


def test_seed_summaries_and_their_mean_and_spread():
    df = two_seeds()
    per = seed_summaries(df)
    assert list(per.index) == [0, 1]
    assert per["same_type_rel"].tolist() == pytest.approx([0.8, 0.6])
    assert per["diff_type_rel"].tolist() == pytest.approx([0.5, 0.5])
    assert per["same_minus_diff"].tolist() == pytest.approx([0.3, 0.1])
    assert per["own_beats_none"].tolist() == [3, 1]
    spread = over_seeds(df)
    assert list(spread.index) == list(HEADLINE)
    row = spread.loc["same_type_rel"]
    assert row["mean"] == pytest.approx(0.7)
    assert row["std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.8, 0.6
    assert (row["min"], row["max"], row["n_seeds"]) == (pytest.approx(0.6), pytest.approx(0.8), 2)
    assert spread.loc["same_minus_diff", "mean"] == pytest.approx(0.2)
    assert spread.loc["diff_type_rel", "std"] == pytest.approx(0.0)
    assert spread.loc["random_rel", "mean"] == pytest.approx(0.4)
    assert spread.loc["own_beats_none", "mean"] == 2.0
    assert spread.loc["own_beats_none", "std"] == pytest.approx(math.sqrt(2))
    assert spread.loc["same_type_gain", "n_seeds"] == 0  # no gains in these rows
    assert math.isnan(spread.loc["same_type_gain", "mean"])
    # the pooled summary's relative means are the seed means here (same cells per seed)
    s = transfer_summary(df)
    assert s["n_seeds"] == 2
    assert s["same_type_rel"] == pytest.approx(0.7)
    assert s["same_minus_diff"] == pytest.approx(0.2)


def test_one_seed_has_no_spread():
    df = two_seeds()
    spread = over_seeds(df[df["seed"] == 1])
    assert spread.loc["same_type_rel", "mean"] == pytest.approx(0.6)
    assert spread.loc["same_type_rel", "n_seeds"] == 1
    assert math.isnan(spread.loc["same_type_rel", "std"])


def test_summaries_with_undefined_figures_compare_equal():
    """NaN figures are one object: a run's summary equals the same cells' summary read back
    (dict equality, as the flow's summaries are checked)."""
    df = two_seeds()
    a, b = transfer_summary(df), transfer_summary(df.sample(frac=1, random_state=0))
    assert math.isnan(a["same_type_gain"]) and a == b


def test_one_task_has_no_pairs_and_no_interval():
    cells, preds = tables({("a1", "a1", 0): np.ones(10, bool),
                           ("none", "a1", 0): np.zeros(10, bool)})
    for value in ("relative_score", "transfer_gain"):
        r = same_minus_diff_interval(cells, preds, n_boot=50, value=value)
        assert math.isnan(r["point"]) and math.isnan(r["low"]) and math.isnan(r["high"])
        assert (r["n_valid"], r["n_targets"], r["n_same_type_cells"]) == (0, 1, 0)
