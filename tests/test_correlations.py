"""prompt_core.correlations on hand-made cross-task and indicator tables with known answers."""

from __future__ import annotations

import itertools
import math
import warnings

import pandas as pd
import pytest

from prompt_core.correlations import (
    CORRELATION_COLUMNS,
    correlate,
    indicator_table,
    transfer_pairs,
)

TASKS = ("a", "b", "c", "d")
PAIRS = list(itertools.combinations(TASKS, 2))  # ab ac ad bc bd cd
RANK = {frozenset(p): i + 1 for i, p in enumerate(PAIRS)}  # 1..6


def key(model: str, task: str, seed: int = 0) -> str:
    return f"{model}:{task}:{seed}"


def _cells(model: str, flip: bool = False, gain_none: str | None = "d") -> list[dict]:
    """Off-diagonal cells whose relative score rises with the unordered pair's rank (falls
    when ``flip``), plus cells the pairs must ignore (diagonal, random, none, macro_f1)."""
    rows = []

    def add(kind, src, tgt, rel, metric="accuracy"):
        rows.append({
            "model": model, "seed": 0, "source_kind": kind, "source_task": src,
            "source_prompt_key": key(model, src) if src else None,
            "source_task_type": "t" if src else None, "target_task": tgt,
            "target_task_type": "t", "target_prompt_key": key(model, tgt),
            "same_type": True if src else None, "metric": metric, "score": rel / 2,
            "relative_score": rel,
            "transfer_gain": None if tgt == gain_none else rel - 0.5,
        })

    for s, t in itertools.permutations(TASKS, 2):
        r = RANK[frozenset((s, t))]
        add("prompt", s, t, (7 - r if flip else r) / 10)
    for t in TASKS:
        add("prompt", t, t, 1.0)
        add("random", None, t, 0.99)
        add("none", None, t, 0.98)
    add("prompt", "a", "b", 0.0, metric="macro_f1")
    return rows


def _indicators(model: str) -> list[dict]:
    """Per unordered pair: ``mono`` = its rank, ``rev`` = minus it, ``flat`` = 0.5. Every
    other pair is stored with its prompts in the reverse order."""
    rows = []
    for i, (s, t) in enumerate(PAIRS):
        a, b = (key(model, s), key(model, t)) if i % 2 else (key(model, t), key(model, s))
        r = RANK[frozenset((s, t))]
        for name, v in (("mono", r), ("rev", -r), ("flat", 0.5)):
            rows.append({"model": model, "prompt_a": a, "prompt_b": b, "indicator": name,
                         "value": v})
    return rows


@pytest.fixture
def study():
    """Two models with the same task names: in m2 the transfer falls with the pair's rank."""
    cells = pd.DataFrame(_cells("m1") + _cells("m2", flip=True))
    ind = pd.DataFrame(_indicators("m1") + _indicators("m2"))
    return cells, ind


def _one(corr, **sel):
    m = corr
    for k, v in sel.items():
        m = m[m[k] == v]
    assert len(m) == 1, sel
    return m.iloc[0]


def test_pairs_join_by_prompt_keys_in_either_order(study):
    cells, ind = study
    pairs = transfer_pairs(cells, ind)
    # 12 off-diagonal accuracy cells x 3 indicators x 2 models, nothing else
    assert len(pairs) == 12 * 3 * 2
    mono = pairs[pairs["indicator"] == "mono"]
    for r in mono.itertuples():
        rank = RANK[frozenset((r.source_task, r.target_task))]
        assert r.value == rank
        assert r.relative_score == pytest.approx((7 - rank if r.model == "m2" else rank) / 10)
        assert r.source_prompt_key == key(r.model, r.source_task)
        assert r.target_prompt_key == key(r.model, r.target_task)
    # both a->b and b->a found the one row stored for the pair {a, b}
    ab = mono[(mono["model"] == "m1") & mono["source_task"].isin(["a", "b"])
              & mono["target_task"].isin(["a", "b"])]
    assert sorted(zip(ab["source_task"], ab["value"], strict=True)) == [("a", 1), ("b", 1)]
    assert mono["transfer_gain"].isna().sum() == 2 * 3  # target d's cells, both models


