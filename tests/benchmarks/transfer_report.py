"""Print a study's headline transfer figures from its tables (the closing-note numbers).

    .venv/bin/python tests/benchmarks/transfer_report.py [--study shared-tasks] [--storage URI]

Per model: own prompt vs no prompt on each task, mean relative score of same-type vs
different-type off-diagonal pairs (overall and per target type) and their difference with a
95% hierarchical bootstrap interval (target tasks and their test examples resampled, from the
``current_cross_task_predictions`` view), mean transfer gain beside it, the random- and
no-prompt rows, per-seed figures with their mean and spread when the study has several seeds,
and the accuracy matrix. Rows come from the ``current_cross_task`` view: exactly the cells of
the study's latest completed run, never older configurations' rows.
"""

from __future__ import annotations

import argparse

import pandas as pd

from prompt_core.analysis import (
    MissingPredictionsError,
    matrix,
    over_seeds,
    same_minus_diff_interval,
    seed_summaries,
    transfer_summary,
)
from tasks.storage import open_storage
from tasks.tables import duckdb_connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="shared-tasks")
    ap.add_argument("--storage", default=None)
    args = ap.parse_args()
    st = open_storage(args.storage)
    con = duckdb_connect(st)
    ct = con.execute("select * from current_cross_task where study = ?", [args.study]).df()
    if ct.empty:
        raise SystemExit(f"no completed run of study {args.study!r} under {st.root}")
    preds = con.execute("select cell_key, predicted, gold, n_labels, created_at from "
                        "current_cross_task_predictions where study = ?", [args.study]).df()
    pd.set_option("display.width", 200)
    for model, df in ct.groupby("model"):
        s = transfer_summary(df)
        print(f"== study {args.study}, model {model}: {s['n_tasks']} tasks")
        acc = df[df["metric"] == "accuracy"]
        own = acc[acc["source_task"] == acc["target_task"]].groupby("target_task")["score"].mean()
        none = acc[acc["source_kind"] == "none"].groupby("target_task")["score"].mean()
        print(pd.DataFrame({"own_prompt": own, "no_prompt": none,
                            "gain": own - none}).round(3).to_string())
        print(f"own prompt beats no prompt on {s['own_beats_none']}/{s['n_tasks']} tasks")
        print(f"mean relative accuracy, off-diagonal: same type {s['same_type_rel']:.3f} "
              f"({s['n_same_type_pairs']} pairs), different type {s['diff_type_rel']:.3f} "
              f"({s['n_diff_type_pairs']} pairs); random prompt {s['random_rel']:.3f}; "
              f"no prompt {s['none_rel']:.3f}")
        p = preds[preds["cell_key"].isin(set(df["cell_key"]))]
        for value, what in (("relative_score", "relative accuracy"),
                            ("transfer_gain", "transfer gain")):
            try:
                iv = same_minus_diff_interval(df, p, value=value)
            except MissingPredictionsError as exc:
                print(f"same-type minus different-type {what}: no interval ({exc})")
                continue
            print(f"same-type minus different-type {what}: {iv['point']:.3f}, 95% CI "
                  f"[{iv['low']:.3f}, {iv['high']:.3f}] ({iv['n_boot']} resamples of "
                  f"{iv['n_targets']} targets and their test examples; "
                  f"{iv['n_same_type_cells']} same-type vs {iv['n_diff_type_cells']} "
                  f"different-type cells; {iv['n_undefined']} resamples undefined)")
        print("side by side, off-diagonal means (same type vs different type):")
        print(pd.DataFrame({"same_type": [s["same_type_rel"], s["same_type_gain"]],
                            "diff_type": [s["diff_type_rel"], s["diff_type_gain"]]},
                           index=["relative_score", "transfer_gain"]).round(3).to_string())
        if s["n_seeds"] > 1:
            print(f"per seed ({s['n_seeds']} seeds):")
            cols = ["own_beats_none", "same_type_rel", "diff_type_rel", "same_minus_diff",
                    "random_rel", "none_rel", "same_type_gain", "diff_type_gain"]
            print(seed_summaries(df)[cols].round(3).to_string())
            print("over seeds (std: sample standard deviation):")
            print(over_seeds(df).round(3).to_string())
        off = acc[(acc["source_kind"] == "prompt") & (acc["source_task"] != acc["target_task"])]
        by_type = off.groupby(["target_task_type", "same_type"])["relative_score"].mean()
        print("mean relative accuracy by target type (columns: source of the same type?)")
        print(by_type.unstack().round(3).to_string())
        print(matrix(df, "accuracy", "score").round(3).to_string())


if __name__ == "__main__":
    main()
