"""Measures of the cross_model and tpt stages: the TPT curve measures (score after k steps,
steps / seconds to a target, speed-up) and the per-group summaries of both stages' rows.

As in :mod:`prompt_core.analysis`, a summary's input must be the rows of one configuration: a
cell given twice raises :class:`~prompt_core.errors.MixedCellsError`.
"""

from __future__ import annotations

import pandas as pd

from prompt_core.errors import MixedCellsError

# -- transferable prompt tuning (TPT) curves -------------------------------------------------
#
# A curve is a sequence of dev evaluations (step, elapsed_s, dev_accuracy), strictly
# increasing in step; step 0 is the init, before any training. Points whose accuracy is None
# or NaN (training-loss-only points) are dropped when a curve is read.

CurvePoints = list[tuple[int, float, float]]


def _as_curve(curve) -> CurvePoints:
    """``curve`` as a checked list of (step, elapsed_s, dev_accuracy): evaluated points only,
    steps strictly increasing (ValueError otherwise)."""
    points = [(int(s), float(t), float(a)) for s, t, a in curve if pd.notna(a)]
    steps = [p[0] for p in points]
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"curve steps must be strictly increasing, got {steps}")
    return points


def curve_from_rows(df: pd.DataFrame) -> CurvePoints:
    """One prompt's ``training_curves`` rows (shaped like ``CurveRow``) as a curve, sorted by
    step; rows without a dev accuracy are skipped."""
    if df["prompt_key"].nunique() > 1:
        raise ValueError(f"rows of {df['prompt_key'].nunique()} prompts; pass one prompt's")
    d = df[df["dev_accuracy"].notna()].sort_values("step")
    return _as_curve(zip(d["step"], d["elapsed_s"], d["dev_accuracy"], strict=True))


def score_at(curve, k: int) -> float:
    """Dev accuracy at the last evaluation at or before step ``k`` (ValueError if none)."""
    before = [a for s, _, a in _as_curve(curve) if s <= k]
    if not before:
        raise ValueError(f"no evaluation at or before step {k}")
    return before[-1]


def reach(curve, target: float) -> tuple[int | None, float | None]:
    """(step, elapsed seconds) of the first evaluation after training began (step >= 1) whose
    dev accuracy is >= ``target``; (None, None) if none does. The init (step 0) never
    counts, even when it already scores above ``target``: its step would be 0 and speed-ups
    undefined; such a curve reaches the target at its first trained evaluation."""
    for s, t, a in _as_curve(curve):
        if s >= 1 and a >= target:
            return s, t
    return None, None


def _speedup(baseline: float | None, tpt: float | None) -> float | None:
    if baseline is None or tpt is None or tpt <= 0:
        return None
    return float(baseline) / float(tpt)


def _trained_best(curve: CurvePoints, what: str) -> float:
    trained = [a for s, _, a in curve if s >= 1]
    if not trained:
        raise ValueError(f"{what} curve has no evaluation after training (step >= 1)")
    return max(trained)


