"""The figures and table helpers the published artifacts share: Prefect artifact keys,
heatmaps and palette PNGs (embedded as ``data:`` URIs), rounded table records.

The relative-score heatmap is bounded whatever the matrix size (at most
:data:`HEATMAP_MAX_PX` pixels a side, values printed only up to :data:`CELL_TEXT_MAX` rows
and columns, larger matrices clustered: :func:`heatmap_order`) and drawn once; its colour
scale is centred on 1.0 (as good as the target's own prompt).

Used by :mod:`flows.publish` (a run's cross-task heatmaps and summary) and
:mod:`flows.publish_stages` (the cross_model and tpt stages).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import math
import re
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the CLI
    from matplotlib.figure import Figure

HEATMAP_DPI = 100  # pixels per inch of every figure PNG
HEATMAP_MAX_PX = 2400  # neither side of a heatmap PNG is larger, whatever the matrix size
CELL_TEXT_MAX = 22  # the value printed in each cell up to 20 tasks (+ the random, none rows)
CELL_PX = (80, 56)  # a cell's width, height (px) while values are printed; 130 wide up to 6
SMALL_MATRIX = 12  # up to this many rows and columns: cell values at CELL_FONTSIZE[0]
CELL_FONTSIZE = (11.0, 10.0)  # pt: 15 px / 14 px at HEATMAP_DPI (small, larger matrices)
TICK_FONTSIZE = 10.0  # pt, tick labels at most
MIN_TICK_PX = 9.0  # tick labels never smaller: beyond, every k-th label only
TICK_LABEL_MAX = 400  # more rows (columns) than this: no tick labels at all
LABEL_CHARS = 40  # longer tick labels are shortened with an ellipsis
TITLE_MAX_LINES = 10  # a longer title is cut with an ellipsis (the PNG stays bounded)
TITLE_FONTSIZE = 11.0
TITLE_LINE_IN = TITLE_FONTSIZE * 1.35 / 72  # height of one title line, inches
TABLE_DIGITS = 4  # values in the table artifacts are rounded to this many decimals
NAN_COLOUR = "0.72"  # a cell without a value: grey, apart from every colour of the scale


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


# the study whose run is being published: every artifact key starts with it (``demo--...``) so
# a key's history in the UI holds one study's versions; set by :func:`artifact_namespace`
_namespace: ContextVar[str] = ContextVar("artifact_namespace", default="")


@contextlib.contextmanager
def artifact_namespace(study: str) -> Iterator[None]:
    """While publishing ``study``'s run: :func:`akey` prefixes keys with the study's slug."""
    token = _namespace.set(_study_slug(study))
    try:
        yield
    finally:
        _namespace.reset(token)


def _study_slug(study: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", study.lower())


def akey(key: str, study: str | None = None) -> str:
    """An artifact key in ``study``'s namespace (default: the current one, set by
    :func:`artifact_namespace`): ``<study>--<key>``; ``key`` as is outside any."""
    ns = _study_slug(study) if study is not None else _namespace.get()
    return f"{ns}--{key}" if ns else key


def wrap_title(title: str, width: int) -> str:
    """``title`` wrapped at ``width`` characters (long words and existing lines kept apart)."""
    return "\n".join(textwrap.fill(line, max(width, 8), break_long_words=True)
                     for line in title.splitlines() or [""])


def _task_of(label: str, tasks: dict[str, int]) -> tuple[str, str] | None:
    """(prefix, task) of a row label naming one of ``tasks`` (the columns): the label itself
    (prefix ``""``) or ``<prefix>: <task>`` (the cross-model rows); None for ``random``,
    ``none`` and any other row."""
    if label in tasks:
        return "", label
    head, sep, tail = label.rpartition(": ")
    return (head, tail) if sep and tail in tasks else None


def _clustered(values: np.ndarray) -> list[int]:
    """Leaf order of an average-linkage clustering of the rows of ``values`` (NaN: the
    feature's mean; optimally ordered leaves up to 256 rows): deterministic for given data."""
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering

    x = values[:, ~np.all(np.isnan(values), axis=0)]
    if len(x) < 3 or x.shape[1] == 0:
        return list(range(len(values)))
    x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
    z = linkage(x, "average", metric="euclidean")
    if len(x) <= 256:  # O(n^3): cheap up to a few hundred tasks
        z = optimal_leaf_ordering(z, x)
    return [int(i) for i in leaves_list(z)]


def heatmap_order(mat: pd.DataFrame, task_types: Mapping[str, str] | None = None,
                  ) -> tuple[pd.DataFrame, str]:
    """``mat`` reordered for display, and a note saying how (``""``: as given).

    Up to :data:`CELL_TEXT_MAX` rows and columns the order is kept; with ``task_types``
    (target task -> its type) the columns are grouped by type (types sorted). Larger matrices
    are ordered by an average-linkage hierarchical clustering of each target task's profile
    (its column and, where a row names the same task, its rows), within each type if types
    are given. Rows follow the columns: a row naming a task (``task`` or
    ``<objective>: task``) takes its column's place within its objective's block, so the
    diagonal stays the diagonal; ``random``, ``none`` and any other rows stay last, in their
    order."""
    cols = [str(c) for c in mat.columns]
    large = max(mat.shape) > CELL_TEXT_MAX
    if not large and not task_types:
        return mat, ""
    pos = {c: j for j, c in enumerate(cols)}
    rows = [str(r) for r in mat.index]
    keyed = {i: k for i, r in enumerate(rows) if (k := _task_of(r, pos)) is not None}
    prefixes = list(dict.fromkeys(p for p, _ in keyed.values()))
    values = mat.to_numpy(dtype=float)
    blocks = [values.T]  # each task's column, then its row of each objective
    for p in prefixes:
        block = np.full((len(cols), len(cols)), np.nan)
        for i, (q, t) in keyed.items():
            if q == p:
                block[pos[t]] = values[i]
        blocks.append(block)
    features = np.hstack(blocks)
    types = task_types or {}
    groups: dict[str | None, list[int]] = {}
    for j, c in enumerate(cols):
        groups.setdefault(types.get(c), []).append(j)
    order: list[int] = []
    for g in sorted(groups, key=lambda g: (g is None, g or "")):
        members = groups[g]
        leaves = _clustered(features[members]) if large else range(len(members))
        order += [members[k] for k in leaves]
    rank = {j: r for r, j in enumerate(order)}
    prank = {p: i for i, p in enumerate(prefixes)}
    row_order = sorted(keyed, key=lambda i: (prank[keyed[i][0]], rank[pos[keyed[i][1]]]))
    row_order += [i for i in range(len(rows)) if i not in keyed]
    how = ("hierarchical clustering (average linkage) of the tasks' relative scores"
           if large else "")
    note = (f"grouped by task type{', then ' + how + ' within each' if how else ''}"
            if task_types else how)
    note = f"order: {note}; rows follow the columns" if large else f"order: {note}"
    return mat.iloc[row_order, order], note


def task_groups(df: pd.DataFrame) -> dict[str, str]:
    """Target task -> its type group, from a ``cross_task``-shaped frame's ``same_type``
    pairs (tasks joined by a same-type pair share a group, named by its first task), for
    :func:`heatmap_png`'s ``task_types``; ``{}`` without a ``same_type`` column."""
    if "same_type" not in df.columns:
        return {}
    d = df[df["source_kind"] == "prompt"]
    parent = {str(t): str(t) for t in pd.concat([d["source_task"], df["target_task"]])}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    same = d[d["same_type"].fillna(False).astype(bool)]
    for a, b in zip(same["source_task"].astype(str), same["target_task"].astype(str),
                    strict=True):
        ra, rb = sorted((root(a), root(b)))
        parent[rb] = ra
    return {t: root(t) for t in sorted(parent)}


def _boundaries(keys: list) -> list[int]:
    """Positions where ``keys`` changes from its predecessor."""
    return [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]


def _short(label: object) -> str:
    s = str(label)
    return s if len(s) <= LABEL_CHARS else s[: LABEL_CHARS - 1] + "\u2026"


def _ticks(n: int, spacing_px: float) -> tuple[float, int]:
    """(font size in points, step) of the tick labels of ``n`` rows or columns
    ``spacing_px`` apart: at most :data:`TICK_FONTSIZE`; if they would be smaller than
    :data:`MIN_TICK_PX`, every ``step``-th only; step 0: none (over :data:`TICK_LABEL_MAX`)."""
    if n > TICK_LABEL_MAX:
        return TICK_FONTSIZE, 0
    px = min(TICK_FONTSIZE * HEATMAP_DPI / 72, 0.85 * spacing_px)
    step = max(1, math.ceil(MIN_TICK_PX / max(px, 1e-9))) if px < MIN_TICK_PX else 1
    return max(px, MIN_TICK_PX) * 72 / HEATMAP_DPI, step


def _text_px(renderer, text: str, size: float) -> tuple[float, float]:
    """Width, height (px) of ``text`` at ``size`` points."""
    from matplotlib.font_manager import FontProperties

    w, h, _ = renderer.get_text_width_height_descent(text, FontProperties(size=size), False)
    return w, h


def heatmap_figure(mat: pd.DataFrame, title: str, ylabel: str = "source prompt",
                   cbar_label: str = "relative score (1 = own prompt)", *,
                   task_types: Mapping[str, str] | None = None) -> Figure:
    """The heatmap of ``mat`` (rows: source prompt, columns: target task) as a laid-out,
    not yet drawn figure (drawn once, by :func:`palette_png`) whose title lies wholly
    inside it, however long the title.

    Bounded whatever the matrix size: neither side exceeds :data:`HEATMAP_MAX_PX` pixels
    (cells shrink instead), the value of each cell is printed only up to
    :data:`CELL_TEXT_MAX` rows and columns, and tick labels shrink to
    :data:`MIN_TICK_PX`, then only every k-th is shown, then none (over
    :data:`TICK_LABEL_MAX`). Small matrices get large cells (130 x 56 px up to 6 columns).
    The order is :func:`heatmap_order`'s (larger matrices: clustered; the x label says so);
    lines separate the row blocks (objectives; random and none) and task-type groups.

    Colour: a diverging scale centred on 1.0 (as good as the target's own prompt; red
    below, blue above) spanning the data's farthest value from 1 on both sides; grey: no
    value. The margins are computed from the measured text (no layout engine, no draw): the
    title is wrapped to the figure's width (narrower while the rendered text is too wide)
    and the figure grows by its lines.
    """
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    mat, note = heatmap_order(mat, task_types)
    n_rows, n_cols = mat.shape
    values = mat.to_numpy(dtype=float)
    text_cells = 0 < max(n_rows, n_cols) <= CELL_TEXT_MAX
    cell_w = 130 if n_cols <= 6 else CELL_PX[0]
    fig = Figure(figsize=(4, 3), dpi=HEATMAP_DPI)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    cap = HEATMAP_MAX_PX - 400  # the plot's size before the margins are measured
    est_w = min(cap, max(360, n_cols * cell_w))
    est_h = min(cap, max(168, n_rows * CELL_PX[1]))
    x_rot = 45 if text_cells else 90
    x_pt, x_step = _ticks(n_cols, est_w / max(n_cols, 1) * (0.7 if x_rot == 45 else 1))
    y_pt, y_step = _ticks(n_rows, est_h / max(n_rows, 1))
    xl = [(j, _short(c)) for j, c in enumerate(mat.columns)
          if x_step and j % x_step == (n_cols - 1) % x_step]
    yl = [(i, _short(r)) for i, r in enumerate(mat.index)
          if y_step and i % y_step == (n_rows - 1) % y_step]
    xw = [_text_px(renderer, s, x_pt) for _, s in xl] or [(0.0, 0.0)]
    yw = max((_text_px(renderer, s, y_pt)[0] for _, s in yl), default=0.0)
    label_h = _text_px(renderer, "Tg", 10.0)[1]
    x_ext = max((w + h) * 0.71 if x_rot == 45 else w for w, h in xw)
    left = 16 + label_h + yw + 12
    right = 16 + 18 + 10 + _text_px(renderer, "-0.000", 10.0)[0] + 10 + label_h + 10
    bottom = 12 + label_h + x_ext + 14
    width = min(HEATMAP_MAX_PX - left - right, max(360, n_cols * cell_w))
    if x_rot == 45:  # the first label reaches left of its column by its rotated width
        left = max(left, (xw[0][0] + xw[0][1]) * 0.71 - width / max(n_cols, 1) / 2 + 6)
        width = min(width, HEATMAP_MAX_PX - left - right)
    fig_w = math.ceil(left + width + right)

    # title: about 0.55 em per character; then measured, and re-wrapped narrower while too wide
    chars = int(fig_w / (0.55 * TITLE_FONTSIZE * HEATMAP_DPI / 72))
    for _ in range(8):
        text = wrap_title(title, chars)
        lines = text.split("\n")
        if len(lines) > TITLE_MAX_LINES:
            lines = lines[:TITLE_MAX_LINES]
            lines[-1] = lines[-1][:-1] + "\u2026"
            text = "\n".join(lines)
        too_wide = max(_text_px(renderer, ln, TITLE_FONTSIZE)[0] for ln in lines) / (0.96 * fig_w)
        if too_wide <= 1.0:
            break
        chars = max(8, min(chars - 1, int(chars / too_wide)))
    suptitle = fig.suptitle(text, fontsize=TITLE_FONTSIZE, va="top")
    top = 10 + suptitle.get_window_extent(renderer).height + 14
    height = min(HEATMAP_MAX_PX - top - bottom, max(168, n_rows * CELL_PX[1]))
    fig_h = math.ceil(top + height + bottom)
    fig.set_size_inches((fig_w + 1e-3) / HEATMAP_DPI, (fig_h + 1e-3) / HEATMAP_DPI)
    suptitle.set_y(1 - 10 / fig_h)

    ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    cax = fig.add_axes(((left + width + 16) / fig_w, bottom / fig_h, 18 / fig_w,
                        height / fig_h), label="<colorbar>")
    finite = values[np.isfinite(values)]
    span = float(np.max(np.abs(finite - 1.0))) if finite.size else 0.1
    span = max(span, 0.01)
    cmap = mpl.colormaps["RdBu"].with_extremes(bad=NAN_COLOUR)
    cell_px = min(width / max(n_cols, 1), height / max(n_rows, 1))
    im = ax.imshow(values, cmap=cmap, norm=Normalize(1 - span, 1 + span), aspect="auto",
                   interpolation="nearest" if cell_px >= 1 else None)
    ax.set_xticks([j for j, _ in xl], [s for _, s in xl], rotation=x_rot, fontsize=x_pt,
                  ha="right" if x_rot == 45 else "center")
    ax.set_yticks([i for i, _ in yl], [s for _, s in yl], fontsize=y_pt)
    ax.set_xlabel("target task" + (f" ({note})" if note else "")
                  + ("" if x_step else "; names omitted"), fontsize=10)
    ax.set_ylabel(ylabel + ("" if y_step else " (names omitted)"), fontsize=10)
    pos = {str(c): j for j, c in enumerate(mat.columns)}
    types = task_types or {}
    row_keys = [(k[0], types.get(k[1])) if (k := _task_of(str(r), pos)) else (None,)
                for r in mat.index]
    for i in _boundaries(row_keys):
        ax.axhline(i - 0.5, color="0.15", lw=1.2)
    for j in _boundaries([types.get(str(c)) for c in mat.columns]) if task_types else []:
        ax.axvline(j - 0.5, color="0.15", lw=1.2)
    if text_cells:
        size = CELL_FONTSIZE[0] if max(n_rows, n_cols) <= SMALL_MATRIX else CELL_FONTSIZE[1]
        for (i, j), v in np.ndenumerate(values):
            if math.isfinite(v):  # white on the dark ends of the scale
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=size,
                        color="w" if abs(v - 1) > 0.6 * span else "k")
    fig.colorbar(im, cax=cax, label=cbar_label)
    cax.tick_params(labelsize=10)
    return fig


