"""Summaries of a cross-task matrix (a DataFrame shaped like the ``cross_task`` table).

The input must be the cells of one configuration (e.g. one run's cells, or the
``current_cross_task`` view): a cell that appears twice means rows of several configurations
were mixed, and averaging them would publish figures no run produced, so it is an error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CELL_ID = ["source_kind", "source_task", "target_task", "seed", "metric"]


class MixedCellsError(ValueError):
    """The rows hold some cell more than once (several configurations mixed)."""


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


def transfer_summary(df: pd.DataFrame, metric: str = "accuracy") -> dict[str, float | int]:
    """The study's headline numbers (seed-averaged, one model's rows).

    * ``own_beats_none``: targets where the own prompt beats the no-prompt row, of ``n_tasks``
    * ``same_type_rel`` / ``diff_type_rel``: mean relative score of off-diagonal pairs whose
      source and target share / differ in task type; ``random_rel`` / ``none_rel`` likewise.
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

    def mean(s: pd.Series) -> float:
        return float(s.mean()) if len(s) else float("nan")

    return {
        "n_tasks": int(d["target_task"].nunique()),
        "own_beats_none": int((own[both] > none[both]).sum()),
        "mean_own_score": mean(own),
        "mean_none_score": mean(none),
        "same_type_rel": mean(off[off["same_type"].astype(bool)]["relative_score"]),
        "diff_type_rel": mean(off[~off["same_type"].astype(bool)]["relative_score"]),
        "random_rel": mean(d[d["source_kind"] == "random"]["relative_score"]),
        "none_rel": mean(d[d["source_kind"] == "none"]["relative_score"]),
        "n_same_type_pairs": int(off[off["same_type"].astype(bool)][["source_task", "target_task"]]
                                 .drop_duplicates().shape[0]),
        "n_diff_type_pairs": int(off[~off["same_type"].astype(bool)][["source_task", "target_task"]]
                                 .drop_duplicates().shape[0]),
    }