def tpt_metrics(curve, baseline_curve, fraction: float = 0.9, *, k: int) -> dict:
    """The TPT measures of ``TptRow`` for a curve initialised from a source prompt against the
    random-init ``baseline_curve`` trained with the same budget.

    * ``target_score`` = ``fraction`` x ``baseline_best``, the baseline's best dev accuracy
      over trained evaluations (step >= 1; the init never counts as a best);
    * ``score_at_k`` / ``baseline_score_at_k``: :func:`score_at` step ``k`` (the last
      evaluation at or before it; ``k`` past the end gives the final evaluation);
    * ``init_score`` / ``baseline_init_score``: dev accuracy at step 0 (both curves must have
      it); ``best_score``: best over step >= 1, like ``baseline_best``;
    * ``steps_to_target`` / ``seconds_to_target`` (and the baseline's): :func:`reach`, so
      None when never reached, and at least the first trained evaluation's step (a TPT curve
      whose init is already above the target reaches it there). The baseline always reaches
      its own target (fraction <= 1);
    * ``speedup_steps`` / ``speedup_seconds``: baseline / TPT, None when either is None (or
      TPT's is 0). Resolution is the evaluation grid (``eval_every``): a speed-up compares
      the first evaluations at or above the target, not exact crossing points.

    ValueError: ``fraction`` outside (0, 1], ``k`` < 0, a curve without step 0 or without a
    trained evaluation, or steps not strictly increasing.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    tpt, base = _as_curve(curve), _as_curve(baseline_curve)
    for c, what in ((tpt, "TPT"), (base, "baseline")):
        if not c or c[0][0] != 0:
            raise ValueError(f"{what} curve has no step-0 (init) evaluation")
    baseline_best = _trained_best(base, "baseline")
    target = fraction * baseline_best
    steps, seconds = reach(tpt, target)
    b_steps, b_seconds = reach(base, target)
    return {
        "target_score": target,
        "score_at_k": score_at(tpt, k),
        "baseline_score_at_k": score_at(base, k),
        "init_score": tpt[0][2],
        "baseline_init_score": base[0][2],
        "best_score": _trained_best(tpt, "TPT"),
        "baseline_best": baseline_best,
        "steps_to_target": steps,
        "seconds_to_target": seconds,
        "baseline_steps_to_target": b_steps,
        "baseline_seconds_to_target": b_seconds,
        "speedup_steps": _speedup(b_steps, steps),
        "speedup_seconds": _speedup(b_seconds, seconds),
    }


# -- stage summaries ------------------------------------------------------------------------

CROSS_MODEL_CELL = ["source_model", "target_model", "objective", "source_task", "target_task",
                    "seed", "metric"]
TPT_CELL = ["model", "source_kind", "source_model", "source_task", "target_task", "seed"]


def _check_unique(df: pd.DataFrame, key: list[str], what: str) -> None:
    """MixedCellsError naming the first repeated ``key`` (rows of several configurations)."""
    dup = df[df.duplicated(key, keep=False)]
    if len(dup):
        r = dup.iloc[0]
        cell = ", ".join(f"{c}={r[c]}" for c in key)
        raise MixedCellsError(f"{len(dup)} {what} rows repeat a cell (e.g. {cell}): rows of "
                              "more than one configuration; select one run's rows")


def _mean(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else float("nan")


def cross_model_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (source_model, target_model, objective), from ``cross_model`` rows (accuracy):

    * ``diag_rel``: mean relative score of held-out diagonal cells (source_task ==
      target_task, ``held_out``): the projected prompt of a task the projector never saw, on
      that task, relative to the target model's own prompt; ``diag_score``: their mean
      accuracy; ``n_diag``: how many (task x seed) such cells with a relative score;
    * ``held_out_rel`` / ``n_held_out``: the same over every held-out cell.

    Seeds and tasks are averaged together; NaN where a group has no such cell. A cell
    (models, objective, tasks, seed, metric) given twice raises :class:`MixedCellsError`.
    Rows are sorted by the three keys.
    """
    _check_unique(df, CROSS_MODEL_CELL, "cross_model")
    cols = ["source_model", "target_model", "objective", "diag_rel", "diag_score", "n_diag",
            "held_out_rel", "n_held_out"]
    d = df[df["metric"] == "accuracy"].sort_values(CROSS_MODEL_CELL)
    out = []
    for (src, tgt, obj), g in d.groupby(["source_model", "target_model", "objective"],
                                        sort=True):
        held = g[g["held_out"].astype(bool)]
        diag = held[held["source_task"] == held["target_task"]]
        out.append({"source_model": src, "target_model": tgt, "objective": obj,
                    "diag_rel": _mean(diag["relative_score"]),
                    "diag_score": _mean(diag["score"]),
                    "n_diag": int(diag["relative_score"].notna().sum()),
                    "held_out_rel": _mean(held["relative_score"]),
                    "n_held_out": int(held["relative_score"].notna().sum())})
    return pd.DataFrame(out, columns=cols)


def tpt_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, source_kind, same_type), from ``tpt`` rows:

    * ``n``: rows (target x source x seed); ``n_reached``: rows whose TPT prompt reached the
      target score (``speedup_steps`` not None);
    * ``mean_speedup_steps`` / ``mean_speedup_seconds``: arithmetic means over the rows that
      reached it (NaN if none did);
    * ``mean_best_gain``: mean (best_score - baseline_best); ``mean_gain_at_k``: mean
      (score_at_k - baseline_score_at_k).

    A (model, source, target, seed) given twice raises :class:`MixedCellsError`.
    """
    _check_unique(df, TPT_CELL, "tpt")
    cols = ["model", "source_kind", "same_type", "n", "n_reached", "mean_speedup_steps",
            "mean_speedup_seconds", "mean_best_gain", "mean_gain_at_k"]
    d = df.sort_values(TPT_CELL).copy()
    d["same_type"] = d["same_type"].astype(bool)
    out = []
    for (model, kind, same), g in d.groupby(["model", "source_kind", "same_type"], sort=True):
        sp = pd.to_numeric(g["speedup_steps"], errors="coerce")
        out.append({"model": model, "source_kind": kind, "same_type": bool(same),
                    "n": len(g), "n_reached": int(sp.notna().sum()),
                    "mean_speedup_steps": _mean(sp),
                    "mean_speedup_seconds": _mean(g["speedup_seconds"]),
                    "mean_best_gain": _mean(g["best_score"] - g["baseline_best"]),
                    "mean_gain_at_k": _mean(g["score_at_k"] - g["baseline_score_at_k"])})
    return pd.DataFrame(out, columns=cols)
