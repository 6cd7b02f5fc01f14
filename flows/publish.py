"""What a run publishes in the Prefect UI, all computed from exactly the cells of that run.

Per model:

* ``heatmap-<model>``: a markdown artifact showing the relative-score heatmap inline (the PNG
  embedded as a ``data:`` URI, which Prefect's UI renders; a ``file://`` or ``s3://`` link
  does not open from the UI), with a one-line caption. The PNG is also written to storage,
  and a link artifact ``heatmap-file-<model>`` is added only when that URI opens in a browser
  (http or https).
* ``cross-task-<model>``: a table artifact of the accuracy matrix (seed-averaged scores).
* ``relative-score-<model>``: a table artifact of the relative scores (score / the target's
  own-prompt score).

The later stages, from exactly that run's rows: per (source, target) model pair
``cross-model-<src>-to-<tgt>`` (the relative-accuracy heatmap inline) and one table
``cross-model-summary``; per TPT model ``tpt-curves-<model>`` (dev accuracy vs step inline)
and the table ``tpt-<model>``; their PNGs also go to storage beside the heatmaps, and
:func:`stage_summary_markdown` gives their lines of the summary.

And one markdown summary of the run, ``transfer-matrix-summary``. ``<model>`` in a key is the
model name made a valid artifact key (lowercase letters, digits and dashes; see
:func:`artifact_keys`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from prompt_core.analysis import (
    MissingPredictionsError,
    matrix,
    over_seeds,
    same_minus_diff_interval,
    transfer_summary,
)
from prompt_core.config import StudyConfig
from tasks.storage import Storage
from tasks.tables import read_table

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the CLI
    from matplotlib.figure import Figure

    from flows.stage_api import StudyResult

HEATMAP_DPI = 100  # a 10 x 12 matrix: a PNG of about 32 KB, 43 KB as a data URI
TITLE_FONTSIZE = 11.0
_TITLE_LINE_IN = TITLE_FONTSIZE * 1.35 / 72  # height of one title line, inches
_TABLE_DIGITS = 4  # values in the table artifacts are rounded to this many decimals
SUMMARY_KEY = "transfer-matrix-summary"
COLOUR_MEANING = ("colour = relative score: the source prompt's accuracy on the target divided "
                  "by the target's own prompt's (1.0 = as good as the own prompt; brighter is "
                  "higher); rows: source prompt (random: a random prompt, none: no prompt), "
                  "columns: target task, seeds averaged")


def artifact_keys(names: Iterable[str]) -> dict[str, str]:
    """A Prefect artifact key part per model name: lowercase, any character outside
    ``[a-z0-9-]`` turned into ``-``. Stable across runs: only names that would share a key
    within ``names`` (``MiniLM`` and ``minilm``, ``a_b`` and ``a.b``) get a short hash of the
    name appended."""
    names = list(dict.fromkeys(names))
    slug = {n: re.sub(r"[^a-z0-9-]", "-", n.lower()) for n in names}
    seen: dict[str, int] = {}
    for s in slug.values():
        seen[s] = seen.get(s, 0) + 1
    return {n: s if seen[s] == 1 else f"{s}-{hashlib.sha256(n.encode()).hexdigest()[:6]}"
            for n, s in slug.items()}


def _wrap(title: str, width: int) -> str:
    """``title`` wrapped at ``width`` characters (long words and existing lines kept apart)."""
    return "\n".join(textwrap.fill(line, max(width, 8), break_long_words=True)
                     for line in title.splitlines() or [""])


def heatmap_figure(mat: pd.DataFrame, title: str, ylabel: str = "source prompt",
                   cbar_label: str = "relative score (1 = own prompt)") -> Figure:
    """The heatmap of ``mat`` (rows: source prompt, columns: target task) as a laid-out
    figure whose title lies wholly inside it, however long the title.

    The title is a figure title wrapped to the figure's width (re-wrapped narrower if the
    rendered text is still too wide) and the figure grows by its extra lines; constrained
    layout keeps tick labels, colour bar and title from overlapping. The figure has been drawn
    once (``fig.canvas.get_renderer()`` gives its renderer).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = mat.shape
    width_in = max(4.0, 1.8 + 0.7 * n_cols)
    base_h_in = 1.4 + 0.5 * n_rows
    fig = Figure(figsize=(width_in, base_h_in + _TITLE_LINE_IN), dpi=HEATMAP_DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = mat.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in mat.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(i) for i in mat.index])
    ax.set_xlabel("target task")
    ax.set_ylabel(ylabel)
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if v > 0.6 * vmax else "w")  # readable on yellow and blue
    fig.colorbar(im, ax=ax, label=cbar_label)

    # about 0.55 em per character; then measured, and re-wrapped narrower while too wide
    chars = int(width_in * 72 / (0.55 * TITLE_FONTSIZE))
    text = fig.suptitle(_wrap(title, chars), fontsize=TITLE_FONTSIZE)
    for _ in range(8):
        n_lines = text.get_text().count("\n") + 1
        fig.set_size_inches(width_in, base_h_in + n_lines * _TITLE_LINE_IN)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        too_wide = text.get_window_extent(renderer).width / (0.96 * fig.bbox.width)
        if too_wide <= 1.0:
            break
        chars = max(8, min(chars - 1, int(chars / too_wide)))
        text.set_text(_wrap(title, chars))
    return fig


