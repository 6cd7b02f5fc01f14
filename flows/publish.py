"""What a run publishes: a markdown summary, the accuracy matrix as a table artifact and the
relative-score heatmap per model, all computed from exactly the cells of that run."""

from __future__ import annotations

import io
from pathlib import Path

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from prompt_core.analysis import matrix, transfer_summary
from prompt_core.config import StudyConfig
from tasks.tables import read_table


def _heatmap_png(mat, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * mat.shape[1], 1.0 + 0.5 * mat.shape[0]))
    vmax = max(1.0, float(mat.max().max()))
    im = ax.imshow(mat.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=vmax)
    ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=45, ha="right")
    ax.set_yticks(range(mat.shape[0]), mat.index)
    ax.set_xlabel("target task")
    ax.set_ylabel("source prompt")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat.iat[i, j]
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if v > 0.6 * vmax else "w")  # readable on yellow and blue
    fig.colorbar(im, ax=ax, label="relative score")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def run_cells(storage, study: str, model: str, cell_keys: list[str]):
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


def publish_run(study: StudyConfig, storage, run_id: str, result,
             cells_by_model: dict[str, list[str]]) -> None:
    """Markdown summary, matrix table and heatmap per model, computed from exactly the cells
    this run covered (not every row of the partition: older configurations stay out)."""
    lines = [f"# Transfer matrix: study `{study.name}`", "",
             f"run `{run_id}`, storage `{storage.root}`", "",
             f"- prompts trained {result.n_prompts_trained}, reused {result.n_prompts_cached}",
             f"- matrix cells evaluated {result.n_cells_evaluated}, reused "
             f"{result.n_cells_cached}", ""]
    for m in study.models:
        keys = cells_by_model.get(m.name, [])
        if not keys:
            continue
        df = run_cells(storage, study.name, m.name, keys)
        summary = transfer_summary(df)
        result.summaries[m.name] = summary
        rel = matrix(df, "accuracy", "relative_score")
        png = _heatmap_png(rel, f"{study.name} / {m.name}: relative accuracy")
        uri = storage.write_bytes(f"artifacts/{run_id}/cross_task_{m.name}.png", png)
        result.heatmaps[m.name] = uri
        create_link_artifact(uri if "://" in uri else Path(uri).as_uri(),
                             link_text=f"heatmap {m.name}", key=f"heatmap-{m.name}".lower())
        score = matrix(df, "accuracy", "score").round(3)
        table = [{"source": idx, **{c: (None if v != v else float(v)) for c, v in row.items()}}
                 for idx, row in score.iterrows()]
        create_table_artifact(table, key=f"cross-task-{m.name}".lower(),
                              description=f"accuracy, rows = source prompt, columns = target "
                                          f"({m.name})")
        lines += [f"## {m.name}", "",
                  f"- own prompt beats no prompt on {summary['own_beats_none']}/"
                  f"{summary['n_tasks']} tasks",
                  f"- mean relative score: same-type pairs {summary['same_type_rel']:.3f}, "
                  f"different-type {summary['diff_type_rel']:.3f}, random prompt "
                  f"{summary['random_rel']:.3f}, no prompt {summary['none_rel']:.3f}",
                  f"- heatmap: {uri}", "", "accuracy (rows: source prompt, columns: target)",
                  "", "```", score.to_string(), "```", ""]
    create_markdown_artifact("\n".join(lines), key="transfer-matrix-summary",
                             description=f"study {study.name}")
