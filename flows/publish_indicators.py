"""What the ``indicators`` stage publishes, computed from exactly the run's rows.

Per model (``<model>`` made an artifact key as in :mod:`flows.publish`):

* ``indicators-<model>``: markdown with one scatter per indicator inline (indicator value vs
  the relative score of the source prompt on the target, one point per (source, target)
  pair, same-type pairs in another colour), the PNG also in storage;
* ``correlations-<model>``: a table artifact, Spearman and Kendall of every indicator with
  relative_score and transfer_gain: the mean over targets of the per-target rho with its
  bootstrap interval over targets and within-target permutation p-value, beside the rho over
  all pairs pooled (descriptive, no p-value: see :func:`prompt_core.correlations.correlate`);
* ``recommender-<model>``: a table artifact, the recommender's and the baselines' top-1 and
  top-3 hit rates and mean regret, leave-one-task-out.

:func:`indicator_summary_lines` gives the run summary's section (correlations of ON and ES,
the recommender against its baselines, the masking ablation).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.publish_figures import akey
from tasks.storage import Storage

SCATTER_PANEL_IN = (2.6, 2.2)
SCATTER_COLUMNS = 4


def _f(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or pd.isna(v) else format(v, fmt)


def ranking_tables(recommendations: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per target, per model and method) evaluation of the run's ``recommendations`` rows:
    expected hit@1, hit@3 and regret under random tie-breaking
    (:func:`prompt_core.recommend.evaluate_rankings`)."""
    from prompt_core.recommend import evaluate_rankings, summarise_rankings

    r = recommendations
    scores = r[["model", "seed", "target_task", "method", "source_task", "score"]]
    truth = (r[["model", "seed", "target_task", "source_task", "true_score"]]
             .drop_duplicates(["model", "seed", "target_task", "source_task"]))
    per_target = evaluate_rankings(scores, truth)
    return per_target, summarise_rankings(per_target)