def _heatmap_png(mat: pd.DataFrame, title: str, **labels: str) -> bytes:
    """The heatmap of :func:`heatmap_figure` as PNG bytes (palette PNG: small enough to embed
    in a Prefect artifact); ``labels``: its ``ylabel`` / ``cbar_label``."""
    from PIL import Image

    fig = heatmap_figure(mat, title, **labels)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=HEATMAP_DPI, bbox_inches="tight", pad_inches=0.1)
    buf.seek(0)
    with Image.open(buf) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _openable_url(uri: str) -> str | None:
    """``uri`` if a browser opens it from the Prefect UI (http/https), else None: ``file://``
    links are blocked by browsers and ``s3://`` has no handler."""
    return uri if re.match(r"https?://", uri, re.IGNORECASE) else None


def _table_rows(mat: pd.DataFrame) -> list[dict]:
    """A matrix as table-artifact rows: ``source prompt`` then one column per target task
    (task names never contain a space, so the first column cannot clash with one)."""
    return [{"source prompt": str(idx),
             **{str(c): (None if v != v else round(float(v), _TABLE_DIGITS))
                for c, v in row.items()}}
            for idx, row in mat.iterrows()]


def run_cells(storage: Storage, study: str, model: str, cell_keys: list[str]) -> pd.DataFrame:
    """Exactly the ``cross_task`` rows of ``cell_keys`` (one per key and metric, the newest if
    a cell was ever written twice), as a DataFrame; an error if any is missing."""
    df = read_table(storage, "cross_task", filters={"study": study, "model": model}).to_pandas()
    df = df[df["cell_key"].isin(set(cell_keys))]
    df = (df.sort_values("created_at").drop_duplicates(["cell_key", "metric"], keep="last")
          .reset_index(drop=True))
    missing = set(cell_keys) - set(df["cell_key"])
    if missing:
        raise RuntimeError(f"{len(missing)} cell(s) of this run are not in cross_task "
                           f"(study {study}, model {model}), e.g. {sorted(missing)[:3]}")
    return df


def run_predictions(storage: Storage, study: str, model: str, cell_keys: list[str]
                    ) -> pd.DataFrame:
    """The ``cross_task_predictions`` rows of ``cell_keys`` (the newest if a cell's were ever
    written twice); cells without one are simply absent."""
    cols = ["cell_key", "predicted", "gold", "n_labels", "created_at"]
    df = read_table(storage, "cross_task_predictions", filters={"study": study, "model": model},
                    columns=cols).to_pandas()
    df = df[df["cell_key"].isin(set(cell_keys))]
    return (df.sort_values("created_at", kind="stable")
            .drop_duplicates("cell_key", keep="last").reset_index(drop=True))


