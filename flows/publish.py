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

from prompt_core.analysis import matrix, transfer_summary
from prompt_core.config import StudyConfig
from tasks.storage import Storage
from tasks.tables import read_table

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the CLI
    from matplotlib.figure import Figure

    from flows.transfer_matrix import StudyResult

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


def heatmap_figure(mat: pd.DataFrame, title: str) -> Figure:
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
    ax.set_ylabel("source prompt")
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if v > 0.6 * vmax else "w")  # readable on yellow and blue
    fig.colorbar(im, ax=ax, label="relative score (1 = own prompt)")

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


def _heatmap_png(mat: pd.DataFrame, title: str) -> bytes:
    """The heatmap of :func:`heatmap_figure` as PNG bytes (palette PNG: small enough to embed
    in a Prefect artifact)."""
    from PIL import Image

    fig = heatmap_figure(mat, title)
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


def publish_run(study: StudyConfig, storage: Storage, run_id: str, result: StudyResult,
                cells_by_model: dict[str, list[str]]) -> None:
    """Publish the run's artifacts (see the module docstring), computed from exactly the
    cells this run covered (not every row of the partition: older configurations stay out);
    fills ``result.summaries`` and ``result.heatmaps`` (model -> PNG URI in storage)."""
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
                  f"- heatmap: artifact `heatmap-{key}`; PNG in storage `{uri}`",
                  f"- tables: artifacts `cross-task-{key}` (accuracy), "
                  f"`relative-score-{key}`", "",
                  "accuracy (rows: source prompt, columns: target)",
                  "", "```", score.round(3).to_string(), "```", ""]
    create_markdown_artifact("\n".join(lines), key=SUMMARY_KEY,
                             description=f"study {study.name}")
