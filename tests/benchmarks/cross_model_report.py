"""Report the cross_model and tpt stages of a study's latest completed run, from its tables.

    python tests/benchmarks/cross_model_report.py --study shared-cross-model [--storage ROOT]

Prints, per model pair and held-out target task, the zero-shot relative accuracy of the
target task's own source prompt carried over by each projector objective (and unprojected,
where it exists), with the 95% bootstrap interval of the score, beside the target model's own
prompt and no prompt on that task (from ``current_cross_task``, when the study ran it); then,
per TPT row, the speed-up to the target fraction and the best dev accuracy against random
init, and the means for same-type and different-type sources. Every figure is computed from
the rows of the ``current_*`` views (the latest completed run), nothing else.
"""

from __future__ import annotations

import argparse

from tasks.storage import open_storage
from tasks.tables import duckdb_connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--storage", default=None, help="storage root (default: the default root)")
    args = ap.parse_args()
    con = duckdb_connect(open_storage(args.storage))
    xm = con.execute("""
        select source_model, target_model, objective, source_task, target_task,
               avg(score) as score, avg(score_low) as low, avg(score_high) as high,
               avg(relative_score) as rel, avg(own_score) as own
        from current_cross_model
        where study = ? and metric = 'accuracy' and held_out
        group by all order by source_model, target_model, target_task, objective, source_task
    """, [args.study]).df()
    base = con.execute("""
        select model, target_task, source_kind, avg(score) as score,
               avg(score_low) as low, avg(score_high) as high
        from current_cross_task
        where study = ? and metric = 'accuracy'
          and (source_kind = 'none' or (source_kind = 'prompt' and source_task = target_task))
        group by all
    """, [args.study]).df()
    ref = {(r.model, r.target_task, r.source_kind): r for r in base.itertuples()}

    def baseline(model: str, task: str, kind: str, label: str) -> str:
        r = ref.get((model, task, kind))
        return f"{label} {r.score:.3f} [{r.low:.3f}, {r.high:.3f}]; " if r else ""

    if len(xm):
        diag = xm[xm["source_task"] == xm["target_task"]]
        print("Cross-model, held-out targets: the target task's own prompt of the source model, "
              "carried over (accuracy [95% CI], relative to the target model's own prompt)")
        for (src, tgt), g in diag.groupby(["source_model", "target_model"], sort=False):
            print(f"\n{src} -> {tgt}")
            wide = g.pivot(index="target_task", columns="objective", values="rel")
            for task, row in g.groupby("target_task"):
                cells = ", ".join(f"{r.objective} {r.score:.3f} [{r.low:.3f}, {r.high:.3f}] "
                                  f"rel {r.rel:.3f}" for r in row.itertuples())
                print(f"  {task:22s} " + (baseline(tgt, task, "none", "no prompt")
                                          + baseline(tgt, task, "prompt", "own prompt")
                                          or f"own {row['own'].iloc[0]:.3f}; ") + cells)
            print("  mean relative: " + ", ".join(f"{c} {wide[c].mean():.3f}"
                                                  for c in wide.columns))
        allx = xm.groupby(["source_model", "target_model", "objective"])["rel"].mean()
        print("\nmean relative accuracy over all held-out (source, target) pairs:")
        print(allx.round(3).to_string())
    tpt = con.execute("""
        select model, target_task, source_kind, source_model, source_task, same_type,
               speedup_steps, steps_to_target, baseline_steps_to_target, score_at_k,
               baseline_score_at_k, score_at_step, best_score, baseline_best
        from current_tpt where study = ? order by model, target_task, source_task
    """, [args.study]).df()
    if len(tpt):
        print("\nTPT (dev accuracy): source -> target: steps to 90% of random init's best "
              "(random init's), speed-up, score at k vs random, best vs random")
        for r in tpt.itertuples():
            print(f"  {r.model}: {r.source_model}/{r.source_task} -> {r.target_task} "
                  f"({'same' if r.same_type else 'different'} type): {r.steps_to_target} "
                  f"({r.baseline_steps_to_target}), x{r.speedup_steps}, "
                  f"at {r.score_at_step}: {r.score_at_k:.3f} vs {r.baseline_score_at_k:.3f}, "
                  f"best {r.best_score:.3f} vs {r.baseline_best:.3f}")
        g = tpt.assign(gain=tpt["best_score"] - tpt["baseline_best"],
                       gain_k=tpt["score_at_k"] - tpt["baseline_score_at_k"]
                       ).groupby("same_type")
        print("\nby source type (same_type): mean speed-up (reaching), mean best gain, mean gain "
              "at k, n")
        print(g.agg(speedup=("speedup_steps", "mean"), reached=("speedup_steps", "count"),
                    best_gain=("gain", "mean"), gain_at_k=("gain_k", "mean"),
                    n=("gain", "size")).round(3).to_string())


if __name__ == "__main__":
    main()
