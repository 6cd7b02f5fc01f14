"""prompt_core.cell_stats.cell_statistics, the statistics the evaluation units store: which
inputs each figure comes from (predictions scored now, the evaluation's scores, the stored rows
of reference cells not rescored), on hand-made predictions with known scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prompt_core.analysis import bootstrap_interval, transfer_gain
from prompt_core.cell_stats import METRICS, cell_statistics
from prompt_core.evaluation import scores

N = 20
GOLD = np.arange(N) % 2


def right(k: int) -> np.ndarray:
    """Predictions right on the first ``k`` examples (accuracy k / 20)."""
    return np.where(np.arange(N) < k, GOLD, 1 - GOLD)


def test_every_figure_of_a_row_from_predictions():
    preds = {("p", 0): right(14), ("own", 0): right(20), ("none", 0): right(10),
             ("p", 1): right(8), ("own", 1): right(16)}
    out = cell_statistics({("p", 0): 0, ("p", 1): 1, ("none", 0): 0}, preds, GOLD, 2,
                          own={0: ("own", 0), 1: ("own", 1)}, none={0: ("none", 0)},
                          n_boot=200)
    assert set(out) == {(s, m) for s in [("p", 0), ("p", 1), ("none", 0)] for m in METRICS}
    for (src, metric), st in out.items():
        seed = src[1]
        own = scores(preds["own", seed], GOLD, 2)[metric]
        assert st.score == scores(preds[src], GOLD, 2)[metric]
        assert (st.score_low, st.score_high) == bootstrap_interval(preds[src], GOLD, 2, metric,
                                                                  200, seed=seed)
        assert st.own_score == own and st.relative_score == st.score / own
    # seed 0: own 1.0 (interval [1, 1]), none 0.5: the gain; seed 1 has no no-prompt cell
    assert out[("p", 0), "accuracy"].transfer_gain == (0.7 - 0.5) / (1.0 - 0.5)
    assert out[("none", 0), "accuracy"].transfer_gain == 0.0
    assert out[("p", 1), "accuracy"].transfer_gain is None


def test_reference_cells_not_rescored_come_from_their_stored_rows():
    """The own prompt and no prompt stored before (not in ``predictions``): their stored score
    is the denominator, their stored interval's lower end decides the gain rule."""
    preds = {"p": right(14)}
    stored = {"own": {"accuracy": (0.9, 0.6), "macro_f1": (0.8, float("nan"))},
              "none": {"accuracy": (0.5, 0.3), "macro_f1": (0.4, 0.2)}}
    out = cell_statistics({"p": 3}, preds, GOLD, 2, own={3: "own"}, none={3: "none"},
                          stored=stored, n_boot=100)
    acc = out["p", "accuracy"]
    assert (acc.own_score, acc.relative_score) == (0.9, 0.7 / 0.9)
    assert acc.transfer_gain == transfer_gain(0.7, 0.5, 0.9, own_low=0.6) == (0.7 - 0.5) / 0.4
    f1 = out["p", "macro_f1"]
    assert f1.relative_score == f1.score / 0.8
    assert f1.transfer_gain is None  # a stored interval without a lower end: no clear gain
    # a stored own prompt whose interval contains no prompt: no gain
    stored["own"]["accuracy"] = (0.9, 0.5)
    assert cell_statistics({"p": 3}, preds, GOLD, 2, own={3: "own"}, none={3: "none"},
                           stored=stored, n_boot=100)["p", "accuracy"].transfer_gain is None
    # no stored row of the own prompt at all: no relative score and no gain
    gone = cell_statistics({"p": 3}, preds, GOLD, 2, own={3: "own"}, none={3: "none"},
                           stored={"none": stored["none"]}, n_boot=100)["p", "accuracy"]
    assert (gone.own_score, gone.relative_score, gone.transfer_gain) == (None, None, None)


def test_a_rescored_reference_wins_over_its_stored_row_and_given_scores_are_used():
    """A reference in ``predictions`` is read from them (its stored row is stale); ``scores``
    (the evaluation's own figures for those predictions) are taken as given."""
    preds = {"p": right(12), "own": right(16)}
    out = cell_statistics({"p": 0}, preds, GOLD, 2, own={0: "own"},
                          stored={"own": {"accuracy": (0.1, 0.0), "macro_f1": (0.1, 0.0)}},
                          n_boot=50)
    assert out["p", "accuracy"].own_score == 0.8
    given = {"p": {"accuracy": 0.25, "macro_f1": 0.5}, "own": {"accuracy": 0.5,
                                                             "macro_f1": 1.0}}
    out = cell_statistics({"p": 0}, preds, GOLD, 2, own={0: "own"}, scores=given, n_boot=50)
    assert (out["p", "accuracy"].score, out["p", "accuracy"].relative_score) == (0.25, 0.5)
    assert out["p", "macro_f1"].relative_score == 0.5


def test_a_row_without_predictions_is_an_error_and_metrics_can_be_chosen():
    with pytest.raises(ValueError, match="have no predictions"):
        cell_statistics({"p": 0}, {}, GOLD, 2, own={})
    out = cell_statistics({"p": 0}, {"p": right(5)}, GOLD, 2, own={}, metrics=("accuracy",),
                          n_boot=10)
    assert list(out) == [("p", "accuracy")] and out["p", "accuracy"].score == 0.25
    assert math.isnan(cell_statistics({"p": 0}, {"p": np.zeros(0, int)}, np.zeros(0, int), 2,
                                      own={}, n_boot=10)["p", "accuracy"].score_low)
