"""The correlation figures and the recommender's expected hit@k pinned against references:
scipy's spearmanr / kendalltau / bootstrap, hand loops over targets, exact enumeration of every
within-target permutation, and brute force over every tie-breaking order."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prompt_core.correlations import (
    ALL,
    MEAN,
    P_NONE,
    P_PERMUTATION,
    P_SCIPY,
    correlate,
    mean_over_targets,
    permutation_rhos,
)
from prompt_core.recommend import evaluate_rankings, expected_hit

pytestmark = pytest.mark.reference

SCIPY = {"spearman": stats.spearmanr, "kendall": stats.kendalltau}


def _pairs(xs, ys, measure="relative_score") -> pd.DataFrame:
    """A pairs table of one model and indicator: target t{i} holds the pairs (xs[i], ys[i])."""
    rows = [{"model": "m", "target_task": f"t{i}", "indicator": "on", "value": float(v),
             measure: float(w)}
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))
            for v, w in zip(x, y, strict=True)]
    return pd.DataFrame(rows)


def _one(corr, **sel):
    m = corr
    for k, v in sel.items():
        m = m[m[k] == v]
    assert len(m) == 1, sel
    return m.iloc[0]


@pytest.fixture
def tied_study():
    """6 targets x 8 pairs with ties in both columns (integer values), plus a target whose
    indicator is constant and one with 2 pairs (both NaN, left out of the mean)."""
    rng = np.random.default_rng(7)
    xs = [rng.integers(0, 5, 8).astype(float) for _ in range(6)]
    ys = [np.round(x + rng.normal(0, 2, 8)) for x in xs]
    xs += [np.full(8, 3.0), np.array([1.0, 2.0])]
    ys += [rng.normal(size=8), np.array([0.5, 0.7])]
    return xs, ys


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_every_scope_against_scipy_directly(tied_study, method):
    xs, ys = tied_study
    corr = correlate(_pairs(xs, ys), measures=("relative_score",), n_permutations=99,
                     n_bootstrap=99)
    ref = SCIPY[method]
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        r = _one(corr, scope=f"t{i}", method=method)
        assert r["p_method"] == P_SCIPY and r["n_pairs"] == len(x) and r["n_targets"] == 1
        if i < 6:
            want = ref(x, y)
            assert r["rho"] == pytest.approx(want[0], abs=1e-12)
            assert r["p_value"] == pytest.approx(want[1], rel=1e-9)
        else:  # constant indicator, or fewer than min_pairs = 3
            assert math.isnan(r["rho"]) and math.isnan(r["p_value"])
    # pooled: scipy's rho on every pair, but no p-value (not a test)
    allx, ally = np.concatenate(xs), np.concatenate(ys)
    r = _one(corr, scope=ALL, method=method)
    assert r["rho"] == pytest.approx(ref(allx, ally)[0], abs=1e-12)
    assert math.isnan(r["p_value"]) and r["p_method"] == P_NONE
    assert r["n_pairs"] == len(allx) and r["n_targets"] == 8


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_mean_over_targets_is_a_hand_loop_over_targets(tied_study, method):
    xs, ys = tied_study
    per_target = []
    for x, y in zip(xs, ys, strict=True):
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            per_target.append(SCIPY[method](x, y)[0])
    assert len(per_target) == 6
    corr = correlate(_pairs(xs, ys), measures=("relative_score",), n_permutations=99,
                     n_bootstrap=99)
    r = _one(corr, scope=MEAN, method=method)
    assert r["rho"] == pytest.approx(np.mean(per_target), abs=1e-12)
    assert r["n_targets"] == 6 and r["n_pairs"] == 6 * 8
    assert r["p_method"] == P_PERMUTATION
    # the stored row is mean_over_targets' own answer, same seed and counts
    m = mean_over_targets(xs, ys, method, n_permutations=99, n_bootstrap=99)
    for k in ("rho", "low", "high", "p_value"):
        assert r[k] == pytest.approx(m[k], abs=1e-12)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_vectorised_permutation_rhos_are_scipys(tied_study, method):
    xs, ys = tied_study
    rng = np.random.default_rng(3)
    for x, y in zip(xs[:6], ys[:6], strict=True):
        perms = np.array([rng.permutation(len(x)) for _ in range(40)])
        got = permutation_rhos(x, y, method, perms)
        want = [SCIPY[method](x[p], y)[0] for p in perms]
        np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_bootstrap_interval_against_scipy_bootstrap(tied_study, method):
    xs, ys = tied_study
    rhos = np.array([SCIPY[method](x, y)[0] for x, y in zip(xs[:6], ys[:6], strict=True)])
    n_boot = 20000
    ours = mean_over_targets(xs, ys, method, n_permutations=9, n_bootstrap=n_boot, seed=11)
    ref = stats.bootstrap((rhos,), np.mean, method="percentile", n_resamples=n_boot,
                          confidence_level=0.95, rng=np.random.default_rng(5))
    # Monte Carlo error: an estimated 2.5% (97.5%) quantile of B resamples has standard error
    # sqrt(q (1 - q) / B) / f(x_q); for a near-normal bootstrap distribution of sd s that is
    # sqrt(0.0244 / B) / (0.0584 / s) = 2.67 s / sqrt(B) = 0.019 s at B = 20000, so two
    # independent estimates differ by sd 0.027 s; 0.15 s is more than 5 of those.
    s = rhos.std(ddof=0) / math.sqrt(len(rhos))  # the bootstrap mean's sd
    assert ours["low"] == pytest.approx(ref.confidence_interval.low, abs=0.15 * s)
    assert ours["high"] == pytest.approx(ref.confidence_interval.high, abs=0.15 * s)
    assert ours["low"] < ours["rho"] < ours["high"]


def _exact_p(xs, ys, method) -> float:
    """The within-target permutation p-value by enumeration: every joint permutation of the
    indicator values (each target's own permutation, all combinations), equally likely."""
    observed = np.mean([SCIPY[method](x, y)[0] for x, y in zip(xs, ys, strict=True)])
    per_target = [[SCIPY[method](np.asarray(x)[list(p)], y)[0]
                   for p in itertools.permutations(range(len(x)))]
                  for x, y in zip(xs, ys, strict=True)]
    means = [np.mean(c) for c in itertools.product(*per_target)]
    return float(np.mean(np.abs(means) >= abs(observed) - 1e-12))


EXACT_CASES = {
    # 2 targets x 3 sources: 3!^2 = 36 joint permutations
    "2x3": ([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], [[0.1, 0.2, 0.3], [0.1, 0.3, 0.2]]),
    # 3 targets x 3 sources with ties in the indicator and the measure: 3!^3 = 216
    "3x3 ties": ([[1.0, 1.0, 2.0], [0.5, 0.2, 0.9], [3.0, 1.0, 2.0]],
                 [[0.2, 0.4, 0.6], [0.3, 0.3, 0.8], [0.9, 0.1, 0.4]]),
}


@pytest.mark.parametrize("method", ["spearman", "kendall"])
@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_permutation_p_against_exact_enumeration(case, method):
    xs, ys = EXACT_CASES[case]
    exact = _exact_p(xs, ys, method)
    assert 0.02 < exact < 1  # neither trivial nor at the floor of the enumeration
    n_perm = 40000
    got = mean_over_targets(xs, ys, method, n_permutations=n_perm, n_bootstrap=9, seed=2)
    # (count + 1) / (n + 1) has mean (n p + 1) / (n + 1) and sd <= sqrt(0.25 / n) = 0.0025;
    # 0.0125 is 5 sd
    assert got["p_value"] == pytest.approx(exact, abs=0.0125)
    if case == "2x3":  # by hand (spearman): per-target rhos 1, .5, -.5, -1 weigh 1, 2, 2, 1
        assert method == "kendall" or exact == pytest.approx(10 / 36)


def test_the_permutation_p_value_convention():
    """Perfect agreement in 4 targets of 3 sources: only the draws where every target lands
    on +1 (or every one on -1) reach |mean| = 1, chance 2 / 6^4; the observed statistic
    counts itself: p = (count + 1) / (n + 1), never 0."""
    xs = [[1.0, 2.0, 3.0]] * 4
    ys = [[0.1, 0.2, 0.3]] * 4
    got = mean_over_targets(xs, ys, "spearman", n_permutations=5, n_bootstrap=9, seed=0)
    assert got["rho"] == 1.0 and 1 / 6 <= got["p_value"] <= 1
    many = mean_over_targets(xs, ys, "spearman", n_permutations=200000, n_bootstrap=9)
    assert many["p_value"] == pytest.approx(2 / 6 ** 4, abs=0.0005)
    assert many["p_value"] > 0


def test_pooled_p_is_tiny_where_the_within_target_test_finds_nothing():
    """Pairs correlated only through target-level offsets: every target shifts both the
    indicator and the measure by 10 x its index, and within a target they are independent.
    Pooled, scipy calls the correlation overwhelming; the within-target permutation test
    (the question an indicator must answer: which source fits THIS target) sees none."""
    rng = np.random.default_rng(0)
    xs = [10.0 * t + rng.uniform(size=9) for t in range(8)]
    ys = [10.0 * t + rng.uniform(size=9) for t in range(8)]
    pooled = stats.spearmanr(np.concatenate(xs), np.concatenate(ys))
    assert pooled[0] > 0.95 and pooled[1] < 1e-30
    corr = correlate(_pairs(xs, ys), measures=("relative_score",))
    for method in ("spearman", "kendall"):
        a = _one(corr, scope=ALL, method=method)
        assert a["rho"] > 0.8 and math.isnan(a["p_value"])  # descriptive, not a test
        m = _one(corr, scope=MEAN, method=method)
        assert m["p_value"] > 0.3 and m["n_targets"] == 8
        assert m["low"] < 0 < m["high"] and abs(m["rho"]) < 0.15


# -- the recommender: exact expected hit@k and regret vs every tie-breaking order ------------


def _brute_force(score, truth, ks):
    """Average hit@k and top-ranked true score over every order a uniform tie-break can give:
    the score levels from the highest down, each level's candidates in every order."""
    levels = [[i for i in range(len(score)) if score[i] == v]
              for v in sorted(set(score), reverse=True)]
    best = max(truth)
    hits = {k: [] for k in ks}
    tops = []
    for orders in itertools.product(*(itertools.permutations(lv) for lv in levels)):
        order = [i for lv in orders for i in lv]
        for k in ks:
            hits[k].append(any(truth[i] == best for i in order[:k]))
        tops.append(truth[order[0]])
    return {k: float(np.mean(v)) for k, v in hits.items()}, float(np.mean(tops))


def _tie_cases():
    yield [3, 3, 3, 2, 2, 1, 1], [0.2, 0.5, 0.1, 0.9, 0.3, 0.9, 0.4]  # bests below a tie
    yield [1, 1, 1, 1, 1], [0.3, 0.7, 0.7, 0.1, 0.2]  # all tied (random), two bests
    yield [2, 1, 1, 1, 0, 0], [0.1, 0.3, 0.8, 0.2, 0.8, 0.5]  # the tie straddles k
    rng = np.random.default_rng(1)
    for _ in range(12):
        n = int(rng.integers(3, 8))
        yield (rng.integers(0, 3, n).tolist(), (rng.integers(0, 4, n) / 4).tolist())


@pytest.mark.parametrize("case", list(_tie_cases()))
def test_expected_hit_and_regret_against_every_tie_breaking_order(case):
    score, truth = case
    n = len(score)
    ks = list(range(1, n + 1))
    hit, top = _brute_force(score, truth, ks)
    best = np.asarray(truth) == max(truth)
    for k in ks:
        assert expected_hit(np.asarray(score, float), best, k) == pytest.approx(hit[k],
                                                                                abs=1e-12)
    tasks = [f"s{i}" for i in range(n)]
    scores = pd.DataFrame({"model": "m", "seed": 0, "target_task": "t", "method": "x",
                           "source_task": tasks, "score": [float(v) for v in score]})
    truth_df = pd.DataFrame({"model": "m", "seed": 0, "target_task": "t",
                             "source_task": tasks, "true_score": truth})
    r = evaluate_rankings(scores, truth_df, k=ks).iloc[0]
    for k in ks:
        assert r[f"hit_at_{k}"] == pytest.approx(hit[k], abs=1e-12)
    assert r["top_score"] == pytest.approx(top, abs=1e-12)
    assert r["best_score"] == max(truth)
    assert r["regret"] == pytest.approx(max(truth) - top, abs=1e-12)