def _interval_text(iv: dict) -> str:
    """A :func:`~prompt_core.analysis.same_minus_diff_interval` result as text: the point, its
    interval and, for transfer_gain always (for relative_score when there are any), how many
    resamples were undefined and left out of the interval."""
    if iv["point"] != iv["point"]:
        return f"{_f(iv['point'])} (no interval: no same-type or no different-type pair)"
    undefined = (f"{iv['n_undefined']} of {iv['n_boot']} resamples undefined"
                 + (" (no same-type or no different-type cell, or a cell's own prompt not "
                    "above no prompt on the resample)" if iv["value"] == "transfer_gain"
                    else " (no same-type or no different-type cell)"))
    if not iv["n_valid"]:
        return f"{iv['point']:.3f} (no interval: {undefined})"
    shown = iv["value"] == "transfer_gain" or iv["n_undefined"]
    return (f"{iv['point']:.3f} (95% bootstrap interval [{iv['low']:.3f}, {iv['high']:.3f}], "
            f"{iv['n_boot']} resamples of target tasks and their test examples"
            + (f"; {undefined}" if shown else "") + ")")


def transfer_lines(df: pd.DataFrame, predictions: pd.DataFrame | None) -> list[str]:
    """Summary lines on same-type vs different-type transfer of one model's cells: the
    difference of mean relative scores with its hierarchical bootstrap interval
    (:func:`~prompt_core.analysis.same_minus_diff_interval`; none when the cells'
    predictions are not stored), mean transfer gain same vs different type (and their
    difference's interval, with how many resamples were undefined), and, with more than one
    seed, mean and spread over seeds."""
    s = transfer_summary(df)
    rel = gain = None
    if predictions is not None:
        try:
            rel = same_minus_diff_interval(df, predictions)
            gain = same_minus_diff_interval(df, predictions, value="transfer_gain")
        except MissingPredictionsError:
            rel = gain = None
    lines = ["- same-type minus different-type mean relative score: "
             + (_interval_text(rel) if rel is not None else
                f"{_f(s['same_minus_diff'])} (no interval: per-example predictions not "
                f"stored)"),
             f"- mean transfer gain: same-type pairs {_f(s['same_type_gain'])}, "
             f"different-type {_f(s['diff_type_gain'])}"
             + (f"; difference {_interval_text(gain)}" if gain is not None
                and gain["point"] == gain["point"] else "")]
    if s["n_seeds"] > 1:
        o = over_seeds(df)
        figs = [("same-type rel", "same_type_rel"), ("different-type rel", "diff_type_rel"),
                ("difference", "same_minus_diff"), ("own beats none", "own_beats_none")]
        lines.append(f"- over {s['n_seeds']} seeds (mean ± std [min, max]): " + "; ".join(
            f"{label} {_f(o.loc[k, 'mean'])} ± {_f(o.loc[k, 'std'])} "
            f"[{_f(o.loc[k, 'min'])}, {_f(o.loc[k, 'max'])}]" for label, k in figs))
    return lines


