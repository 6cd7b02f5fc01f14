"""The relative-score heatmap stays bounded and cheap whatever the matrix size (pixel cap,
no per-cell text beyond a size, legible or no tick labels, one draw), orders large matrices
to show structure, and makes small matrices readable (large cells, a colour scale centred
on 1.0, grey NaN cells)."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pandas as pd
import pytest

from prompt_core.analysis import matrix

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def _cross_task(tasks: list[str], rel, seed: int = 0) -> pd.DataFrame:
    """``cross_task`` rows (accuracy, one seed) of every source (each task's prompt, random,
    none) on every target, ``rel(source_index, target_index)`` their relative score."""
    sources = [("prompt", t) for t in tasks] + [("random", ""), ("none", "")]
    rows = [{"source_kind": k, "source_task": s, "target_task": t, "seed": seed,
             "metric": "accuracy", "relative_score": rel(i, j)}
            for i, (k, s) in enumerate(sources) for j, t in enumerate(tasks)]
    return pd.DataFrame(rows)


def _random_rel(n: int, seed: int = 0, nan: float = 0.02):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.5, 1.4, (n + 2, n))
    v[rng.random(v.shape) < nan] = np.nan
    np.fill_diagonal(v, 1.0)
    return lambda i, j: float(v[i, j])


def _plot_axes(fig):
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    return ax


def _shown(labels) -> list:
    return [t for t in labels if t.get_visible() and t.get_text()]


def test_a_200_task_matrix_gives_a_small_bounded_png_quickly():
    from flows.publish_figures import HEATMAP_MAX_PX, heatmap_png

    tasks = [f"task_{i:03d}" for i in range(200)]
    rel = matrix(_cross_task(tasks, _random_rel(200)), "accuracy", "relative_score")
    assert rel.shape == (202, 200)  # what publish_run hands heatmap_png
    t0 = time.perf_counter()
    png = heatmap_png(rel, "a-study / a-model: relative accuracy")
    elapsed = time.perf_counter() - t0
    w, h = _png_size(png)
    assert w <= HEATMAP_MAX_PX and h <= HEATMAP_MAX_PX, (w, h)
    assert w >= 1500 and h >= 1500, (w, h)  # the cap is used, not a thumbnail
    assert len(png) < 2_000_000, len(png)
    assert elapsed < 60, elapsed  # the old figure took over 2 minutes (14157 x 10272 px)
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (w, h) and img.mode == "P"  # a palette PNG


def test_cell_values_are_printed_only_up_to_the_threshold():
    from flows.publish_figures import CELL_TEXT_MAX, heatmap_figure

    n_small = CELL_TEXT_MAX - 2  # with random and none: CELL_TEXT_MAX rows
    for n, printed in ((n_small, True), (n_small + 1, False), (120, False)):
        tasks = [f"t{i:03d}" for i in range(n)]
        rel = matrix(_cross_task(tasks, _random_rel(n)), "accuracy", "relative_score")
        ax = _plot_axes(heatmap_figure(rel, "title"))
        if printed:
            assert len(ax.texts) == int(np.isfinite(rel.to_numpy()).sum())
            assert {t.get_text() for t in ax.texts} >= {"1.00"}
        else:
            assert len(ax.texts) == 0, n


@pytest.mark.parametrize("n", [60, 200])
def test_tick_labels_of_large_matrices_are_legible_and_never_overlap(n):
    from flows.publish_figures import MIN_TICK_PX, heatmap_figure

    tasks = [f"task_{i:03d}" for i in range(n)]
    rel = matrix(_cross_task(tasks, _random_rel(n)), "accuracy", "relative_score")
    fig = heatmap_figure(rel, "title")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = _plot_axes(fig)
    for labels, axis in ((ax.get_xticklabels(), 0), (ax.get_yticklabels(), 1)):
        shown = _shown(labels)
        assert len(shown) >= min(n, 100) // 2  # thinned at most to every other one
        assert all(t.get_fontsize() * fig.dpi / 72 >= MIN_TICK_PX - 1e-6 for t in shown)
        boxes = sorted((t.get_window_extent(renderer) for t in shown),
                       key=lambda b: (b.x0, b.y0)[axis])
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert (b.x0 >= a.x1) if axis == 0 else (b.y0 >= a.y1), (a, b)
        for b in boxes:  # inside the figure
            assert b.x0 >= 0 and b.y0 >= 0 and b.x1 <= fig.bbox.x1 and b.y1 <= fig.bbox.y1
    # the last row (none) keeps its name
    assert _shown(ax.get_yticklabels())[-1].get_text() == "none"


def test_no_tick_labels_beyond_the_label_limit():
    from flows.publish_figures import HEATMAP_MAX_PX, TICK_LABEL_MAX, heatmap_figure

    n = TICK_LABEL_MAX + 1
    rng = np.random.default_rng(1)
    names = [f"task_{i:03d}" for i in range(n)]
    rel = pd.DataFrame(rng.uniform(0.5, 1.5, (n + 2, n)), index=names + ["random", "none"],
                       columns=names)
    fig = heatmap_figure(rel, "title")
    ax = _plot_axes(fig)
    assert not _shown(ax.get_xticklabels()) and not _shown(ax.get_yticklabels())
    assert "names omitted" in ax.get_xlabel() and "names omitted" in ax.get_ylabel()
    assert max(fig.canvas.get_width_height()) <= HEATMAP_MAX_PX  # the pixels Agg draws


def test_the_png_is_drawn_once(monkeypatch):
    from matplotlib.figure import Figure

    from flows.publish_figures import heatmap_png

    draws = []
    real = Figure.draw

    def counting(self, renderer):
        draws.append(renderer)
        return real(self, renderer)

    monkeypatch.setattr(Figure, "draw", counting)
    for n in (6, 40):
        draws.clear()
        tasks = [f"t{i}" for i in range(n)]
        heatmap_png(matrix(_cross_task(tasks, _random_rel(n)), "accuracy", "relative_score"),
                    "study / model: relative accuracy")
        assert len(draws) == 1, (n, len(draws))


def test_a_small_matrix_is_large_readable_and_centred_on_one():
    import matplotlib.image

    from flows.publish_figures import HEATMAP_DPI, NAN_COLOUR, heatmap_figure, heatmap_png

    tasks = ["emotion", "ethics_cm", "ethics_just", "qnli", "sentiment", "snli"]
    values = {(i, j): 1.0 if i == j else 0.9 + 0.02 * ((i * 7 + j * 3) % 11)
              for i in range(8) for j in range(6)}
    values[(7, 2)] = np.nan  # no prompt on ethics_just: no value
    rel = matrix(_cross_task(tasks, lambda i, j: values[(i, j)]), "accuracy", "relative_score")
    fig = heatmap_figure(rel, "demo / minilm: relative accuracy")
    ax = _plot_axes(fig)
    renderer = fig.canvas.get_renderer()
    # cell values at least 12 px high
    assert len(ax.texts) == 8 * 6 - 1
    for t in ax.texts:
        assert t.get_fontsize() * HEATMAP_DPI / 72 >= 12
        assert t.get_window_extent(renderer).height >= 12
    # the colour scale: centred on 1.0 and spanning the data, not starting at 0
    (im,) = ax.get_images()
    finite = rel.to_numpy()[np.isfinite(rel.to_numpy())]
    far = float(np.max(np.abs(finite - 1)))
    assert im.norm.vmin == pytest.approx(1 - far) and im.norm.vmax == pytest.approx(1 + far)
    assert 0.7 < im.norm.vmin < 1 < im.norm.vmax < 1.3
    assert im.cmap(im.norm(1.0))[:3] == pytest.approx((0.97, 0.97, 0.97), abs=0.03)  # white

    png = heatmap_png(rel, "demo / minilm: relative accuracy")
    w, h = _png_size(png)
    assert w >= 900 and h >= 450, (w, h)
    # the NaN cell is grey in the PNG (the figure's pixels: no cropping)
    assert (w, h) == (round(fig.bbox.width), round(fig.bbox.height))
    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    x, y = ax.transData.transform((2, 7))
    r, g, b = img[int(h - y), int(x), :3]
    grey = float(NAN_COLOUR)  # within the palette's few levels
    assert max(r, g, b) - min(r, g, b) < 0.05 and abs((r + g + b) / 3 - grey) < 0.05, (r, g, b)
    x, y = ax.transData.transform((0, 1))  # a coloured cell: not grey
    r, g, b = img[int(h - y), int(x), :3]
    assert max(r, g, b) - min(r, g, b) > 0.05


def _blocks(n: int, k: int):
    """Tasks in ``k`` hidden groups (task i in group i % k: interleaved names); relative
    score high within a group, low across; random and none low everywhere."""
    def rel(i, j):
        if i >= n:
            return 0.5 + 0.01 * (j % 5)
        if i == j:
            return 1.0
        return (1.2 if i % k == j % k else 0.6) + 0.005 * ((i * 31 + j * 17) % 7)
    return rel


def test_large_matrices_are_clustered_deterministically_keeping_the_diagonal():
    from flows.publish_figures import heatmap_figure, heatmap_order, heatmap_png

    n, k = 36, 3
    tasks = [f"task_{i:02d}" for i in range(n)]
    rel = matrix(_cross_task(tasks, _blocks(n, k)), "accuracy", "relative_score")
    ordered, note = heatmap_order(rel)
    assert "hierarchical clustering" in note
    cols = list(ordered.columns)
    groups = [tasks.index(c) % k for c in cols]
    assert sum(a != b for a, b in zip(groups, groups[1:], strict=False)) == k - 1  # contiguous
    # rows follow the columns: the diagonal stays 1.0; random and none stay last
    assert list(ordered.index) == cols + ["random", "none"]
    assert np.allclose(np.diag(ordered.to_numpy()[:n]), 1.0)
    # deterministic, and the figure says how it is ordered
    assert heatmap_order(rel)[0].equals(ordered)
    assert heatmap_png(rel, "t") == heatmap_png(rel, "t")
    ax = _plot_axes(heatmap_figure(rel, "t"))
    assert note in ax.get_xlabel()
    # a small matrix keeps its order
    small = rel.iloc[list(range(6)) + [n, n + 1], :6]
    same, how = heatmap_order(small)
    assert same is small and how == ""


def test_task_types_group_columns_and_rows_of_each_objective():
    from flows.publish_figures import heatmap_figure, heatmap_order

    tasks = ["a_nli", "b_sent", "c_nli", "d_sent", "e_para"]
    types = {"a_nli": "nli", "c_nli": "nli", "b_sent": "sentiment", "d_sent": "sentiment",
             "e_para": "paraphrase"}
    rows = [f"{o}: {t}" for o in ("distance", "task") for t in tasks] + ["none: a_nli"]
    rng = np.random.default_rng(2)
    rel = pd.DataFrame(rng.uniform(0.5, 1.5, (len(rows), 5)), index=rows, columns=tasks)
    ordered, note = heatmap_order(rel, types)
    assert "task type" in note
    want = ["a_nli", "c_nli", "e_para", "b_sent", "d_sent"]  # types sorted
    assert list(ordered.columns) == want
    assert list(ordered.index) == ([f"distance: {t}" for t in want]
                                   + [f"task: {t}" for t in want] + ["none: a_nli"])
    ax = _plot_axes(heatmap_figure(rel, "t", task_types=types))
    # lines between the type groups (x = 1.5, 2.5) and the objective blocks (y = 4.5, 9.5)
    vlines = sorted(ln.get_xdata()[0] for ln in ax.lines if ln.get_xdata()[0] ==
                    ln.get_xdata()[1])
    assert vlines == [1.5, 2.5]
    assert {4.5, 9.5} <= {ln.get_ydata()[0] for ln in ax.lines
                          if ln.get_ydata()[0] == ln.get_ydata()[1]}


def test_huge_titles_and_labels_stay_inside_the_cap():
    from flows.publish_figures import HEATMAP_MAX_PX, heatmap_png

    n = 30
    tasks = [f"{'a-very-long-task-name-' * 3}{i:03d}" for i in range(n)]
    rel = matrix(_cross_task(tasks, _random_rel(n)), "accuracy", "relative_score")
    png = heatmap_png(rel, "word " * 2000)
    w, h = _png_size(png)
    assert w <= HEATMAP_MAX_PX and h <= HEATMAP_MAX_PX, (w, h)


@pytest.mark.parametrize("n", [20, 50])
def test_the_palette_png_keeps_every_colour_of_the_figure(n):
    """No colour of the drawn figure (colour bar ends included) is merged into a distant
    palette entry: every pixel within 16 of 255 levels of the figure's own rendering."""
    from PIL import Image

    from flows.publish_figures import heatmap_figure, heatmap_png

    tasks = [f"task_{i:03d}" for i in range(n)]
    rel = matrix(_cross_task(tasks, _random_rel(n)), "accuracy", "relative_score")
    raw, (w, h) = heatmap_figure(rel, "t").canvas.print_to_buffer()
    want = np.frombuffer(raw, np.uint8).reshape(h, w, 4)[..., :3].astype(int)
    with Image.open(io.BytesIO(heatmap_png(rel, "t"))) as img:
        got = np.asarray(img.convert("RGB")).astype(int)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 16


def test_task_groups_come_from_the_same_type_pairs():
    from flows.publish_figures import heatmap_order, task_groups

    tasks = ["emotion", "qnli", "sentiment", "snli"]
    kind = {"emotion": "cls", "sentiment": "cls", "qnli": "nli", "snli": "nli"}
    df = _cross_task(tasks, lambda i, j: 1.0)
    df["same_type"] = [None if k != "prompt" else kind[s] == kind[t]
                       for k, s, t in zip(df["source_kind"], df["source_task"],
                                          df["target_task"], strict=True)]
    groups = task_groups(df)
    assert groups == {"emotion": "emotion", "sentiment": "emotion", "qnli": "qnli",
                      "snli": "qnli"}
    assert task_groups(df.drop(columns="same_type")) == {}
    rel = matrix(df, "accuracy", "relative_score")
    assert list(heatmap_order(rel, groups)[0].columns) == ["emotion", "sentiment", "qnli",
                                                          "snli"]
