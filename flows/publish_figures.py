"""The figures and table helpers the published artifacts share: Prefect artifact keys,
heatmaps and palette PNGs (embedded as ``data:`` URIs), rounded table records.

Used by :mod:`flows.publish` (a run's cross-task heatmaps and summary) and
:mod:`flows.publish_stages` (the cross_model and tpt stages).
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

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the CLI
    from matplotlib.figure import Figure

HEATMAP_DPI = 100  # a 10 x 12 matrix: a PNG of about 32 KB, 43 KB as a data URI
TITLE_FONTSIZE = 11.0
TITLE_LINE_IN = TITLE_FONTSIZE * 1.35 / 72  # height of one title line, inches
TABLE_DIGITS = 4  # values in the table artifacts are rounded to this many decimals


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


def wrap_title(title: str, width: int) -> str:
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
    fig = Figure(figsize=(width_in, base_h_in + TITLE_LINE_IN), dpi=HEATMAP_DPI,
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
    text = fig.suptitle(wrap_title(title, chars), fontsize=TITLE_FONTSIZE)
    for _ in range(8):
        n_lines = text.get_text().count("\n") + 1
        fig.set_size_inches(width_in, base_h_in + n_lines * TITLE_LINE_IN)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        too_wide = text.get_window_extent(renderer).width / (0.96 * fig.bbox.width)
        if too_wide <= 1.0:
            break
        chars = max(8, min(chars - 1, int(chars / too_wide)))
        text.set_text(wrap_title(title, chars))
    return fig


def heatmap_png(mat: pd.DataFrame, title: str, **labels: str) -> bytes:
    """The heatmap of :func:`heatmap_figure` as PNG bytes (palette PNG: small enough to embed
    in a Prefect artifact); ``labels``: its ``ylabel`` / ``cbar_label``."""
    return palette_png(heatmap_figure(mat, title, **labels))


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
