"""Print a study's indicator figures from its tables (the closing-note numbers).

    .venv/bin/python tests/benchmarks/indicator_report.py [--study shared-tasks] [--storage URI]

Per model, from the ``current_*`` views (exactly the rows of the study's latest completed run):
Spearman and Kendall of every indicator with the relative score and the transfer gain, as the
mean over target tasks of each target's rho with its 95% bootstrap interval over targets and
its within-target permutation p-value (the test), beside the rho over all (source, target)
pairs pooled (descriptive only: no p-value, the pairs of one target are not independent) and
the per-target rhos' range; the recommender (``probe``)
against its baselines, leave-one-task-out (expected top-1 / top-3 hit rate of the true best
source and mean regret in accuracy); the neuron-masking ablation (mean accuracy drop, top-k%
vs random k%).
"""

from __future__ import annotations

import argparse

import pandas as pd

from flows.publish_indicators import correlation_summary, ranking_tables
from prompt_core.correlations import RESERVED_SCOPES
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
        c = correlation_summary(corr[corr["model"] == model])
        for measure, m in c.groupby("measure", sort=False):
            print(f"== study {args.study}, model {model}: indicators vs {measure}; mean_rho = "
                  "mean over targets of each target's rho, [low, high] its 95% bootstrap "
                  "interval over targets, p_perm = within-target permutation p-value; "
                  "pooled_rho over all pairs is descriptive only (no p-value)")
            figures = ["mean_rho", "low", "high", "p_permutation", "pooled_rho"]
            wide = m.pivot_table(index="indicator", columns="method", dropna=False,
                                 values=figures)[figures].round(3)
            wide[("n_targets", "")] = m.groupby("indicator")["n_targets"].max()
            wide[("n_pairs", "")] = m.groupby("indicator")["n_pairs"].max()
            print(wide.sort_values(("mean_rho", "spearman"), ascending=False).to_string())
        per_target = corr[(corr["model"] == model) & ~corr["scope"].isin(RESERVED_SCOPES)
                          & (corr["method"] == "spearman")
                          & (corr["measure"] == "relative_score")]
        if not per_target.empty:
            print("per target (spearman with relative score; n pairs each "
                  f"{int(per_target['n_pairs'].max())}): rho by indicator over the targets")
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