def test_models_with_the_same_task_names_do_not_mix(study):
    cells, ind = study
    # m2's indicator values changed: m1's pairs must not see them
    ind2 = ind.copy()
    ind2.loc[ind2["model"] == "m2", "value"] = 99.0
    p1 = transfer_pairs(cells, ind)
    p2 = transfer_pairs(cells, ind2)
    m1 = ["model", "indicator", "source_task", "target_task", "value"]
    pd.testing.assert_frame_equal(p1[p1["model"] == "m1"][m1], p2[p2["model"] == "m1"][m1])
    # indicator rows of a model whose cells are absent give no pairs at all
    only_m1 = transfer_pairs(cells[cells["model"] == "m1"], ind)
    assert set(only_m1["model"]) == {"m1"} and len(only_m1) == 36


def test_monotone_reversed_and_constant_indicators(study):
    cells, ind = study
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy warning leaks, constant input included
        corr = correlate(transfer_pairs(cells, ind))
    for method in ("spearman", "kendall"):
        r = _one(corr, model="m1", scope="all", indicator="mono", measure="relative_score",
                 method=method)
        # pooled: the rho describes, there is no p-value (pooled pairs are not independent)
        assert r["rho"] == pytest.approx(1.0) and r["n_pairs"] == 12
        assert math.isnan(r["p_value"]) and r["p_method"] == "none" and r["n_targets"] == 4
        assert math.isnan(r["low"]) and math.isnan(r["high"])
        # each target ranks its 3 sources perfectly: mean 1, a degenerate interval, and a
        # permutation p near the chance that all 4 targets land on +1 or all on -1 (2 / 6^4)
        r = _one(corr, model="m1", scope="mean_over_targets", indicator="mono",
                 measure="relative_score", method=method)
        assert r["rho"] == pytest.approx(1.0) and r["low"] == r["high"] == pytest.approx(1.0)
        assert r["p_method"] == "permutation_within_target"
        assert r["n_targets"] == 4 and r["n_pairs"] == 12 and r["p_value"] < 0.005
        r = _one(corr, model="m2", scope="mean_over_targets", indicator="mono",
                 measure="relative_score", method=method)
        assert r["rho"] == pytest.approx(-1.0) and r["p_value"] < 0.005  # two-sided
        r = _one(corr, model="m1", scope="all", indicator="rev", measure="relative_score",
                 method=method)
        assert r["rho"] == pytest.approx(-1.0) and r["n_pairs"] == 12
        r = _one(corr, model="m2", scope="all", indicator="mono", measure="relative_score",
                 method=method)
        assert r["rho"] == pytest.approx(-1.0)  # m2's transfer falls with the rank
        r = _one(corr, model="m1", scope="all", indicator="flat", measure="relative_score",
                 method=method)
        assert math.isnan(r["rho"]) and math.isnan(r["p_value"]) and r["n_pairs"] == 12
        # a constant indicator has no rho in any target: the mean has no target at all
        r = _one(corr, model="m1", scope="mean_over_targets", indicator="flat",
                 measure="relative_score", method=method)
        assert all(math.isnan(r[c]) for c in ("rho", "p_value", "low", "high"))
        assert r["n_targets"] == 0 and r["n_pairs"] == 0