def heatmap_png(mat: pd.DataFrame, title: str, *, task_types: Mapping[str, str] | None = None,
                **labels: str) -> bytes:
    """The heatmap of :func:`heatmap_figure` as PNG bytes (palette PNG: small enough to embed
    in a Prefect artifact, at most :data:`HEATMAP_MAX_PX` a side); ``labels``: its
    ``ylabel`` / ``cbar_label``; ``task_types``: see :func:`heatmap_order`."""
    return palette_png(heatmap_figure(mat, title, task_types=task_types, **labels),
                       tight=False, method="maxcoverage")


def model_keys(names: Iterable[str], model_names: Iterable[str] | None) -> dict[str, str]:
    """:func:`artifact_keys` of ``model_names`` (the study's models, for keys equal to
    :func:`publish_run`'s) plus any of ``names`` it lacks; default: ``names``."""
    names = sorted(set(names))
    given = list(model_names or [])
    return artifact_keys(given + [n for n in names if n not in given])


def palette_png(fig: Figure, dpi: int = HEATMAP_DPI, colors: int = 256, *,
                tight: bool = True, method: str = "mediancut") -> bytes:
    """A figure as a palette PNG of ``colors`` colours (small enough to embed in a Prefect
    artifact). ``tight``: cropped to the drawn content plus 0.1 in (drawn twice, to find
    it); else the whole canvas of an Agg figure, drawn once. ``method``: PIL's quantizer,
    ``mediancut`` (exact on large areas; rare colours, e.g. a colour bar's ends, may merge
    into others) or ``maxcoverage`` (every colour within a few levels: heatmaps)."""
    from PIL import Image

    if tight:
        buf = io.BytesIO()  # an intermediate PNG, barely compressed: it is decoded at once
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1,
                    pil_kwargs={"compress_level": 1})
        buf.seek(0)
        with Image.open(buf) as img:
            rgb = img.convert("RGB")
    else:
        if fig.dpi != dpi:
            fig.set_dpi(dpi)
        raw, size = fig.canvas.print_to_buffer()  # one draw, the RGBA pixels
        rgb = Image.frombuffer("RGBA", size, raw, "raw", "RGBA", 0, 1).convert("RGB")
    small = rgb.quantize(colors=colors, method=Image.Quantize[method.upper()])
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def rounded(v):
    """A table-artifact value: floats rounded (NaN -> None), numpy scalars as Python ones."""
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return round(float(v), TABLE_DIGITS)
    return v


def artifact_records(df: pd.DataFrame) -> list[dict]:
    return [{c: rounded(v) for c, v in row.items()} for row in df.to_dict("records")]


def fmt(v, fmt: str = ".3f") -> str:
    """``v`` formatted, ``n/a`` for None or NaN."""
    return "n/a" if v is None or v != v else format(v, fmt)
