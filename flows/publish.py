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
:func:`stage_summary_markdown` gives their lines of the summary (all in
:mod:`flows.publish_stages`; the shared figure helpers are in :mod:`flows.publish_figures`).

And one markdown summary of the run, ``transfer-matrix-summary``. ``<model>`` in a key is the
model name made a valid artifact key (lowercase letters, digits and dashes; see
:func:`artifact_keys`).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pandas as pd
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from flows.publish_figures import (  # re-exported: the names other modules import from here
    HEATMAP_DPI,
    TABLE_DIGITS,
    TITLE_FONTSIZE,
    akey,
    artifact_keys,
    artifact_namespace,
    artifact_records,
    fmt,
    heatmap_figure,
    heatmap_png,
    model_keys,
    palette_png,
    png_data_uri,
)
from flows.publish_stages import (  # re-exported: the names other modules import from here
    CROSS_MODEL_COLOUR,
    CROSS_MODEL_SUMMARY_KEY,
    OBJECTIVE_ORDER,
    TPT_COLUMNS,
    TPT_PANEL_IN,
    TPT_PNG_COLOURS,
    TPT_TABLE_COLUMNS,
    cross_model_matrix,
    indexed_curves,
    publish_cross_model,
    publish_tpt,
    stage_summary_markdown,
    tpt_figure,
    tpt_table,
)
from prompt_core.analysis import (
    MissingPredictionsError,
    matrix,
    over_seeds,
    same_minus_diff_interval,
    transfer_summary,
)
from prompt_core.config import StudyConfig, stable_hash
from tasks.integrity import check_image, record_images
from tasks.storage import Storage
from tasks.tables import read_table

if TYPE_CHECKING:
    from flows.stage_api import StudyResult

__all__ = [
    "COLOUR_MEANING", "CROSS_MODEL_COLOUR", "CROSS_MODEL_SUMMARY_KEY", "HEATMAP_DPI", "akey",
    "artifact_namespace",
    "OBJECTIVE_ORDER", "SUMMARY_KEY", "TITLE_FONTSIZE", "TPT_COLUMNS", "TPT_PANEL_IN",
    "TPT_PNG_COLOURS", "TPT_TABLE_COLUMNS", "artifact_keys", "artifact_records",
    "cross_model_matrix", "heatmap_figure", "heatmap_png", "indexed_curves", "model_keys",
    "palette_png", "png_data_uri", "publish_cross_model", "publish_cross_task", "publish_run",
    "publish_tpt", "run_cells", "run_predictions", "stage_summary_markdown", "tpt_figure",
    "tpt_table", "transfer_lines"]

SUMMARY_KEY = "transfer-matrix-summary"
COLOUR_MEANING = ("colour = relative score: the source prompt's accuracy on the target divided "
                  "by the target's own prompt's (white = 1.0, as good as the own prompt; blue "
                  "above, red below; grey: no value); rows: source prompt (random: a random "
                  "prompt, none: no prompt), columns: target task grouped by task type "
                  "(clustered within types past 20 tasks), seeds averaged")


def _openable_url(uri: str) -> str | None:
    """``uri`` if a browser opens it from the Prefect UI (http/https), else None: ``file://``
    links are blocked by browsers and ``s3://`` has no handler."""
    return uri if re.match(r"https?://", uri, re.IGNORECASE) else None


