"""Summaries of a cross-task matrix (a DataFrame shaped like the ``cross_task`` table) and
bootstrap intervals over test examples. The cross_model and tpt stages' measures (TPT curves,
per-group summaries) are in :mod:`prompt_core.stage_analysis`, re-exported here.

The input of a summary must be the cells of one configuration (e.g. one run's cells, or the
``current_cross_task`` view): a cell that appears twice means rows of several configurations
were mixed, and averaging them would publish figures no run produced, so it is an error.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from prompt_core.errors import MixedCellsError
from prompt_core.stage_analysis import (  # re-exported: the names other modules import here
    CROSS_MODEL_CELL,
    TPT_CELL,
    CurvePoints,
    cross_model_summary,
    curve_from_rows,
    reach,
    score_at,
    tpt_metrics,
    tpt_summary,
)

__all__ = [
    "CELL_ID", "CROSS_MODEL_CELL", "HEADLINE", "TPT_CELL", "CurvePoints",
    "MissingPredictionsError", "MixedCellsError", "bootstrap_interval",
    "check_one_configuration", "cross_model_summary", "curve_from_rows", "matrix",
    "over_seeds", "reach", "same_minus_diff_interval", "score_at", "seed_summaries",
    "tpt_metrics", "tpt_summary", "transfer_gain", "transfer_summary"]

CELL_ID = ["source_kind", "source_task", "target_task", "seed", "metric"]


def check_one_configuration(df: pd.DataFrame) -> None:
    """Raise MixedCellsError if a (source, target, seed, metric) cell occurs twice."""
    dup = df[df.duplicated(CELL_ID, keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise MixedCellsError(
            f"{len(dup)} rows repeat a cell (e.g. source {r['source_kind']}:"
            f"{r['source_task']} -> target {r['target_task']}, seed {r['seed']}, "
            f"{r['metric']}): rows of more than one configuration; select one run's cells "
            "(the current_cross_task view, or a run's keys in run_keys)")


def matrix(df: pd.DataFrame, metric: str = "accuracy", value: str = "score") -> pd.DataFrame:
    """Pivot to rows = source (task name, ``random`` or ``none``), columns = target task.

    Seeds are averaged. Rows are ordered: trained sources in column order, then random, none.
    """
    check_one_configuration(df)
    d = df[df["metric"] == metric].copy()
    d["source"] = np.where(d["source_kind"] == "prompt", d["source_task"], d["source_kind"])
    m = d.pivot_table(index="source", columns="target_task", values=value, aggfunc="mean")
    cols = sorted(m.columns)
    rows = [c for c in cols if c in m.index] + [r for r in ("random", "none") if r in m.index]
    rows += [r for r in m.index if r not in rows]
    return m.reindex(index=rows, columns=cols)


def _nan_mean(s: pd.Series) -> float:
    """Mean of the non-null values; :data:`math.nan` (one object) when there is none, so
    summaries of the same cells compare equal as dicts."""
    v = float(pd.to_numeric(s, errors="coerce").mean()) if len(s) else math.nan
    return math.nan if v != v else v


def _diff(a: float, b: float) -> float:
    v = a - b
    return math.nan if v != v else v


def transfer_summary(df: pd.DataFrame, metric: str = "accuracy") -> dict[str, float | int]:
    """The study's headline numbers (seed-averaged, one model's rows).

    * ``own_beats_none``: targets where the own prompt beats the no-prompt row, of ``n_tasks``
      (own and no-prompt scores averaged over seeds first);
    * ``same_type_rel`` / ``diff_type_rel``: mean relative score of off-diagonal pairs whose
      source and target share / differ in task type (pooled over seeds);
      ``same_minus_diff`` = their difference (:func:`same_minus_diff_interval` gives its
      bootstrap interval); ``random_rel`` / ``none_rel`` likewise for the baselines;
    * ``same_type_gain`` / ``diff_type_gain``: the same means of ``transfer_gain`` (cells
      without one, or tables without the column, are left out; NaN when none is left);
    * ``n_seeds``: distinct seeds; ``n_same_type_pairs`` / ``n_diff_type_pairs``: distinct
      (source, target) pairs.

    :func:`seed_summaries` gives these per seed, :func:`over_seeds` their mean and spread.
    NaN is always :data:`math.nan`, so two summaries of the same cells are equal dicts.
    """
    check_one_configuration(df)
    # a fixed row order: the same cells give bit-identical means however they were read
    d = df[df["metric"] == metric].sort_values(CELL_ID, na_position="first")
    if d.empty:
        return {"n_tasks": 0}
    prompts = d[d["source_kind"] == "prompt"]
    off = prompts[prompts["source_task"] != prompts["target_task"]]
    own = (prompts[prompts["source_task"] == prompts["target_task"]]
           .groupby("target_task")["score"].mean())
    none = d[d["source_kind"] == "none"].groupby("target_task")["score"].mean()
    both = own.index.intersection(none.index)
    same = off["same_type"].astype(bool)
    gain = (off["transfer_gain"] if "transfer_gain" in off.columns
            else pd.Series(math.nan, index=off.index))
    same_rel = _nan_mean(off[same]["relative_score"])
    diff_rel = _nan_mean(off[~same]["relative_score"])
    return {
        "n_tasks": int(d["target_task"].nunique()),
        "n_seeds": int(d["seed"].nunique()),
        "own_beats_none": int((own[both] > none[both]).sum()),
        "mean_own_score": _nan_mean(own),
        "mean_none_score": _nan_mean(none),
        "same_type_rel": same_rel,
        "diff_type_rel": diff_rel,
        "same_minus_diff": _diff(same_rel, diff_rel),
        "random_rel": _nan_mean(d[d["source_kind"] == "random"]["relative_score"]),
        "none_rel": _nan_mean(d[d["source_kind"] == "none"]["relative_score"]),
        "same_type_gain": _nan_mean(gain[same]),
        "diff_type_gain": _nan_mean(gain[~same]),
        "n_same_type_pairs": int(off[same][["source_task", "target_task"]]
                                 .drop_duplicates().shape[0]),
        "n_diff_type_pairs": int(off[~same][["source_task", "target_task"]]
                                 .drop_duplicates().shape[0]),
    }


# the headline numbers whose mean and spread over seeds :func:`over_seeds` reports
HEADLINE = ("own_beats_none", "same_type_rel", "diff_type_rel", "same_minus_diff",
            "random_rel", "none_rel", "same_type_gain", "diff_type_gain")


def seed_summaries(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """:func:`transfer_summary` of each seed's cells alone: one row per seed (index ``seed``,
    sorted), one column per figure. Empty (no rows) when ``df`` has no cell of ``metric``."""
    check_one_configuration(df)
    d = df[df["metric"] == metric]
    rows = {int(seed): transfer_summary(g, metric)
            for seed, g in d.groupby("seed", sort=True)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "seed"
    return out


def over_seeds(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Mean and spread over seeds of each :data:`HEADLINE` figure, from
    :func:`seed_summaries`: one row per figure, columns ``mean``, ``std`` (sample standard
    deviation, ddof=1: NaN with one seed), ``min``, ``max`` and ``n_seeds`` (seeds whose
    figure is defined; NaN figures of a seed are left out)."""
    per = seed_summaries(df, metric)
    out = []
    for name in HEADLINE:
        v = (pd.to_numeric(per[name], errors="coerce").dropna() if name in per.columns
             else pd.Series(dtype=float))
        out.append({"figure": name, "mean": float(v.mean()) if len(v) else math.nan,
                    "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                    "min": float(v.min()) if len(v) else math.nan,
                    "max": float(v.max()) if len(v) else math.nan, "n_seeds": len(v)})
    return pd.DataFrame(out).set_index("figure")