def publish_run(study: StudyConfig, storage: Storage, run_id: str, result: StudyResult,
                cells_by_model: dict[str, list[str]], stage_runs: list | None = None) -> None:
    """Publish the run's artifacts (see the module docstring), computed from exactly the
    cells this run covered (not every row of the partition: older configurations stay out);
    fills ``result.summaries`` and ``result.heatmaps`` (model -> PNG URI in storage).

    ``stage_runs``: (stage, the flow's state) of each plug-in stage the run ran
    (:mod:`flows.stage_api`): each publishes its own artifacts from this run's rows
    (:meth:`~flows.stage_api.Stage.publish`) and adds its section to the summary."""
    sections: list[str] = []
    for stage, state in stage_runs or []:
        lines, uris = stage.publish(state, state.results[stage.name])
        result.heatmaps.update(uris)
        sections += lines
    keys = artifact_keys(m.name for m in study.models)
    lines = [f"# Transfer matrix: study `{study.name}`", "",
             f"run `{run_id}`, storage `{storage.root}`", "",
             f"- prompts trained {result.n_prompts_trained}, reused {result.n_prompts_cached}",
             f"- matrix cells evaluated {result.n_cells_evaluated}, reused "
             f"{result.n_cells_cached}", ""]
    for m in study.models:
        cells = cells_by_model.get(m.name, [])
        if not cells:
            continue
        key = keys[m.name]
        df = run_cells(storage, study.name, m.name, cells)
        summary = transfer_summary(df)
        result.summaries[m.name] = summary
        rel = matrix(df, "accuracy", "relative_score")
        png = _heatmap_png(rel, f"{study.name} / {m.name}: relative accuracy")
        uri = storage.write_bytes(f"artifacts/{run_id}/cross_task_{m.name}.png", png)
        result.heatmaps[m.name] = uri
        caption = (f"Study `{study.name}`, model `{m.name}`, run `{run_id}`: "
                   f"{COLOUR_MEANING}.")
        data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        create_markdown_artifact(
            f"{caption}\n\n![relative accuracy heatmap, {m.name}]({data_uri})\n\n"
            f"PNG in storage: `{uri}`\n",
            key=f"heatmap-{key}", description=f"relative-score heatmap, study {study.name}, "
                                             f"model {m.name}")
        link = _openable_url(uri)
        if link:
            create_link_artifact(link, link_text=f"heatmap {m.name} (PNG)",
                                 key=f"heatmap-file-{key}")
        score = matrix(df, "accuracy", "score")
        create_table_artifact(_table_rows(score), key=f"cross-task-{key}",
                              description=f"accuracy (seed mean), rows = source prompt, "
                                          f"columns = target task; study {study.name}, "
                                          f"model {m.name}")
        create_table_artifact(_table_rows(rel), key=f"relative-score-{key}",
                              description=f"relative score = accuracy / the target's own "
                                          f"prompt's accuracy (seed mean); study "
                                          f"{study.name}, model {m.name}")
        lines += [f"## {m.name}", "",
                  f"- own prompt beats no prompt on {summary['own_beats_none']}/"
                  f"{summary['n_tasks']} tasks",
                  f"- mean relative score: same-type pairs {summary['same_type_rel']:.3f}, "
                  f"different-type {summary['diff_type_rel']:.3f}, random prompt "
                  f"{summary['random_rel']:.3f}, no prompt {summary['none_rel']:.3f}",
                  *transfer_lines(df, run_predictions(storage, study.name, m.name, cells)),
                  f"- heatmap: artifact `heatmap-{key}`; PNG in storage `{uri}`",
                  f"- tables: artifacts `cross-task-{key}` (accuracy), "
                  f"`relative-score-{key}`", "",
                  "accuracy (rows: source prompt, columns: target)",
                  "", "```", score.round(3).to_string(), "```", ""]
    lines += sections
    create_markdown_artifact("\n".join(lines), key=SUMMARY_KEY,
                             description=f"study {study.name}")


# -- the cross_model and tpt stages -----------------------------------------------------------
#
# Per pair of models: ``cross-model-<src>-to-<tgt>`` (markdown, the relative-accuracy heatmap
# inline) and one table artifact ``cross-model-summary``; per TPT model: ``tpt-curves-<model>``
# (markdown, the dev-accuracy curves inline) and the table ``tpt-<model>``. The PNGs are also
# written to ``<root>/artifacts/<run_id>/`` like the cross-task heatmaps.

CROSS_MODEL_SUMMARY_KEY = "cross-model-summary"
OBJECTIVE_ORDER = ("distance", "task", "none")
CROSS_MODEL_COLOUR = ("colour = relative score: the source model's prompt, carried into the "
                      "target model, scored on the target task, divided by the target model's "
                      "own prompt's accuracy on that task (1.0 = as good as the own prompt; "
                      "brighter is higher); rows: objective (distance / task: projected by a "
                      "projector trained that way; none: the source prompt as is) and source "
                      "task, columns: target task, seeds averaged")
TPT_PANEL_IN = (2.8, 2.0)  # one target task's panel, inches
TPT_COLUMNS = 3
TPT_PNG_COLOURS = 64  # lines on white: 10 targets x 3 sources x 2 seeds, a PNG of ~45 KB


def model_keys(names: Iterable[str], model_names: Iterable[str] | None) -> dict[str, str]:
    """:func:`artifact_keys` of ``model_names`` (the study's models, for keys equal to
    :func:`publish_run`'s) plus any of ``names`` it lacks; default: ``names``."""
    names = sorted(set(names))
    given = list(model_names or [])
    return artifact_keys(given + [n for n in names if n not in given])


