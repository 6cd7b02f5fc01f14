"""What the cross_model and tpt stages publish in the Prefect UI, from exactly one run's rows.

Per pair of models: ``cross-model-<src>-to-<tgt>`` (markdown, the relative-accuracy heatmap
inline) and one table artifact ``cross-model-summary``; per TPT model: ``tpt-curves-<model>``
(markdown, the dev-accuracy curves inline) and the table ``tpt-<model>``. The PNGs are also
written to ``<root>/artifacts/<run_id>/`` like the cross-task heatmaps (:mod:`flows.publish`);
:func:`stage_summary_markdown` gives their lines of the run's summary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.publish_figures import (
    HEATMAP_DPI,
    TITLE_FONTSIZE,
    TITLE_LINE_IN,
    akey,
    artifact_records,
    fmt,
    heatmap_png,
    model_keys,
    palette_png,
    png_data_uri,
    wrap_title,
)
from tasks.storage import Storage

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the CLI
    from matplotlib.figure import Figure

CROSS_MODEL_SUMMARY_KEY = "cross-model-summary"
OBJECTIVE_ORDER = ("distance", "task", "none")
CROSS_MODEL_COLOUR = ("colour = relative score: the source model's prompt, carried into the "
                      "target model, scored on the target task, divided by the target model's "
                      "own prompt's accuracy on that task (white = 1.0, as good as the own "
                      "prompt; blue above, red below; grey: no value); rows: objective "
                      "(distance / task: projected by a projector trained that way; none: the "
                      "source prompt as is) and source task, columns: target task, seeds averaged")
TPT_PANEL_IN = (2.8, 2.0)  # one target task's panel, inches
TPT_COLUMNS = 3
TPT_PNG_COLOURS = 64  # lines on white: 10 targets x 3 sources x 2 seeds, a PNG of ~45 KB


def cross_model_matrix(rows: pd.DataFrame, source_model: str, target_model: str,
                       value: str = "relative_score") -> pd.DataFrame:
    """One model pair's accuracy cells as a matrix: rows ``<objective>: <source_task>``
    (objectives distance, task, none, then any other; tasks sorted), columns target task,
    seeds averaged."""
    d = rows[(rows["metric"] == "accuracy") & (rows["source_model"] == source_model)
             & (rows["target_model"] == target_model)].copy()
    d[value] = pd.to_numeric(d[value], errors="coerce")
    rank = {o: i for i, o in enumerate(OBJECTIVE_ORDER)}
    order = sorted(d[["objective", "source_task"]].drop_duplicates().itertuples(index=False),
                   key=lambda r: (rank.get(r.objective, len(rank)), r.objective, r.source_task))
    d["row"] = d["objective"] + ": " + d["source_task"]
    m = d.groupby(["row", "target_task"])[value].mean().unstack("target_task")
    return m.reindex(index=[f"{o}: {t}" for o, t in order], columns=sorted(m.columns))


def _training_tasks(pair_rows: pd.DataFrame) -> list[str]:
    """Tasks of a pair's projected cells that no held-out cell involves: the projectors'
    training tasks as far as these rows show."""
    d = pair_rows[pair_rows["objective"] != "none"]
    held = d[d["held_out"].astype(bool)]
    seen = set(held["source_task"]) | set(held["target_task"])
    return sorted((set(d["source_task"]) | set(d["target_task"])) - seen)


def publish_cross_model(storage: Storage, study_name: str, run_id: str, rows: pd.DataFrame,
                        *, model_names: Iterable[str] | None = None) -> dict[str, str]:
    """Publish the cross_model stage from exactly ``rows`` (one run's ``cross_model`` rows):
    per (source, target) model pair the relative-accuracy heatmap inline in the markdown
    artifact ``cross-model-<src>-to-<tgt>`` (PNG also in storage), and the table artifact
    ``cross-model-summary`` (:func:`cross_model_summary`). ``model_names``: the study's models,
    so that keys match :func:`publish_run`'s. Returns ``{"<src>-><tgt>": PNG URI}``."""
    from prompt_core.stage_analysis import cross_model_summary

    if rows.empty:
        return {}
    summary = cross_model_summary(rows)  # raises on mixed configurations
    acc = rows[rows["metric"] == "accuracy"]
    if acc.empty:
        return {}
    keys = model_keys([*acc["source_model"], *acc["target_model"]], model_names)
    uris: dict[str, str] = {}
    for src, tgt in sorted(set(zip(acc["source_model"], acc["target_model"], strict=True))):
        pair = acc[(acc["source_model"] == src) & (acc["target_model"] == tgt)]
        rel = cross_model_matrix(acc, src, tgt)
        key = f"cross-model-{keys[src]}-to-{keys[tgt]}"
        png = heatmap_png(rel, f"{study_name} / {src} -> {tgt}: relative accuracy",
                           ylabel="objective: source task",
                           cbar_label=f"relative score (1 = {tgt}'s own prompt)")
        uri = storage.write_bytes(f"artifacts/{run_id}/cross_model_{src}_to_{tgt}.png", png)
        uris[f"{src}->{tgt}"] = uri
        train = _training_tasks(pair)
        held = (f" Projector training tasks (their cells are not held out): "
                f"{', '.join(train)}." if train else "")
        caption = (f"Study `{study_name}`, run `{run_id}`, prompts of `{src}` in `{tgt}`: "
                   f"{CROSS_MODEL_COLOUR}.{held}")
        create_markdown_artifact(
            f"{caption}\n\n![relative accuracy heatmap, {src} -> {tgt}]({png_data_uri(png)})\n\n"
            f"PNG in storage: `{uri}`\n",
            key=akey(key), description=f"cross-model relative accuracy, study {study_name}, "
                                 f"{src} -> {tgt}")
    create_table_artifact(
        artifact_records(summary), key=akey(CROSS_MODEL_SUMMARY_KEY),
        description=f"cross-model transfer per model pair and objective: mean relative "
                    f"accuracy of held-out diagonal cells (diag_rel, n_diag) and of all "
                    f"held-out cells; study {study_name}")
    return uris


def _source_label(row) -> str:
    """``<source_model>/<source_task>`` for a prompt of another model, else the task."""
    if row["source_model"] != row["model"]:
        return f"{row['source_model']}/{row['source_task']}"
    return str(row["source_task"])


def indexed_curves(curves: pd.DataFrame, keys: set[str]) -> dict[str, pd.DataFrame]:
    """The dev-evaluated points of each prompt in ``keys``, sorted by step; ValueError when a
    prompt has no curve or a (prompt, step) repeats."""
    d = curves[curves["prompt_key"].isin(keys) & curves["dev_accuracy"].notna()]
    dup = d[d.duplicated(["prompt_key", "step"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise ValueError(f"curve rows repeat prompt {r['prompt_key']} step {r['step']}")
    by_key = {k: g.sort_values("step") for k, g in d.groupby("prompt_key")}
    missing = sorted(keys - set(by_key))
    if missing:
        raise ValueError(f"{len(missing)} prompt(s) have no dev curve, e.g. {missing[:3]}")
    return by_key


def tpt_figure(rows: pd.DataFrame, curves: dict[str, pd.DataFrame], title: str) -> Figure:
    """One model's TPT curves: a panel per target task with dev accuracy vs step of the
    random-init baseline (black) and of each source (one colour per source, every seed), and
    the target score (dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    targets = sorted(rows["target_task"].unique())
    n_cols = min(TPT_COLUMNS, len(targets))
    n_rows = math.ceil(len(targets) / n_cols)
    width_in = max(4.0, TPT_PANEL_IN[0] * n_cols)
    chars = int(width_in * 72 / (0.55 * TITLE_FONTSIZE))
    wrapped = wrap_title(title, chars)
    labels = sorted({_source_label(r) for _, r in rows.iterrows()})
    n_entries = 1 + len(labels) + rows["fraction"].nunique()
    legend_cols = min(n_entries, 2 * n_cols)
    legend_in = 0.15 + 0.16 * math.ceil(n_entries / legend_cols)  # 7-point entries
    fig = Figure(figsize=(width_in, TPT_PANEL_IN[1] * n_rows + legend_in
                          + (wrapped.count("\n") + 1) * TITLE_LINE_IN),
                 dpi=HEATMAP_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True)
    colour = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # one per source, all panels
    for i, target in enumerate(targets):
        ax = axes[i // n_cols][i % n_cols]
        t = rows[rows["target_task"] == target].copy()
        t["label"] = [_source_label(r) for _, r in t.iterrows()]
        for key in sorted(t["baseline_prompt_key"].unique()):
            c = curves[key]
            ax.plot(c["step"], c["dev_accuracy"], color="k", lw=1.4, label="random init")
        for label, g in t.groupby("label", sort=True):
            for key in g.sort_values("seed")["tpt_prompt_key"]:
                c = curves[key]
                ax.plot(c["step"], c["dev_accuracy"], color=colour[label], lw=1.1, label=label)
        for score, frac in sorted(set(zip(t["target_score"], t["fraction"], strict=True))):
            ax.axhline(score, color="0.4", ls="--", lw=0.9,
                       label=f"target ({frac:g} x random-init best)")
        ax.set_title(str(target), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, lw=0.5)
        if i % n_cols == 0:
            ax.set_ylabel("dev accuracy", fontsize=8)
        if i // n_cols == n_rows - 1 or i + n_cols >= len(targets):
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelbottom=True)
    for i in range(len(targets), n_rows * n_cols):
        axes[i // n_cols][i % n_cols].set_visible(False)
    handles: dict[str, object] = {}  # one legend for all panels: a source's colour is fixed
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    order = (["random init"] + [lab for lab in labels if lab in handles]
             + sorted(lab for lab in handles if lab.startswith("target (")))
    fig.legend([handles[lab] for lab in order], order, loc="outside lower center",
               ncol=legend_cols, fontsize=7, frameon=False)
    fig.suptitle(wrapped, fontsize=TITLE_FONTSIZE)
    return fig


TPT_TABLE_COLUMNS = [
    "target_task", "source", "same_type", "seed", "score_at_step", "score_at_k",
    "baseline_score_at_k", "init_score", "baseline_init_score", "best_score", "baseline_best",
    "target_score", "steps_to_target", "baseline_steps_to_target", "speedup_steps",
    "seconds_to_target", "baseline_seconds_to_target", "speedup_seconds"]


def tpt_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One model's TPT rows as the ``tpt-<model>`` table (``source`` labelled as in the
    figure), sorted by target, source and seed."""
    d = rows.copy()
    d["source"] = [_source_label(r) for _, r in d.iterrows()]
    return d.sort_values(["target_task", "source", "seed"])[TPT_TABLE_COLUMNS].reset_index(
        drop=True)


def publish_tpt(storage: Storage, study_name: str, run_id: str, rows: pd.DataFrame,
                curves: pd.DataFrame, *, model_names: Iterable[str] | None = None
                ) -> dict[str, str]:
    """Publish the tpt stage from exactly ``rows`` (one run's ``tpt`` rows) and ``curves``
    (``training_curves`` rows covering their TPT and baseline prompts; training-loss-only
    rows are skipped): per model the curves inline in the markdown artifact
    ``tpt-curves-<model>`` (PNG also in storage) and the table artifact ``tpt-<model>``
    (:func:`tpt_table`, rounded). Returns ``{model: PNG URI}``."""
    from prompt_core.stage_analysis import tpt_summary

    if rows.empty:
        return {}
    tpt_summary(rows)  # raises on mixed configurations
    keys = model_keys(rows["model"], model_names)
    uris: dict[str, str] = {}
    for model in sorted(rows["model"].unique()):
        r = rows[rows["model"] == model]
        by_key = indexed_curves(curves, set(r["tpt_prompt_key"]) | set(r["baseline_prompt_key"]))
        fig = tpt_figure(r, by_key, f"{study_name} / {model}: transferable prompt tuning, "
                                    f"dev accuracy vs step")
        png = palette_png(fig, colors=TPT_PNG_COLOURS)
        uri = storage.write_bytes(f"artifacts/{run_id}/tpt_curves_{model}.png", png)
        uris[model] = uri
        fractions = ", ".join(f"{f:g}" for f in sorted(r["fraction"].unique()))
        caption = (f"Study `{study_name}`, model `{model}`, run `{run_id}`: dev accuracy vs "
                   f"training step, one panel per target task; black: the random-init prompt "
                   f"(the baseline), colours: prompts initialised from a source prompt "
                   f"(labelled by source task, or `<model>/<task>` when projected from "
                   f"another model), every seed; dashed: the target score, {fractions} x the "
                   f"baseline's best dev accuracy. Step 0 is the init.")
        create_markdown_artifact(
            f"{caption}\n\n![TPT curves, {model}]({png_data_uri(png)})\n\nPNG in storage: "
            f"`{uri}`\n",
            key=akey(f"tpt-curves-{keys[model]}"),
            description=f"TPT dev-accuracy curves, study {study_name}, model {model}")
        create_table_artifact(
            artifact_records(tpt_table(r)), key=akey(f"tpt-{keys[model]}"),
            description=f"TPT vs random init per target, source and seed: score after "
                        f"score_at_step steps, best score, steps/seconds to the target score "
                        f"and speed-up (baseline / TPT; empty: never reached); study "
                        f"{study_name}, model {model}")
    return uris




def stage_summary_markdown(cross_model: pd.DataFrame | None, tpt: pd.DataFrame | None, *,
                           model_names: Iterable[str] | None = None) -> str:
    """Markdown lines on the cross_model and tpt stages for the run's summary artifact,
    computed only from the given rows (None or empty: that stage's section is left out)."""
    from prompt_core.stage_analysis import cross_model_summary, tpt_summary

    lines: list[str] = []
    if cross_model is not None and not cross_model.empty:
        s = cross_model_summary(cross_model)
        acc = cross_model[cross_model["metric"] == "accuracy"]
        keys = model_keys([*acc["source_model"], *acc["target_model"]], model_names)
        lines += ["## Cross-model transfer", "",
                  "mean relative accuracy (the target model's own prompt = 1) of held-out "
                  "tasks: diagonal (a task's projected prompt on that task) and all held-out "
                  "cells", ""]
        for r in s.itertuples(index=False):
            lines.append(f"- `{r.source_model}` -> `{r.target_model}`, {r.objective}: "
                         f"diagonal {fmt(r.diag_rel)} (n {r.n_diag}, accuracy "
                         f"{fmt(r.diag_score)}), all held-out {fmt(r.held_out_rel)} "
                         f"(n {r.n_held_out})")
        pairs = sorted(set(zip(acc["source_model"], acc["target_model"], strict=True)))
        lines += ["- heatmaps: artifacts " + ", ".join(
                      f"`{akey(f'cross-model-{keys[a]}-to-{keys[b]}')}`" for a, b in pairs),
                  f"- table: artifact `{akey(CROSS_MODEL_SUMMARY_KEY)}`", ""]
    if tpt is not None and not tpt.empty:
        s = tpt_summary(tpt)
        keys = model_keys(tpt["model"], model_names)
        k = ", ".join(str(int(v)) for v in sorted(tpt["score_at_step"].unique()))
        lines += ["## Transferable prompt tuning", "",
                  f"TPT vs random init with the same budget; speed-up = baseline's steps to "
                  f"the target score / TPT's, over the prompts that reached it; gains in dev "
                  f"accuracy (best, and after {k} steps)", ""]
        kinds = {"task": "same-model", "model": "projected"}
        for r in s.itertuples(index=False):
            lines.append(f"- `{r.model}`, {kinds.get(r.source_kind, r.source_kind)} sources, "
                         f"{'same' if r.same_type else 'different'}-type targets: reached "
                         f"{r.n_reached}/{r.n}, speed-up {fmt(r.mean_speedup_steps, '.2f')}x "
                         f"steps ({fmt(r.mean_speedup_seconds, '.2f')}x seconds); best "
                         f"{fmt(r.mean_best_gain, '+.3f')}, after k steps "
                         f"{fmt(r.mean_gain_at_k, '+.3f')}")
        models = sorted(tpt["model"].unique())
        curves = ", ".join(f"`{akey(f'tpt-curves-{keys[m]}')}`" for m in models)
        tables = ", ".join(f"`{akey(f'tpt-{keys[m]}')}`" for m in models)
        lines += [f"- curves: artifacts {curves}", f"- tables: artifacts {tables}", ""]
    return "\n".join(lines)