# -- bootstrap intervals ---------------------------------------------------------------------

_BOOT_CHUNK = 1 << 22  # resampled indices held at once (rows x examples): ~32 MB of int64


def transfer_gain(score: float, none_score: float | None, own_score: float | None,
                  min_margin: float = 0.0, own_low: float | None = None) -> float | None:
    """Chance-corrected transfer: how much of the target's own-prompt gain over no prompt a
    source prompt achieves, ``(score - none) / (own - none)``. 1 = as good as the target's own
    prompt, 0 = no better than no prompt, negative = worse than no prompt.

    Rule for targets whose own prompt does not clearly beat no prompt: None, because there is
    no gain to transfer and a ratio over a near-zero gain only amplifies noise (a gain of 0.01
    turns a 0.05 difference into 5). Not clearly = ``own - none <= min_margin``, or, when the
    own score's 95% bootstrap interval is given (``own_low``, its lower end, as the flow
    passes it), the no-prompt score is not below that interval (``none >= own_low``). Also
    None when either score is missing."""
    if none_score is None or own_score is None:
        return None
    gain = own_score - none_score
    if not gain > min_margin:
        return None
    if own_low is not None and not none_score < own_low:
        return None
    return (score - none_score) / gain


def _boot_stats(pred: np.ndarray, gold: np.ndarray, idx: np.ndarray, metric: str,
                n_labels: int) -> np.ndarray:
    """``metric`` of each resample; ``idx`` (B, N) indices into the examples -> (B,)."""
    if metric == "accuracy":
        return (pred == gold)[idx].mean(axis=1)
    p, g = pred[idx], gold[idx]  # (B, N)
    f1 = np.zeros((idx.shape[0], n_labels))
    for c in range(n_labels):  # as prompt_core.evaluation.macro_f1: 0 for a class never hit
        pc, gc = p == c, g == c
        tp = np.sum(pc & gc, axis=1)
        denom = pc.sum(axis=1) + gc.sum(axis=1)  # 2 tp + fp + fn
        f1[:, c] = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    return f1.mean(axis=1)