def palette_png(fig: Figure, dpi: int = HEATMAP_DPI, colors: int = 256) -> bytes:
    """A figure as a palette PNG of ``colors`` colours (small enough to embed in a Prefect
    artifact)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    buf.seek(0)
    with Image.open(buf) as img:
        small = img.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _rounded(v):
    """A table-artifact value: floats rounded (NaN -> None), numpy scalars as Python ones."""
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return round(float(v), _TABLE_DIGITS)
    return v


def artifact_records(df: pd.DataFrame) -> list[dict]:
    return [{c: _rounded(v) for c, v in row.items()} for row in df.to_dict("records")]


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
    from prompt_core.analysis import cross_model_summary

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
        png = _heatmap_png(rel, f"{study_name} / {src} -> {tgt}: relative accuracy",
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
            key=key, description=f"cross-model relative accuracy, study {study_name}, "
                                 f"{src} -> {tgt}")
    create_table_artifact(
        artifact_records(summary), key=CROSS_MODEL_SUMMARY_KEY,
        description=f"cross-model transfer per model pair and objective: mean relative "
                    f"accuracy of held-out diagonal cells (diag_rel, n_diag) and of all "
                    f"held-out cells; study {study_name}")
    return uris


def _source_label(row) -> str:
    """``<source_model>/<source_task>`` for a prompt of another model, else the task."""
    if row["source_model"] != row["model"]:
        return f"{row['source_model']}/{row['source_task']}"
    return str(row["source_task"])


def _indexed_curves(curves: pd.DataFrame, keys: set[str]) -> dict[str, pd.DataFrame]:
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
    wrapped = _wrap(title, chars)
    labels = sorted({_source_label(r) for _, r in rows.iterrows()})
    n_entries = 1 + len(labels) + rows["fraction"].nunique()
    legend_cols = min(n_entries, 2 * n_cols)
    legend_in = 0.15 + 0.16 * math.ceil(n_entries / legend_cols)  # 7-point entries
    fig = Figure(figsize=(width_in, TPT_PANEL_IN[1] * n_rows + legend_in
                          + (wrapped.count("\n") + 1) * _TITLE_LINE_IN),
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
    from prompt_core.analysis import tpt_summary

    if rows.empty:
        return {}
    tpt_summary(rows)  # raises on mixed configurations
    keys = model_keys(rows["model"], model_names)
    uris: dict[str, str] = {}
    for model in sorted(rows["model"].unique()):
        r = rows[rows["model"] == model]
        by_key = _indexed_curves(curves, set(r["tpt_prompt_key"]) | set(r["baseline_prompt_key"]))
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
            key=f"tpt-curves-{keys[model]}",
            description=f"TPT dev-accuracy curves, study {study_name}, model {model}")
        create_table_artifact(
            artifact_records(tpt_table(r)), key=f"tpt-{keys[model]}",
            description=f"TPT vs random init per target, source and seed: score after "
                        f"score_at_step steps, best score, steps/seconds to the target score "
                        f"and speed-up (baseline / TPT; empty: never reached); study "
                        f"{study_name}, model {model}")
    return uris


def _f(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or v != v else format(v, fmt)


def stage_summary_markdown(cross_model: pd.DataFrame | None, tpt: pd.DataFrame | None, *,
                           model_names: Iterable[str] | None = None) -> str:
    """Markdown lines on the cross_model and tpt stages for the run's summary artifact,
    computed only from the given rows (None or empty: that stage's section is left out)."""
    from prompt_core.analysis import cross_model_summary, tpt_summary

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
                         f"diagonal {_f(r.diag_rel)} (n {r.n_diag}, accuracy "
                         f"{_f(r.diag_score)}), all held-out {_f(r.held_out_rel)} "
                         f"(n {r.n_held_out})")
        pairs = sorted(set(zip(acc["source_model"], acc["target_model"], strict=True)))
        lines += ["- heatmaps: artifacts " + ", ".join(
                      f"`cross-model-{keys[a]}-to-{keys[b]}`" for a, b in pairs),
                  f"- table: artifact `{CROSS_MODEL_SUMMARY_KEY}`", ""]
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
                         f"{r.n_reached}/{r.n}, speed-up {_f(r.mean_speedup_steps, '.2f')}x "
                         f"steps ({_f(r.mean_speedup_seconds, '.2f')}x seconds); best "
                         f"{_f(r.mean_best_gain, '+.3f')}, after k steps "
                         f"{_f(r.mean_gain_at_k, '+.3f')}")
        models = sorted(tpt["model"].unique())
        lines += ["- curves: artifacts " + ", ".join(f"`tpt-curves-{keys[m]}`" for m in models),
                  "- tables: artifacts " + ", ".join(f"`tpt-{keys[m]}`" for m in models), ""]
    return "\n".join(lines)
