"""Do transferability indicators predict transfer? Rank correlations between an indicator's
value for a (source prompt, target prompt) pair and how well the source prompt transfers.

Two tables go in:

* ``cells``: rows shaped like the ``cross_task`` table (``model``, ``seed``, ``source_kind``,
  ``source_task``, ``source_prompt_key``, ``target_task``, ``target_prompt_key`` (the target's
  own prompt), ``same_type``, ``metric``, ``relative_score``, optionally ``transfer_gain``);
* ``indicators``: one row per pair of prompts of one model and indicator (``model``,
  ``prompt_a``, ``prompt_b``, ``indicator``, ``value``), the pair unordered.

A cell meets its indicator values through the two PROMPT KEYS (source prompt, target's own
prompt), never through task names: the same task name in two models (or two seeds) names
different prompts.

Which figure is a test (:func:`correlate`): the pairs of one target share its own prompt and
its score scale, so pooling every pair of a model (scope ``all``) mixes "which target" with
"which source fits it"; its rho is kept as a description, without a p-value. The inference is
on the mean over targets of each target's rho (scope ``mean_over_targets``): a percentile
bootstrap interval that resamples targets, and a permutation p-value that shuffles the
indicator values within each target (:func:`mean_over_targets`). The permutations are
vectorised with numpy (:func:`permutation_rhos`), Kendall as well as Spearman, so both use
:data:`N_PERMUTATIONS` draws: measured on 2 busy CPU cores, 10 targets x 9 sources take
about 25 ms per figure for Spearman and 0.1 s for Kendall (27 pairs per target: 0.04 s and
0.8 s); scipy called once per permutation took ~3.5 s for only 999 draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from prompt_core.analysis import check_one_configuration

INDICATOR_COLUMNS = ("model", "prompt_a", "prompt_b", "indicator", "value")
PAIR_COLUMNS = ("model", "seed", "source_task", "target_task", "same_type", "indicator",
                "value", "relative_score", "transfer_gain", "source_prompt_key",
                "target_prompt_key")
CORRELATION_COLUMNS = ("model", "scope", "indicator", "measure", "method", "rho", "p_value",
                       "n_pairs", "low", "high", "n_targets", "p_method")
ALL = "all"  # the scope of a model's every pair, pooled (rho descriptive, no p-value)
MEAN = "mean_over_targets"  # the scope of the mean over targets of each target's rho
RESERVED_SCOPES = (ALL, MEAN)
# what ``p_value`` is, by scope (column ``p_method``)
P_SCIPY = "scipy"  # a target's own rows: scipy's test, its pairs taken as independent
P_NONE = "none"  # pooled over targets: pairs of one target share it, so no valid test
P_PERMUTATION = "permutation_within_target"
N_PERMUTATIONS = 9999  # within-target permutations of the mean-over-targets test
N_BOOTSTRAP = 1000  # bootstrap resamples of the targets for the mean's interval
LEVEL = 0.95  # the interval's coverage
SEED = 0
_CHUNK = 4_000_000  # elements per block of the vectorised Kendall permutations

# method name -> scipy function returning (statistic, p-value)
METHODS = {"spearman": stats.spearmanr, "kendall": stats.kendalltau}


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {list(df.columns)}")


def unordered_pairs(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The two keys of each row as (lower, higher): the same pair in either order gives the
    same two columns. a, b: (N,) strings -> two (N,) string Series."""
    a, b = a.astype(str), b.astype(str)
    return a.where(a <= b, b), b.where(a <= b, a)