def bootstrap_interval(pred: np.ndarray, gold: np.ndarray, n_labels: int,
                       metric: str = "accuracy", n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` (``accuracy`` or ``macro_f1``, with the
    semantics of :mod:`prompt_core.evaluation`) over test examples: ``n_boot`` resamples of
    the N (pred, gold) pairs with replacement, the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the resampled scores.

    ``pred``, ``gold``: (N,) label ids. Deterministic for a ``seed``. No examples: (nan, nan);
    every resample of an all-correct (or all-wrong) split scores the same, so the interval is
    then [p, p].
    """
    pred, gold = np.asarray(pred).ravel(), np.asarray(gold).ravel()
    if pred.shape != gold.shape:
        raise ValueError(f"pred and gold differ in length: {len(pred)} vs {len(gold)}")
    if metric not in ("accuracy", "macro_f1"):
        raise ValueError(f"metric must be accuracy or macro_f1, got {metric!r}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    n = len(gold)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOT_CHUNK // n)
    stats = np.concatenate([
        _boot_stats(pred, gold, rng.integers(0, n, size=(min(rows, n_boot - start), n)),
                    metric, n_labels)
        for start in range(0, n_boot, rows)])
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


class MissingPredictionsError(ValueError):
    """A cell has no stored per-example predictions (``cross_task_predictions``)."""


def _weighted_scores(w: np.ndarray, pred: np.ndarray, gold: np.ndarray, metric: str,
                     n_labels: int) -> np.ndarray:
    """``metric`` of every cell on every resample: ``w`` (D, N) how often each example is
    drawn, ``pred`` (C, N) the cells' predictions, ``gold`` (N,) -> (D, C)."""
    n = w.sum(axis=1, keepdims=True).astype(float)
    if metric == "accuracy":
        return (w @ (pred == gold).T.astype(float)) / n
    f1 = np.zeros((w.shape[0], pred.shape[0]))
    for c in range(n_labels):  # as prompt_core.evaluation.macro_f1: 0 for a class never hit
        pc, gc = (pred == c), (gold == c)
        tp = w @ (pc & gc).T.astype(float)  # (D, C)
        denom = w @ pc.T.astype(float) + (w @ gc.astype(float))[:, None]  # 2 tp + fp + fn
        f1 += np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1 / n_labels


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where ``den`` is not > 0 (cells a summary leaves out)."""
    ok = den > 0
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=ok)


def same_minus_diff_interval(cells: pd.DataFrame, predictions: pd.DataFrame, *,
                             metric: str = "accuracy", value: str = "relative_score",
                             n_boot: int = 1000, seed: int = 0, level: float = 0.95
                             ) -> dict[str, float | int | str]:
    """Same-type minus different-type transfer with a hierarchical (two-level) percentile
    bootstrap interval: is "same task type transfers better" more than noise?

    ``cells``: one configuration's ``cross_task`` rows of one model (as for
    :func:`transfer_summary`); ``predictions``: their ``cross_task_predictions`` rows
    (``cell_key``, ``predicted``, ``gold``, optionally ``n_labels`` and ``created_at``: the
    newest row of a key is used). ``value``: ``relative_score`` (score / the target's own
    prompt's score, same seed) or ``transfer_gain`` ((score - no prompt) / (own - no prompt),
    same seed).

    The statistic is the mean ``value`` of the same-type off-diagonal prompt cells minus that
    of the different-type ones, pooled over (source, target, seed) cells like
    :func:`transfer_summary`. Each of the ``n_boot`` resamples:

    1. draws the T target tasks with replacement (T = the targets in ``cells``);
    2. for every drawn target (each draw separately, so a target drawn twice gets two example
       resamples), draws its N test examples with replacement, the *same* indices for every
       cell scored on that target (every source, every seed, the own prompt and no prompt:
       a paired resample);
    3. recomputes every such cell's ``metric`` from its predictions, then its ``value``
       against the own prompt (and no prompt) of the same seed on that same resample;
    4. pools the drawn targets' cells: mean same-type ``value`` minus mean different-type
       ``value``. A resample with no same-type or no different-type cell is undefined.

    Which cells have a ``transfer_gain`` is decided once, on the full data, by the rule of
    :func:`transfer_gain` (own - none > margin and none below the own score's interval): the
    cells whose stored ``transfer_gain`` is defined, exactly those the point estimate averages.
    Every resample recomputes (score - none) / (own - none) for those cells and no other: the
    same estimator over the same cells as the point, so the interval measures the noise of
    that one figure. The rule is not re-applied per resample (it needs each resample's own
    interval, and letting resamples add or drop cells would make the interval describe a
    different, data-dependently chosen set of cells). A resample in which any of those drawn
    cells' own - none is not > 0 has no such ratio, so the whole resample is undefined and
    counted, never silently averaged without that cell. ``relative_score`` keeps its rule: a
    cell whose own score is 0 on a resample is left out of that resample's means.

    Seeds are not resampled (every seed's cells are pooled). Returns ``point`` (from the
    unresampled cells: exactly :func:`transfer_summary`'s ``same_type_*`` minus
    ``diff_type_*``), ``low`` / ``high`` (the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the defined resamples; NaN when none is), ``n_boot``, ``n_valid`` (defined
    resamples), ``n_undefined`` (the others: ``n_valid + n_undefined == n_boot``),
    ``n_undefined_cells`` (drawn cells whose ``value`` was undefined on a resample, counted
    once per resample and draw: for ``transfer_gain`` each makes its resample undefined, for
    ``relative_score`` each was left out), ``n_targets``, ``n_same_type_cells`` /
    ``n_diff_type_cells`` (off-diagonal cells with a ``value``), ``n_same_type_pairs`` /
    ``n_diff_type_pairs``, ``metric``, ``value``, ``level``.
    Deterministic for a ``seed``. Vectorised: per target, the resamples' example counts
    (D x N) times the cells' hit indicators (N x C), in chunks of about 4M counts.

    ValueError: unknown ``metric`` / ``value``, bad ``n_boot`` / ``level``, cells of one
    target whose gold labels differ; :class:`MissingPredictionsError`: a needed cell has no
    predictions row; :class:`MixedCellsError`: rows of several configurations.
    """
    if metric not in ("accuracy", "macro_f1"):
        raise ValueError(f"metric must be accuracy or macro_f1, got {metric!r}")
    if value not in ("relative_score", "transfer_gain"):
        raise ValueError(f"value must be relative_score or transfer_gain, got {value!r}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    summary = transfer_summary(cells, metric)  # checks for mixed configurations
    short = "rel" if value == "relative_score" else "gain"
    out: dict[str, float | int | str] = {
        "point": summary.get(f"same_type_{short}", math.nan)
        - summary.get(f"diff_type_{short}", math.nan),
        "low": math.nan, "high": math.nan, "n_boot": n_boot, "n_valid": 0,
        "n_undefined": n_boot, "n_undefined_cells": 0, "n_targets": 0,
        "n_same_type_cells": 0, "n_diff_type_cells": 0,
        "n_same_type_pairs": summary.get("n_same_type_pairs", 0),
        "n_diff_type_pairs": summary.get("n_diff_type_pairs", 0),
        "metric": metric, "value": value, "level": level}
    d = cells[cells["metric"] == metric].sort_values(CELL_ID, na_position="first")
    if d.empty:
        return out
    p = predictions
    if "created_at" in p.columns:
        p = p.sort_values("created_at", kind="stable")
    p = p.drop_duplicates("cell_key", keep="last").set_index("cell_key")

    # per target: the prediction matrix of the cells it needs, and which column is which
    targets = sorted(d["target_task"].unique())
    plans = []
    for t in targets:
        g = d[d["target_task"] == t]
        prompts = g[g["source_kind"] == "prompt"]
        own = {int(r.seed): r.cell_key for r in
               prompts[prompts["source_task"] == t].itertuples()}
        none = {int(r.seed): r.cell_key for r in
                g[g["source_kind"] == "none"].itertuples()}
        off = prompts[prompts["source_task"] != t]
        keep = [s in own and (value == "relative_score" or s in none)
                for s in off["seed"].astype(int)]
        off = off.loc[np.asarray(keep, dtype=bool)]
        keys = list(dict.fromkeys([*off["cell_key"], *own.values(),
                                   *(none.values() if value == "transfer_gain" else [])]))
        missing = [k for k in keys if k not in p.index]
        if missing:
            raise MissingPredictionsError(
                f"{len(missing)} cell(s) on target {t!r} have no predictions row "
                f"(cross_task_predictions), e.g. {missing[0]}")
        col = {k: i for i, k in enumerate(keys)}
        golds = [np.asarray(p.at[k, "gold"]) for k in keys]
        gold = golds[0] if golds else np.zeros(0, dtype=int)
        if any(len(x) != len(gold) or (x != gold).any() for x in golds):
            raise ValueError(f"the cells on target {t!r} differ in their gold labels: "
                             "predictions of several splits or example orders")
        pred = (np.stack([np.asarray(p.at[k, "predicted"]) for k in keys]) if keys
                else np.zeros((0, 0), dtype=int))
        if pred.shape[1:] != gold.shape:
            raise ValueError(f"predictions and gold differ in length on target {t!r}")
        n_labels = (int(p.loc[keys, "n_labels"].max()) if "n_labels" in p.columns and keys
                    else int(max(pred.max(initial=0), gold.max(initial=0))) + 1)
        seeds = off["seed"].astype(int).tolist()
        plans.append({
            "pred": pred, "gold": gold, "n_labels": n_labels,
            "off": np.array([col[k] for k in off["cell_key"]], dtype=int),
            "own": np.array([col[own[s]] for s in seeds], dtype=int),
            "none": np.array([col[none[s]] for s in seeds] if value == "transfer_gain"
                             else [], dtype=int),
            "same": off["same_type"].astype(bool).to_numpy(),
            # transfer_gain: the cells with a stored gain (the rule of transfer_gain, applied
            # once on the full data) are the ones every resample recomputes
            "gain_ok": (off["transfer_gain"].notna().to_numpy()
                        if value == "transfer_gain" and "transfer_gain" in off.columns
                        else np.ones(len(off), dtype=bool))})

    def values(plan: dict, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(D, cells off the diagonal) ``value`` on the resamples ``w`` (D, N), NaN for the
        cells without one, and where that is because it is undefined on the resample (own
        score 0; for transfer_gain, a cell with a gain whose own - none is not > 0)."""
        sc = _weighted_scores(w, plan["pred"], plan["gold"], metric, plan["n_labels"])
        src, own = sc[:, plan["off"]], sc[:, plan["own"]]
        if value == "relative_score":
            with np.errstate(invalid="ignore"):
                v = np.where(own != 0, src / np.where(own != 0, own, 1.0), np.nan)
            return v, ~np.isfinite(v)
        none = sc[:, plan["none"]]
        den = own - none
        return (np.where(plan["gain_ok"], _ratio(src - none, den), np.nan),
                plan["gain_ok"] & ~(den > 0))

    rng = np.random.default_rng(seed)
    T = len(plans)
    drawn = rng.multinomial(T, np.full(T, 1.0 / T), size=n_boot)  # (B, T) draws of targets
    sums = np.zeros((2, n_boot))  # [same, diff] sums of values over the drawn cells
    counts = np.zeros((2, n_boot))
    undefined = np.zeros(n_boot)  # drawn cells whose value is undefined, per resample
    n_cells = np.zeros(2, dtype=int)
    for ti, plan in enumerate(plans):
        n = len(plan["gold"])
        full = (values(plan, np.ones((1, n)))[0][0] if n
                else np.full(len(plan["off"]), np.nan))
        ok = np.isfinite(full)
        n_cells += [int((ok & plan["same"]).sum()), int((ok & ~plan["same"]).sum())]
        if n == 0 or not len(plan["off"]):
            continue
        owner = np.repeat(np.arange(n_boot), drawn[:, ti])  # resample of each draw
        rows = max(1, _BOOT_CHUNK // n)
        for start in range(0, len(owner), rows):
            b = owner[start:start + rows]
            idx = rng.integers(0, n, size=(len(b), n)) + n * np.arange(len(b))[:, None]
            w = np.bincount(idx.ravel(), minlength=len(b) * n).reshape(len(b), n)
            v, bad = values(plan, w)
            fin = np.isfinite(v)
            undefined += np.bincount(b, bad.sum(axis=1), minlength=n_boot)
            for k, mask in enumerate((plan["same"], ~plan["same"])):
                sums[k] += np.bincount(b, np.where(fin[:, mask], v[:, mask], 0.0).sum(axis=1),
                                       minlength=n_boot)
                counts[k] += np.bincount(b, fin[:, mask].sum(axis=1), minlength=n_boot)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = sums[0] / counts[0] - sums[1] / counts[1]
    if value == "transfer_gain":  # a gain cell without its ratio: no estimate on the resample
        stats[undefined > 0] = np.nan
    valid = stats[np.isfinite(stats)]
    out.update(n_valid=len(valid), n_undefined=n_boot - len(valid),
               n_undefined_cells=int(undefined.sum()), n_targets=T,
               n_same_type_cells=int(n_cells[0]), n_diff_type_cells=int(n_cells[1]))
    if len(valid):
        low, high = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
        out.update(low=float(low), high=float(high))
    return out