def test_scopes_per_target_and_missing_measures(study):
    cells, ind = study
    corr = correlate(transfer_pairs(cells, ind))
    assert list(corr.columns) == list(CORRELATION_COLUMNS)
    # per model: all, mean_over_targets, then the targets
    assert list(dict.fromkeys(corr[corr["model"] == "m1"]["scope"])) == [
        "all", "mean_over_targets", "a", "b", "c", "d"]
    # one row per model x scope x indicator x measure x method
    assert len(corr) == 2 * 6 * 3 * 2 * 2
    per_target = corr[~corr["scope"].isin(["all", "mean_over_targets"])]
    assert (per_target["p_method"] == "scipy").all() and (per_target["n_targets"] == 1).all()
    assert per_target["low"].isna().all() and per_target["high"].isna().all()
    # target a: sources b, c, d with pair ranks 1, 2, 3 -> rho 1 on 3 pairs
    r = _one(corr, model="m1", scope="a", indicator="mono", measure="relative_score",
             method="kendall")
    assert r["rho"] == pytest.approx(1.0) and r["n_pairs"] == 3
    # transfer_gain is None on target d: dropped, so d has 0 pairs and "all" has 9
    r = _one(corr, model="m1", scope="d", indicator="mono", measure="transfer_gain",
             method="spearman")
    assert r["n_pairs"] == 0 and math.isnan(r["rho"])
    r = _one(corr, model="m1", scope="all", indicator="mono", measure="transfer_gain",
             method="spearman")
    assert r["n_pairs"] == 9 and r["rho"] == pytest.approx(1.0) and r["n_targets"] == 3
    # the mean leaves target d out (no pair): 3 targets of 3 pairs
    r = _one(corr, model="m1", scope="mean_over_targets", indicator="mono",
             measure="transfer_gain", method="spearman")
    assert (r["n_targets"], r["n_pairs"]) == (3, 9) and r["rho"] == pytest.approx(1.0)
    # min_pairs above the per-target count: NaN, still with the count
    strict = correlate(transfer_pairs(cells, ind), min_pairs=4)
    r = _one(strict, model="m1", scope="a", indicator="mono", measure="relative_score",
             method="spearman")
    assert math.isnan(r["rho"]) and r["n_pairs"] == 3
    r = _one(strict, model="m1", scope="mean_over_targets", indicator="mono",
             measure="relative_score", method="spearman")
    assert math.isnan(r["rho"]) and r["n_targets"] == 0


def test_seeded_and_refuses_reserved_target_names(study):
    cells, ind = study
    pairs = transfer_pairs(cells, ind)
    a = correlate(pairs, n_permutations=199, n_bootstrap=199)
    pd.testing.assert_frame_equal(a, correlate(pairs, n_permutations=199, n_bootstrap=199))
    b = correlate(pairs, n_permutations=199, n_bootstrap=199, seed=1)
    mean = a["scope"] == "mean_over_targets"
    assert not a[mean]["p_value"].equals(b[mean]["p_value"])  # the draws follow the seed
    pd.testing.assert_frame_equal(a[~mean], b[~mean])  # nothing else is random
    for name in ("all", "mean_over_targets"):
        bad = pairs.assign(target_task=pairs["target_task"].replace("a", name))
        with pytest.raises(ValueError, match="clash with the scope names"):
            correlate(bad)


def test_known_partial_correlation():
    """x = 1, 2, 3 against y = 1, 3, 2: spearman 1 - 6*2/24 = 0.5, kendall (2 - 1)/3."""
    pairs = pd.DataFrame({"model": "m", "target_task": "t", "indicator": "on",
                          "value": [1.0, 2.0, 3.0], "relative_score": [0.1, 0.3, 0.2]})
    corr = correlate(pairs, measures=("relative_score",))
    assert _one(corr, scope="t", method="spearman")["rho"] == pytest.approx(0.5)
    assert _one(corr, scope="t", method="kendall")["rho"] == pytest.approx(1 / 3)
    assert _one(corr, scope="all", method="kendall")["n_pairs"] == 3


def test_indicator_rows_in_both_orders_and_conflicts():
    rows = [{"model": "m", "prompt_a": "x", "prompt_b": "y", "indicator": "on", "value": 0.3},
            {"model": "m", "prompt_a": "y", "prompt_b": "x", "indicator": "on", "value": 0.3}]
    t = indicator_table(pd.DataFrame(rows))
    assert t[["key_lo", "key_hi", "value"]].values.tolist() == [["x", "y", 0.3]]
    rows[1]["value"] = 0.4
    with pytest.raises(ValueError, match="2 different values"):
        indicator_table(pd.DataFrame(rows))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['value'\]"):
        indicator_table(pd.DataFrame(rows).drop(columns="value"))
