"""A small set of result tables written through ``write_part``: a finished run of a study
(2 models x 3 tasks x 1 seed) with one row in each later stage's table, and ``filled_row`` for
a row of any table. Shared by the docs-snippet and table-registry tests; not a test module."""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing

from tasks.storage import Storage
from tasks.tables import (
    AblationRow,
    CellRow,
    CorrelationRow,
    CrossModelRow,
    CurveRow,
    IndicatorRow,
    PredictionRow,
    ProjectorRow,
    PromptRow,
    RecommendationRow,
    RunKeyRow,
    RunRow,
    TptRankRow,
    TptRow,
    write_part,
)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
TASKS = {"tweet_sentiment": "sentiment", "snli": "nli", "ethics_justice": "ethics"}
MODELS = ("minilm", "bert")


def prompt_key(study: str, model: str, task: str) -> str:
    return f"pk-{study}-{model}-{task}"


def write_tables(st: Storage, study: str, score0: float) -> dict[str, float]:
    """A finished run of ``study`` (2 models x 3 tasks x 1 seed: prompts, curves, every cell
    with both metrics and its predictions, run_keys, a completed runs row); returns the
    expected answer of docs/querying.md's question: mean accuracy of the trained prompts per target
    task."""
    run_id = f"run-{study}"
    expected: dict[str, list[float]] = {}
    for mi, model in enumerate(MODELS):
        keys: list[RunKeyRow] = []
        for ti, (task, ttype) in enumerate(TASKS.items()):
            pk = prompt_key(study, model, task)
            write_part(st, "prompts", [PromptRow(
                prompt_key=pk, config_key="cfg", model=model, model_id=f"id/{model}",
                backbone_kind="encoder", hidden_size=32, task=task, task_type=ttype,
                task_fingerprint=f"fp{ti}", seed=0, n_tokens=4, init="random",
                init_prompt_sha=None, steps=4, lr=0.05, batch_size=8, best_step=2,
                dev_accuracy=0.6, dev_macro_f1=0.55, train_seconds=1.5,
                prompt_uri=st.uri(f"prompts/{model}/{task}/{pk}.safetensors"), study=study,
                run_id=run_id, created_at=T0)], pk)
            write_part(st, "training_curves", [CurveRow(
                prompt_key=pk, model=model, task=task, seed=0, step=s, train_loss=1.0 / (s + 1),
                dev_accuracy=0.5, dev_macro_f1=0.5, elapsed_s=float(s), study=study,
                run_id=run_id, created_at=T0) for s in (0, 2, 4)], pk)
            keys.append(RunKeyRow(run_id, study, model, "prompts", pk, T0))
        for ti, (target, ttype) in enumerate(TASKS.items()):
            cells, preds = [], []
            sources = [(s, "prompt") for s in TASKS] + [(None, "random"), (None, "none")]
            for si, (source, kind) in enumerate(sources):
                ck = f"ck-{study}-{model}-{target}-{kind}-{source}"
                keys.append(RunKeyRow(run_id, study, model, "cross_task", ck, T0))
                for metric in ("accuracy", "macro_f1"):
                    score = score0 + 0.1 * mi + 0.05 * ti + 0.01 * si + (
                        0.3 if metric == "macro_f1" else 0.0)
                    if kind == "prompt" and metric == "accuracy":
                        expected.setdefault(target, []).append(score)
                    cells.append(CellRow(
                        cell_key=ck, config_key="cfg-eval", model=model, source_task=source,
                        source_kind=kind,
                        source_prompt_key=prompt_key(study, model, source) if source else None,
                        source_task_type=TASKS[source] if source else None, target_task=target,
                        target_task_type=ttype, target_prompt_key=prompt_key(study, model, target),
                        same_type=(TASKS[source] == ttype) if source else None, metric=metric,
                        score=score, relative_score=1.0, n_examples=16, seed=0,
                        eval_split="test", study=study, run_id=run_id, created_at=T0))
                preds.append(PredictionRow(
                    cell_key=ck, config_key="cfg-eval", model=model, source_kind=kind,
                    source_task=source,
                    source_prompt_key=prompt_key(study, model, source) if source else None,
                    target_task=target, target_prompt_key=prompt_key(study, model, target),
                    seed=0, eval_split="test", n_examples=4, n_labels=2,
                    predicted=[0, 1, 1, si % 2], gold=[0, 1, 0, 1], study=study, run_id=run_id,
                    created_at=T0))
            write_part(st, "cross_task", cells, f"cells-{ti}")
            write_part(st, "cross_task_predictions", preds, f"cells-{ti}")
        write_part(st, "run_keys", keys, run_id)
    write_part(st, "runs", [RunRow(
        run_id=run_id, study=study, flow_run_id=None, status="completed", started_at=T0,
        finished_at=T0 + dt.timedelta(minutes=3), storage=st.root, study_config="{}",
        n_prompts_trained=6, n_prompts_cached=0, n_cells_evaluated=30, n_cells_cached=0,
        prefect_version="3", package_version="0", failures="[]")], run_id)
    # one row in each later stage's table (every table has parts under its DDL location)
    later = {"projectors": (ProjectorRow, {"target_model": MODELS[1]}),
             "cross_model": (CrossModelRow, {"target_model": MODELS[1], "target_task": "snli"}),
             "tpt": (TptRow, {"model": MODELS[0], "target_task": "snli"}),
             "tpt_rankings": (TptRankRow, {"model": MODELS[0], "target_task": "snli"}),
             "indicators": (IndicatorRow, {"model": MODELS[0]}),
             "ablations": (AblationRow, {"model": MODELS[0]}),
             "correlations": (CorrelationRow, {"model": MODELS[0]}),
             "recommendations": (RecommendationRow, {"model": MODELS[0]})}
    for table, (row_cls, parts) in later.items():
        write_part(st, table, [filled_row(row_cls, study=study, run_id=run_id, **parts)],
                   f"{table}-{study}")
    return {t: sum(v) / len(v) for t, v in expected.items()}


def filled_row(row_cls: type, **values):
    """A row of ``row_cls`` with every field not in ``values`` set to a value of its type."""
    hints = typing.get_type_hints(row_cls)
    by_type = {str: "x", int: 1, float: 0.5, bool: True, dt.datetime: T0}
    out = {}
    for f in dataclasses.fields(row_cls):
        t = hints[f.name]
        t = next((a for a in typing.get_args(t) if a is not type(None)), t)
        out[f.name] = values.get(f.name, by_type[t])
    return row_cls(**out)