def indicator_table(indicators: pd.DataFrame) -> pd.DataFrame:
    """``indicators`` keyed by unordered pair: columns ``model``, ``key_lo``, ``key_hi``,
    ``indicator``, ``value``, one row per (model, pair, indicator).

    A pair stored in both orders with the same value is kept once; two different values for
    one (model, pair, indicator) are an error (rows of several computations mixed).
    """
    _require(indicators, INDICATOR_COLUMNS, "the indicators table")
    d = indicators[list(INDICATOR_COLUMNS)].copy()
    d["key_lo"], d["key_hi"] = unordered_pairs(d["prompt_a"], d["prompt_b"])
    d["value"] = pd.to_numeric(d["value"], errors="coerce").astype(float)
    key = ["model", "key_lo", "key_hi", "indicator"]
    d = d.drop_duplicates(key + ["value"])
    dup = d[d.duplicated(key, keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise ValueError(f"indicator {r['indicator']!r} of prompts {r['key_lo']} and "
                         f"{r['key_hi']} ({r['model']}) has {int(dup.duplicated(key).sum()) + 1}"
                         " different values: rows of more than one computation")
    return d[key + ["value"]].reset_index(drop=True)


def _transfer_cells(cells: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The off-diagonal trained-prompt cells of ``metric``, ``transfer_gain`` as float."""
    _require(cells, ("model", "seed", "source_kind", "source_task", "source_prompt_key",
                     "target_task", "target_prompt_key", "same_type", "metric",
                     "relative_score"), "the cross_task cells")
    for _, g in cells.groupby("model", sort=False):
        check_one_configuration(g)
    d = cells[(cells["metric"] == metric) & (cells["source_kind"] == "prompt")
              & (cells["source_task"] != cells["target_task"])].copy()
    gain = d["transfer_gain"] if "transfer_gain" in d.columns else pd.Series(None, index=d.index)
    d["transfer_gain"] = pd.to_numeric(gain, errors="coerce").astype(float)
    d["relative_score"] = pd.to_numeric(d["relative_score"], errors="coerce").astype(float)
    d["key_lo"], d["key_hi"] = unordered_pairs(d["source_prompt_key"], d["target_prompt_key"])
    return d


def transfer_pairs(cells: pd.DataFrame, indicators: pd.DataFrame,
                   metric: str = "accuracy") -> pd.DataFrame:
    """One row per (transfer cell, indicator): the indicator's value for the cell's source
    prompt and the target's own prompt, beside the cell's transfer measures.

    Cells: ``source_kind == "prompt"``, source task != target task, ``metric``; each model's
    cells must be one configuration (:func:`prompt_core.analysis.check_one_configuration`).
    The join is on (model, {source_prompt_key, target_prompt_key}) as an unordered pair, so an
    indicator row may name the two prompts in either order. A cell whose pair has no indicator
    row gets no row. Columns: :data:`PAIR_COLUMNS` (``transfer_gain`` NaN where the cell has
    none), sorted by model, indicator, target, source, seed.
    """
    d = _transfer_cells(cells, metric)
    ind = indicator_table(indicators)
    out = d.merge(ind, on=["model", "key_lo", "key_hi"], how="inner")
    out = out[list(PAIR_COLUMNS)]
    return out.sort_values(["model", "indicator", "target_task", "source_task", "seed"],
                           kind="stable").reset_index(drop=True)


def rank_correlation(x: np.ndarray, y: np.ndarray, method: str,
                     min_pairs: int = 3) -> tuple[float, float]:
    """(rho, p-value) of ``method`` (``spearman`` or ``kendall``) between x and y, both (N,).

    NaN, NaN when N < ``min_pairs`` or either input is constant (no rank order to correlate);
    scipy's ConstantInputWarning is silenced on purpose (that case is this rule, not a fault).
    """
    if method not in METHODS:
        raise ValueError(f"unknown correlation method {method!r}; known: {sorted(METHODS)}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < max(min_pairs, 2) or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        res = METHODS[method](x, y)
    rho, p = float(res[0]), float(res[1])
    return (math.nan if rho != rho else rho), (math.nan if p != p else p)


def permutation_rhos(x: np.ndarray, y: np.ndarray, method: str,
                     perms: np.ndarray) -> np.ndarray:
    """``method``'s rho between x permuted by each row of ``perms`` and y, vectorised.

    x, y: (n,) floats, neither constant; perms: (P, n) ints, each row a permutation of
    range(n); returns (P,): row k is the rho of (x[perms[k]], y), as scipy gives it.
    Spearman: the Pearson correlation of the average ranks, ranked once (a permutation of x
    permutes its ranks and keeps their mean and spread, so only the cross product changes).
    Kendall (tau-b): the sign of every pair's x difference and y difference, computed once;
    a permutation reindexes the x signs, and the tie counts in the denominator do not change.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    perms = np.asarray(perms)
    if method == "spearman":
        xc, yc = stats.rankdata(x), stats.rankdata(y)
        xc, yc = xc - xc.mean(), yc - yc.mean()
        return xc[perms] @ yc / math.sqrt(float(xc @ xc) * float(yc @ yc))
    if method == "kendall":
        n = len(x)
        i, j = np.triu_indices(n, 1)
        sx = np.sign(x[:, None] - x[None, :])
        sy = np.sign(y[i] - y[j])
        denom = math.sqrt(float(np.count_nonzero(sx[i, j])) * float(np.count_nonzero(sy)))
        flat = sx.ravel()  # a flat gather: several times faster than sx[rows, cols]
        out = np.empty(len(perms))
        step = max(1, _CHUNK // max(len(i), 1))
        for a in range(0, len(perms), step):
            p = perms[a:a + step]
            out[a:a + step] = flat[p[:, i] * n + p[:, j]] @ sy / denom
        return out
    raise ValueError(f"unknown correlation method {method!r}; known: {sorted(METHODS)}")


def mean_over_targets(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], method: str, *,
                      min_pairs: int = 3, n_permutations: int = N_PERMUTATIONS,
                      n_bootstrap: int = N_BOOTSTRAP, level: float = LEVEL,
                      seed: int = SEED) -> dict[str, float | int]:
    """The mean over targets of each target's rho, with a bootstrap interval over targets
    and a within-target permutation p-value.

    ``xs[t]``, ``ys[t]``: (n_t,) indicator values and transfer measures of target t's pairs.
    A target whose rho is NaN (fewer than ``min_pairs`` pairs, or a constant input: see
    :func:`rank_correlation`) is left out; ``n_targets`` and ``n_pairs`` count the targets
    and pairs kept. Returns ``rho`` (the mean), ``low`` and ``high`` (percentile bootstrap:
    ``n_bootstrap`` resamples of the kept targets with replacement, the mean of each; NaN
    under 2 targets), ``p_value``: two-sided, the null being that within each target the
    indicator says nothing about the measure; each of ``n_permutations`` draws permutes the
    indicator values within every target independently and recomputes the mean rho, and
    p = (1 + #draws with |mean| >= |observed mean|) / (1 + n_permutations). All NaN when no
    target is kept. Seeded by ``seed``: the same inputs give the same figures.
    """
    if n_permutations < 1 or n_bootstrap < 1:
        raise ValueError(f"n_permutations and n_bootstrap must be >= 1, got {n_permutations} "
                         f"and {n_bootstrap}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    kept = []
    for x, y in zip(xs, ys, strict=True):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        rho, _ = rank_correlation(x, y, method, min_pairs)
        if rho == rho:
            kept.append((x, y, rho))
    out: dict[str, float | int] = {"rho": math.nan, "low": math.nan, "high": math.nan,
                                   "p_value": math.nan, "n_targets": len(kept),
                                   "n_pairs": sum(len(x) for x, _, _ in kept)}
    if not kept:
        return out
    rhos = np.array([r for _, _, r in kept])
    out["rho"] = float(rhos.mean())
    perm_rng, boot_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed)
                          .spawn(2))
    # the observed statistic through the same arithmetic as the permuted ones (identity
    # permutation), so draws that tie it exactly are counted however the floats round
    observed = np.zeros(1)
    total = np.zeros(n_permutations)
    for x, y, _ in kept:
        n = len(x)
        perms = perm_rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
        total += permutation_rhos(x, y, method, perms)
        observed += permutation_rhos(x, y, method, np.arange(n)[None, :])
    observed, total = observed / len(kept), total / len(kept)
    hits = int(np.count_nonzero(np.abs(total) >= np.abs(observed[0]) - 1e-12))
    out["p_value"] = (hits + 1) / (n_permutations + 1)
    if len(kept) >= 2:
        idx = boot_rng.integers(0, len(kept), size=(n_bootstrap, len(kept)))
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(rhos[idx].mean(axis=1), [tail, 100 - tail])
        out["low"], out["high"] = float(low), float(high)
    return out


def _numeric(g: pd.DataFrame, measure: str) -> pd.DataFrame:
    """``g``'s target, indicator value and ``measure``, rows with a missing one dropped."""
    d = g[["value", measure]].apply(pd.to_numeric, errors="coerce")
    d["target_task"] = g["target_task"]
    return d.dropna(subset=["value", measure])


def correlate(pairs: pd.DataFrame, measures: Sequence[str] = ("relative_score", "transfer_gain"),
              min_pairs: int = 3, *, n_permutations: int = N_PERMUTATIONS,
              n_bootstrap: int = N_BOOTSTRAP, level: float = LEVEL,
              seed: int = SEED) -> pd.DataFrame:
    """Spearman and Kendall correlation between each indicator's value and each transfer
    measure, per model, in three scopes:

    * each target task (scope = the target's name): its pairs (every source, every seed);
      ``p_value`` is scipy's (``p_method`` ``scipy``), the target's pairs taken as
      independent;
    * :data:`MEAN` (``mean_over_targets``): ``rho`` = the mean over targets of the
      per-target rhos (targets whose rho is NaN left out), ``low``/``high`` its percentile
      bootstrap interval over targets at ``level``, ``p_value`` a two-sided permutation test
      that permutes the indicator values within each target (``p_method``
      ``permutation_within_target``): see :func:`mean_over_targets`. This is the test;
    * :data:`ALL` (``all``): every pair of the model pooled. ``rho`` is descriptive only and
      ``p_value`` is NaN (``p_method`` ``none``): the pairs of one target share its own
      prompt and its score scale (and a (source, target) pair recurs over seeds), so they
      are not independent and scipy's p-value would overstate the evidence; a correlation
      made of target-level offsets alone can look highly significant when pooled.

    ``pairs``: :func:`transfer_pairs`'s rows. Rows whose measure (or value) is missing are
    dropped before correlating; ``n_pairs`` counts the rows left (for :data:`MEAN`, those of
    the targets kept) and ``n_targets`` the targets they belong to (1 in a target's own
    scope; for :data:`MEAN` the targets kept). Fewer than ``min_pairs``, or a constant indicator or
    measure, gives ``rho`` and ``p_value`` NaN (still a row). ``low``/``high`` are NaN outside
    :data:`MEAN`. Columns: :data:`CORRELATION_COLUMNS`, one row per (model, scope, indicator,
    measure, method), per model: ``all``, ``mean_over_targets``, then the targets, sorted.
    """
    _require(pairs, ("model", "target_task", "indicator", "value", *measures), "the pairs")
    if min_pairs < 2:
        raise ValueError(f"min_pairs must be >= 2 (a correlation needs two pairs), got "
                         f"{min_pairs}")
    clash = sorted(set(pairs["target_task"].astype(str)) & set(RESERVED_SCOPES))
    if clash:
        raise ValueError(f"target task name(s) {clash} clash with the scope names "
                         f"{list(RESERVED_SCOPES)}")
    rows = []

    def row(model, scope, indicator, measure, method, rho, p, n_pairs, n_targets, p_method,
            low=math.nan, high=math.nan):
        rows.append({"model": model, "scope": scope, "indicator": indicator,
                     "measure": measure, "method": method, "rho": rho, "p_value": p,
                     "n_pairs": int(n_pairs), "low": low, "high": high,
                     "n_targets": int(n_targets), "p_method": p_method})

    for model, g in pairs.groupby("model", sort=True):
        for indicator, gi in g.groupby("indicator", sort=True):
            for measure in measures:
                ok = _numeric(gi, measure)
                by_target = [(d["value"].to_numpy(), d[measure].to_numpy())
                             for _, d in ok.groupby("target_task", sort=True)]
                for method in METHODS:
                    rho, _ = rank_correlation(ok["value"].to_numpy(), ok[measure].to_numpy(),
                                              method, min_pairs)
                    row(model, ALL, indicator, measure, method, rho, math.nan, len(ok),
                        ok["target_task"].nunique(), P_NONE)
                    m = mean_over_targets([x for x, _ in by_target],
                                          [y for _, y in by_target], method,
                                          min_pairs=min_pairs, n_permutations=n_permutations,
                                          n_bootstrap=n_bootstrap, level=level, seed=seed)
                    row(model, MEAN, indicator, measure, method, m["rho"], m["p_value"],
                        m["n_pairs"], m["n_targets"], P_PERMUTATION, m["low"], m["high"])
            targets = sorted(gi["target_task"].unique())
            for target in targets:
                gt = gi[gi["target_task"] == target]
                for measure in measures:
                    ok = _numeric(gt, measure)
                    for method in METHODS:
                        rho, p = rank_correlation(ok["value"].to_numpy(),
                                                  ok[measure].to_numpy(), method, min_pairs)
                        row(model, target, indicator, measure, method, rho, p, len(ok), 1,
                            P_SCIPY)
    out = pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))
    first = out["scope"].map({ALL: 0, MEAN: 1}).fillna(2)
    target = out["scope"].where(first == 2, "")
    return (out.assign(_f=first, _t=target).sort_values(["model", "_f", "_t"], kind="stable")
            .drop(columns=["_f", "_t"]).reset_index(drop=True))
