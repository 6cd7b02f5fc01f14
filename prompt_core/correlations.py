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
                       "n_pairs")
ALL = "all"  # the scope of a model's every pair

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


def _scopes(pairs: pd.DataFrame):
    """(model, scope, rows) for every model: its every pair (``all``), then each target."""
    for model, g in pairs.groupby("model", sort=True):
        yield model, ALL, g
        for target, t in g.groupby("target_task", sort=True):
            yield model, target, t


def correlate(pairs: pd.DataFrame, measures: Sequence[str] = ("relative_score", "transfer_gain"),
              min_pairs: int = 3) -> pd.DataFrame:
    """Spearman and Kendall correlation between each indicator's value and each transfer
    measure, per model over all its pairs (scope ``all``) and per target task (scope = the
    target's name).

    ``pairs``: :func:`transfer_pairs`'s rows. Rows whose measure (or value) is missing are
    dropped before correlating; ``n_pairs`` counts the rows left. Fewer than ``min_pairs``,
    or a constant indicator or measure, gives ``rho`` and ``p_value`` NaN (still a row).
    Columns: :data:`CORRELATION_COLUMNS`, one row per (model, scope, indicator, measure,
    method).
    """
    _require(pairs, ("model", "target_task", "indicator", "value", *measures), "the pairs")
    if min_pairs < 2:
        raise ValueError(f"min_pairs must be >= 2 (a correlation needs two pairs), got "
                         f"{min_pairs}")
    rows = []
    for model, scope, g in _scopes(pairs):
        for indicator, gi in g.groupby("indicator", sort=True):
            for measure in measures:
                ok = gi[["value", measure]].apply(pd.to_numeric, errors="coerce").dropna()
                for method in METHODS:
                    rho, p = rank_correlation(ok["value"].to_numpy(), ok[measure].to_numpy(),
                                              method, min_pairs)
                    rows.append({"model": model, "scope": scope, "indicator": indicator,
                                 "measure": measure, "method": method, "rho": rho,
                                 "p_value": p, "n_pairs": len(ok)})
    return pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))