def _table_rows(mat: pd.DataFrame) -> list[dict]:
    """A matrix as table-artifact rows: ``source prompt`` then one column per target task
    (task names never contain a space, so the first column cannot clash with one)."""
    return [{"source prompt": str(idx),
             **{str(c): (None if v != v else round(float(v), TABLE_DIGITS))
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
        return f"{fmt(iv['point'])} (no interval: no same-type or no different-type pair)"
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
                f"{fmt(s['same_minus_diff'])} (no interval: per-example predictions not "
                f"stored)"),
             f"- mean transfer gain: same-type pairs {fmt(s['same_type_gain'])}, "
             f"different-type {fmt(s['diff_type_gain'])}"
             + (f"; difference {_interval_text(gain)}" if gain is not None
                and gain["point"] == gain["point"] else "")]
    if s["n_seeds"] > 1:
        o = over_seeds(df)
        figs = [("same-type rel", "same_type_rel"), ("different-type rel", "diff_type_rel"),
                ("difference", "same_minus_diff"), ("own beats none", "own_beats_none")]
        lines.append(f"- over {s['n_seeds']} seeds (mean ± std [min, max]): " + "; ".join(
            f"{label} {fmt(o.loc[k, 'mean'])} ± {fmt(o.loc[k, 'std'])} "
            f"[{fmt(o.loc[k, 'min'])}, {fmt(o.loc[k, 'max'])}]" for label, k in figs))
    return lines


PUBLISH_VERSION = 1  # bump when a stage's artifacts change for the same rows


def publish_fingerprint(study: StudyConfig, stage: str, keys: dict[tuple[str, str], list[str]]
                        ) -> str:
    """What a stage's artifacts are computed from: the study's models, the stage's options and
    exactly the keys the run covered (rows are determined by their keys)."""
    return stable_hash({"v": PUBLISH_VERSION, "study": study.name, "stage": stage,
                        "models": [m.name for m in study.models],
                        "options": repr(study.stage_options(stage)),
                        "keys": sorted([m, t, sorted(set(ks))] for (m, t), ks in keys.items())})


def _published(storage: Storage, key: str) -> dict | None:
    """An earlier run's record of the same artifacts, if it reads back whole."""
    try:
        rec = storage.read_json(key) if storage.exists(key) else None
    except Exception:  # noqa: BLE001 - a damaged record is only a cache miss
        return None
    ok = isinstance(rec, dict) and {"lines", "uris", "summaries"} <= rec.keys()
    if ok and any(not storage.exists(k) or check_image(storage, k)
                  for k in record_images(storage, rec)):
        return None  # an image it names is gone or damaged: publish again
    return rec if ok else None


def publish_run(study: StudyConfig, storage: Storage, run_id: str, result: StudyResult,
                stage_runs: list | None = None) -> None:
    """Publish the run's artifacts: each stage's own (:meth:`~flows.stage_api.Stage.publish`,
    from exactly this run's rows; ``stage_runs``: (stage, the flow's state) in the order they
    ran), then one markdown summary, ``transfer-matrix-summary``: the run's counts, then each
    stage's section. Fills ``result.heatmaps`` (label -> PNG URI in storage) and
    ``result.summaries`` (model -> the cross-task transfer summary).

    Publishing costs what changed: a stage whose run covered exactly the keys an earlier run
    published (``artifacts/published/<study>/<stage>/<fingerprint>.json``, see
    :func:`publish_fingerprint`) draws nothing and creates no artifact again (the earlier
    ones, under the same keys, are identical); its summary section is the recorded one."""
    with artifact_namespace(study.name):
        _publish_stages(study, storage, run_id, result, stage_runs or [])


def _publish_stages(study: StudyConfig, storage: Storage, run_id: str, result: StudyResult,
                    stage_runs: list) -> None:
    sections: list[str] = []
    reused: list[str] = []
    for stage, state in stage_runs:
        run = state.results[stage.name]
        record = (f"artifacts/published/{study.name}/{stage.name}/"
                  f"{publish_fingerprint(study, stage.name, run.keys)}.json")
        rec = _published(storage, record) if run.keys else None
        if rec is None:
            lines, uris = stage.publish(state, run)
            if run.keys:
                storage.write_bytes(record, json.dumps(
                    {"run_id": run_id, "lines": lines, "uris": uris, "summaries": run.summaries},
                    default=lambda o: o.item() if hasattr(o, "item") else str(o)).encode())
        else:
            lines, uris, run.summaries = rec["lines"], rec["uris"], rec["summaries"]
            reused.append(f"`{stage.name}` (run `{rec.get('run_id')}`)")
        result.heatmaps.update(uris)
        result.summaries.update(run.summaries)
        sections += lines
    lines = [f"# Transfer matrix: study `{study.name}`", "",
             f"run `{run_id}`, storage `{storage.root}`", "",
             f"- prompts trained {result.n_prompts_trained}, reused {result.n_prompts_cached}",
             f"- matrix cells evaluated {result.n_cells_evaluated}, reused "
             f"{result.n_cells_cached}", ""]
    if reused:
        lines += ["- nothing new in " + ", ".join(reused) + ": its artifacts stand as that run "
                  "published them", ""]
    lines += sections
    result.summary_markdown = "\n".join(lines)
    create_markdown_artifact(result.summary_markdown, key=akey(SUMMARY_KEY),
                             description=f"study {study.name}")


def publish_cross_task(study: StudyConfig, storage: Storage, run_id: str,
                       cells_by_model: dict[str, list[str]]
                       ) -> tuple[list[str], dict[str, str], dict[str, dict]]:
    """The cross-task stage's artifacts per model (see the module docstring), computed from
    exactly the cells this run covered (not every row of the partition: older configurations
    stay out). Returns its summary lines, {model: heatmap PNG URI} and {model: transfer
    summary}."""
    keys = artifact_keys(m.name for m in study.models)
    lines: list[str] = []
    uris: dict[str, str] = {}
    summaries: dict[str, dict] = {}
    for m in study.models:
        cells = cells_by_model.get(m.name, [])
        if not cells:
            continue
        key = keys[m.name]
        df = run_cells(storage, study.name, m.name, cells)
        summary = summaries[m.name] = transfer_summary(df)
        rel = matrix(df, "accuracy", "relative_score")
        types = dict(zip(df["target_task"], df["target_task_type"], strict=True))
        png = heatmap_png(rel, f"{study.name} / {m.name}: relative accuracy", task_types=types)
        uri = uris[m.name] = storage.write_bytes(f"artifacts/{run_id}/cross_task_{m.name}.png",
                                                 png)
        caption = (f"Study `{study.name}`, model `{m.name}`, run `{run_id}`: "
                   f"{COLOUR_MEANING}.")
        data_uri = png_data_uri(png)
        create_markdown_artifact(
            f"{caption}\n\n![relative accuracy heatmap, {m.name}]({data_uri})\n\n"
            f"PNG in storage: `{uri}`\n",
            key=akey(f"heatmap-{key}"), description=f"relative-score heatmap, study {study.name}, "
                                             f"model {m.name}")
        link = _openable_url(uri)
        if link:
            create_link_artifact(link, link_text=f"heatmap {m.name} (PNG)",
                                 key=akey(f"heatmap-file-{key}"))
        score = matrix(df, "accuracy", "score")
        create_table_artifact(_table_rows(score), key=akey(f"cross-task-{key}"),
                              description=f"accuracy (seed mean), rows = source prompt, "
                                          f"columns = target task; study {study.name}, "
                                          f"model {m.name}")
        create_table_artifact(_table_rows(rel), key=akey(f"relative-score-{key}"),
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
                  f"- heatmap: artifact `{akey(f'heatmap-{key}')}`; PNG in storage `{uri}`",
                  f"- tables: artifacts `{akey(f'cross-task-{key}')}` (accuracy), "
                  f"`{akey(f'relative-score-{key}')}`", "",
                  "accuracy (rows: source prompt, columns: target)",
                  "", "```", score.round(3).to_string(), "```", ""]
    return lines, uris, summaries


# -- the cross_model and tpt stages -----------------------------------------------------------
#
# Per pair of models: ``cross-model-<src>-to-<tgt>`` (markdown, the relative-accuracy heatmap


# the old private names, kept for callers of this module (tests)
_heatmap_png = heatmap_png
_indexed_curves = indexed_curves
