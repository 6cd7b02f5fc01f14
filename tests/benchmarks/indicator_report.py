"""Print a study's indicator figures from its tables (the closing-note numbers).

    .venv/bin/python tests/benchmarks/indicator_report.py [--study shared-tasks] [--storage URI]

Per model, from the ``current_*`` views (exactly the rows of the study's latest completed run):
Spearman and Kendall of every indicator with the relative score and the transfer gain over all
(source, target) pairs, with p-values and the number of pairs; the recommender (``probe``)
against its baselines, leave-one-task-out (expected top-1 / top-3 hit rate of the true best
source and mean regret in accuracy); the neuron-masking ablation (mean accuracy drop, top-k%
vs random k%).
"""

from __future__ import annotations

import argparse

import pandas as pd

from flows.publish_indicators import ranking_tables
from tasks.storage import open_storage
from tasks.tables import duckdb_connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="shared-tasks")
    ap.add_argument("--storage", default=None)
    args = ap.parse_args()
    st = open_storage(args.storage)
    con = duckdb_connect(st)

    def view(name: str) -> pd.DataFrame:
        return con.execute(f"select * from {name} where study = ?", [args.study]).df()

    corr, rec, abl = (view("current_correlations"), view("current_recommendations"),
                      view("current_ablations"))
    if corr.empty:
        raise SystemExit(f"no completed run of study {args.study!r} with the indicators stage "
                         f"under {st.root}")
    pd.set_option("display.width", 200)
    for model in sorted(corr["model"].unique()):
        print(f"== study {args.study}, model {model}: indicators vs transfer, all pairs")
        c = corr[(corr["model"] == model) & (corr["scope"] == "all")]
        wide = c.pivot_table(index="indicator", columns=["measure", "method"],
                             values=["rho", "p_value"]).round(3)
        n = c.groupby("indicator")["n_pairs"].max()
        wide[("n_pairs", "", "")] = n
        print(wide.sort_values(("rho", "relative_score", "spearman"), ascending=False)
              .to_string())
        per_target = corr[(corr["model"] == model) & (corr["scope"] != "all")
                              & (corr["method"] == "spearman")
                              & (corr["measure"] == "relative_score")]
        if not per_target.empty:
            print("per target (spearman with relative score; n pairs each "
                  f"{int(per_target['n_pairs'].max())}): mean rho by indicator")
            print(per_target.groupby("indicator")["rho"].agg(["mean", "min", "max"]).round(3)
                  .sort_values("mean", ascending=False).to_string())
        r = rec[rec["model"] == model]
        if not r.empty:
            _, summary = ranking_tables(r)
            print("recommender, leave-one-task-out (probe = the recommender; the others are "
                  "baselines):")
            print(summary.drop(columns=["model"]).round(3)
                  .sort_values("regret").to_string(index=False))
        a = abl[abl["model"] == model]
        if not a.empty:
            print(f"neuron masking ({a['prompt_key'].nunique()} prompts, "
                  f"{a['split'].iloc[0]} split): mean accuracy drop")
            print(a.groupby("fraction")[["score", "top_masked_score", "random_masked_score",
                                         "top_drop", "random_drop"]].mean().round(3)
                  .to_string())


if __name__ == "__main__":
    main()
