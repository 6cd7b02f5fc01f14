"""prompt_core.analysis on a small hand-made cross-task table with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from prompt_core.analysis import matrix, transfer_summary

TYPES = {"a": "sentiment", "b": "sentiment", "c": "nli"}
OWN = {"a": 0.8, "b": 0.9, "c": 0.6}


def _rows() -> pd.DataFrame:
    rows = []

    def add(kind, src, tgt, score, seed=0, metric="accuracy"):
        rows.append({
            "source_kind": kind, "source_task": src, "target_task": tgt, "seed": seed,
            "metric": metric, "score": score,
            "same_type": (TYPES[src] == TYPES[tgt]) if src else None,
            "relative_score": score / OWN[tgt],
        })

    # own prompts; a -> a has two seeds averaging 0.8
    add("prompt", "a", "a", 0.78, seed=0)
    add("prompt", "a", "a", 0.82, seed=1)
    add("prompt", "b", "b", 0.9)
    add("prompt", "c", "c", 0.6)
    # off-diagonal: same type a<->b at relative 0.8; different type at 0.5, 0.5, 0.6, 0.4
    add("prompt", "a", "b", 0.72)
    add("prompt", "b", "a", 0.64)
    add("prompt", "a", "c", 0.30)
    add("prompt", "c", "a", 0.40)
    add("prompt", "b", "c", 0.36)
    add("prompt", "c", "b", 0.36)
    for t, s in {"a": 0.4, "b": 0.45, "c": 0.3}.items():  # random prompt: relative 0.5
        add("random", None, t, s)
    for t, s in {"a": 0.7, "b": 0.95, "c": 0.5}.items():  # no prompt
        add("none", None, t, s)
    # another metric, with values that would change every answer if mixed in
    add("prompt", "a", "b", 0.0, metric="macro_f1")
    add("none", None, "a", 1.0, metric="macro_f1")
    return pd.DataFrame(rows)


def test_transfer_summary_known_answer():
    s = transfer_summary(_rows())
    assert s["n_tasks"] == 3
    assert s["own_beats_none"] == 2  # a (0.8 > 0.7) and c (0.6 > 0.5); not b (0.9 < 0.95)
    assert s["mean_own_score"] == pytest.approx((0.8 + 0.9 + 0.6) / 3)
    assert s["mean_none_score"] == pytest.approx((0.7 + 0.95 + 0.5) / 3)
    assert s["same_type_rel"] == pytest.approx(0.8)
    assert s["diff_type_rel"] == pytest.approx((0.5 + 0.5 + 0.6 + 0.4) / 4)
    assert s["random_rel"] == pytest.approx(0.5)
    assert s["none_rel"] == pytest.approx((0.7 / 0.8 + 0.95 / 0.9 + 0.5 / 0.6) / 3)
    assert s["n_same_type_pairs"] == 2 and s["n_diff_type_pairs"] == 4


def test_transfer_summary_other_metric_and_empty():
    s = transfer_summary(_rows(), metric="macro_f1")
    assert s["n_tasks"] == 2 and s["own_beats_none"] == 0
    assert math.isnan(s["mean_own_score"])
    assert transfer_summary(_rows(), metric="nope") == {"n_tasks": 0}


def test_matrix_known_answer():
    m = matrix(_rows())
    assert list(m.columns) == ["a", "b", "c"]
    assert list(m.index) == ["a", "b", "c", "random", "none"]
    expected = {
        "a": [0.8, 0.72, 0.30], "b": [0.64, 0.9, 0.36], "c": [0.40, 0.36, 0.6],
        "random": [0.4, 0.45, 0.3], "none": [0.7, 0.95, 0.5],
    }
    for src, vals in expected.items():
        assert m.loc[src].tolist() == pytest.approx(vals), src
    rel = matrix(_rows(), value="relative_score")
    assert rel.loc["a", "a"] == pytest.approx(1.0)
    assert rel.loc["a", "b"] == pytest.approx(0.8)
    assert rel.loc["c", "b"] == pytest.approx(0.4)
    f1 = matrix(_rows(), metric="macro_f1")
    assert f1.loc["a", "b"] == 0.0 and f1.loc["none", "a"] == 1.0
    assert math.isnan(f1.loc["a", "a"])


def test_rows_of_two_configurations_are_refused_not_averaged():
    """Averaging a cell over two configurations publishes a figure no run produced."""
    from prompt_core.analysis import MixedCellsError

    df = _rows()
    stale = df[df["source_task"] == "a"].assign(score=0.1, relative_score=0.1)
    mixed = pd.concat([df, stale])
    with pytest.raises(MixedCellsError, match="source prompt:a -> target"):
        transfer_summary(mixed)
    with pytest.raises(MixedCellsError):
        matrix(mixed)


def test_summary_does_not_depend_on_row_order():
    """A run's summary and the same cells read back from the tables agree bit for bit."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for t in range(40):  # many different floats: a sum's last bit depends on their order
        for kind, src in (("prompt", f"t{t}"), ("prompt", f"t{(t + 1) % 40}"), ("none", None),
                          ("random", None)):
            score = float(rng.uniform(0.3, 0.9))
            rows.append({"source_kind": kind, "source_task": src, "target_task": f"t{t}",
                         "seed": 0, "metric": "accuracy", "score": score,
                         "same_type": bool(t % 2) if src else None,
                         "relative_score": score / 0.7})
    df = pd.DataFrame(rows)
    for seed in range(5):
        assert transfer_summary(df.sample(frac=1, random_state=seed)) == transfer_summary(df)
