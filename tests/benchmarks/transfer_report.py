"""Print a study's headline transfer figures from its tables (the closing-note numbers).

    .venv/bin/python tests/benchmarks/transfer_report.py [--study shared-tasks] [--storage URI]

Per model: own prompt vs no prompt on each task, mean relative score of same-type vs
different-type off-diagonal pairs (overall and per target type), the random- and no-prompt
rows, and the accuracy matrix. Rows come from the ``current_cross_task`` view: exactly the
cells of the study's latest completed run, never older configurations' rows.
"""

from __future__ import annotations

import argparse

import pandas as pd

from prompt_core.analysis import matrix, transfer_summary
from tasks.storage import open_storage
from tasks.tables import duckdb_connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="shared-tasks")
    ap.add_argument("--storage", default=None)
    args = ap.parse_args()
    st = open_storage(args.storage)
    ct = duckdb_connect(st).execute("select * from current_cross_task where study = ?",
                                    [args.study]).df()
    if ct.empty:
        raise SystemExit(f"no completed run of study {args.study!r} under {st.root}")
    pd.set_option("display.width", 200)
    for model, df in ct.groupby("model"):
        s = transfer_summary(df)
        print(f"== study {args.study}, model {model}: {s['n_tasks']} tasks")
        acc = df[df["metric"] == "accuracy"]
        own = acc[acc["source_task"] == acc["target_task"]].set_index("target_task")["score"]
        none = acc[acc["source_kind"] == "none"].groupby("target_task")["score"].mean()
        print(pd.DataFrame({"own_prompt": own, "no_prompt": none,
                            "gain": own - none}).round(3).to_string())
        print(f"own prompt beats no prompt on {s['own_beats_none']}/{s['n_tasks']} tasks")
        print(f"mean relative accuracy, off-diagonal: same type {s['same_type_rel']:.3f} "
              f"({s['n_same_type_pairs']} pairs), different type {s['diff_type_rel']:.3f} "
              f"({s['n_diff_type_pairs']} pairs); random prompt {s['random_rel']:.3f}; "
              f"no prompt {s['none_rel']:.3f}")
        off = acc[(acc["source_kind"] == "prompt") & (acc["source_task"] != acc["target_task"])]
        by_type = off.groupby(["target_task_type", "same_type"])["relative_score"].mean()
        print("mean relative accuracy by target type (columns: source of the same type?)")
        print(by_type.unstack().round(3).to_string())
        print(matrix(df, "accuracy", "score").round(3).to_string())


if __name__ == "__main__":
    main()