def correlation_summary(corr: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, indicator, measure, method) of the ``correlations`` rows: the
    scope ``mean_over_targets`` as ``mean_rho``, ``low``, ``high`` (bootstrap interval over
    targets), ``p_permutation`` (within-target permutation p-value) and ``n_targets``, beside
    scope ``all`` as ``pooled_rho`` (descriptive only) and ``n_pairs`` (the pairs pooled).
    Rows written before the mean scope existed give NaN mean columns."""
    from prompt_core.correlations import ALL, MEAN

    key = ["model", "indicator", "measure", "method"]
    mean = corr[corr["scope"] == MEAN][key + ["rho", "low", "high", "p_value", "n_targets"]]
    pooled = corr[corr["scope"] == ALL][key + ["rho", "n_pairs"]]
    out = mean.rename(columns={"rho": "mean_rho", "p_value": "p_permutation"}).merge(
        pooled.rename(columns={"rho": "pooled_rho"}), on=key, how="outer")
    for c in ("mean_rho", "low", "high", "p_permutation", "pooled_rho"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    for c in ("n_targets", "n_pairs"):  # counts: integers, <NA> where a row is missing
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out.sort_values(key, kind="stable").reset_index(drop=True)


def scatter_figure(pairs: pd.DataFrame, title: str):
    """One panel per indicator: value (x) vs relative score (y), same-type pairs orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(pairs["indicator"].unique(), key=lambda n: (not n.startswith("on"), n))
    cols = min(SCATTER_COLUMNS, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(SCATTER_PANEL_IN[0] * cols, SCATTER_PANEL_IN[1] * rows))
    for ax, name in zip(axes.flat, names, strict=False):
        d = pairs[pairs["indicator"] == name]
        for same, colour, label in ((False, "tab:blue", "different type"),
                                    (True, "tab:orange", "same type")):
            s = d[d["same_type"] == same]
            ax.scatter(s["value"], s["relative_score"], s=12, c=colour, label=label, alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("relative score", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def publish_indicators(storage: Storage, study_name: str, run_id: str,
                       rows: dict[str, pd.DataFrame], cells: dict[str, pd.DataFrame], *,
                       model_names: Iterable[str] | None = None) -> dict[str, str]:
    """Publish the stage from exactly the run's rows (``rows``: table -> the run's rows;
    ``cells``: model -> the run's cross_task rows). Returns ``{model: scatter PNG URI}``."""
    import matplotlib.pyplot as plt

    from flows.publish import artifact_records, model_keys, palette_png, png_data_uri
    from prompt_core.correlations import LEVEL, transfer_pairs

    ind, corr, rec = rows["indicators"], rows["correlations"], rows["recommendations"]
    if ind.empty:
        return {}
    keys = model_keys(ind["model"], model_names)
    per_model = ranking_tables(rec)[1] if not rec.empty else pd.DataFrame()
    uris = {}
    for model in sorted(ind["model"].unique()):
        pairs = transfer_pairs(cells[model], ind[ind["model"] == model])
        if not pairs.empty:
            fig = scatter_figure(pairs, f"{study_name} / {model}: indicator vs relative score")
            png = palette_png(fig, colors=64)
            plt.close(fig)
            uri = storage.write_bytes(f"artifacts/{run_id}/indicators_{model}.png", png)
            uris[model] = uri
            create_markdown_artifact(
                f"Study `{study_name}`, model `{model}`, run `{run_id}`: each point is one "
                f"(source prompt, target task) pair; x = the indicator between the source "
                f"prompt and the target's own prompt, y = the source prompt's accuracy on the "
                f"target / the own prompt's. Orange: same task type.\n\n"
                f"![indicators vs transfer, {model}]({png_data_uri(png)})\n\nPNG in storage: "
                f"`{uri}`\n", key=akey(f"indicators-{keys[model]}"),
                description=f"indicators vs relative score, study {study_name}, model {model}")
        c = correlation_summary(corr[corr["model"] == model])
        if not c.empty:
            create_table_artifact(
                artifact_records(c.sort_values(["measure", "method", "indicator"])[
                    ["indicator", "measure", "method", "mean_rho", "low", "high",
                     "p_permutation", "n_targets", "pooled_rho", "n_pairs"]]),
                key=akey(f"correlations-{keys[model]}"),
                description=f"rank correlation of each indicator with transfer: mean_rho = "
                            f"the mean over targets of each target's rho, low/high its "
                            f"{LEVEL:.0%} bootstrap interval over targets, p_permutation a "
                            f"two-sided test permuting the indicator within each target; "
                            f"pooled_rho over all n_pairs pairs is descriptive only (the "
                            f"pairs of one target are not independent, so no p-value); study "
                            f"{study_name}, model {model}")
        if not per_model.empty:
            create_table_artifact(
                artifact_records(per_model[per_model["model"] == model]),
                key=akey(f"recommender-{keys[model]}"),
                description=f"source recommender (probe) vs baselines, leave-one-task-out: "
                            f"expected top-1/top-3 hit rate of the true best source and mean "
                            f"regret; study {study_name}, model {model}")
    return uris


def indicator_summary_lines(rows: dict[str, pd.DataFrame], *,
                            model_names: Iterable[str] | None = None) -> list[str]:
    """The run summary's section on the indicators stage, from exactly the run's rows."""
    from flows.publish import model_keys
    from prompt_core.correlations import LEVEL, N_PERMUTATIONS

    ind = rows.get("indicators")
    if ind is None or ind.empty:
        return []
    corr, rec, abl = rows["correlations"], rows["recommendations"], rows["ablations"]
    keys = model_keys(ind["model"], model_names)
    lines = ["## Transferability indicators", "",
             "Spearman of each indicator (source prompt vs the target's own prompt) with the "
             "relative score: the mean over target tasks of each target's rho, with its "
             f"{LEVEL:.0%} bootstrap interval over targets and a two-sided permutation p-value "
             f"(indicator values shuffled within each target, {N_PERMUTATIONS} draws); "
             "beside it the rho over all (source, target) pairs pooled, a description only "
             "(the pairs of one target are not independent, so it gets no p-value); "
             "recommender: expected top-1 / top-3 hit rate of the true best source and mean "
             "regret (accuracy), leave-one-task-out", ""]
    per_model = ranking_tables(rec)[1] if not rec.empty else pd.DataFrame()
    for model in sorted(ind["model"].unique()):
        c = correlation_summary(corr[corr["model"] == model])
        c = c[(c["measure"] == "relative_score") & (c["method"] == "spearman")]
        if not c.empty:
            c = c.sort_values(["mean_rho", "pooled_rho"], ascending=False, na_position="last")
            lines.append(f"- `{model}` Spearman with relative score, mean over targets "
                         f"[{LEVEL:.0%} interval] (permutation p; pooled rho, descriptive): "
                         + ", ".join(
                             f"{r.indicator} {_f(r.mean_rho, '+.3f')} [{_f(r.low, '+.3f')}, "
                             f"{_f(r.high, '+.3f')}] (p {_f(r.p_permutation, '.3g')}, "
                             f"{_f(r.n_targets, '.0f')} targets; pooled "
                             f"{_f(r.pooled_rho, '+.3f')}, n {_f(r.n_pairs, '.0f')})"
                             for r in c.itertuples(index=False)))
        if not per_model.empty:
            for r in per_model[per_model["model"] == model].itertuples(index=False):
                lines.append(f"- `{model}` {r.method}: top-1 {_f(r.hit_at_1, '.2f')}, top-3 "
                             f"{_f(r.hit_at_3, '.2f')}, regret {_f(r.regret)} "
                             f"({r.n_targets} targets)")
        a = abl[abl["model"] == model] if not abl.empty else abl
        if not a.empty:
            g = a.groupby("fraction")[["top_drop", "random_drop"]].mean()
            lines.append(f"- `{model}` neuron masking (mean accuracy drop over "
                         f"{a['prompt_key'].nunique()} prompts): " + ", ".join(
                             f"k={f:g}: top {_f(r.top_drop, '+.3f')} vs random "
                             f"{_f(r.random_drop, '+.3f')}" for f, r in g.iterrows()))
        lines.append(f"- scatter: artifact `{akey(f'indicators-{keys[model]}')}`; tables: "
                     f"`{akey(f'correlations-{keys[model]}')}`, "
                     f"`{akey(f'recommender-{keys[model]}')}`")
    return lines + [""]
