"""The ``cross_task`` stage: every prompt of a model scored on every NLP task of the study.

One part, ``evaluate``: one unit per (model, target task) that scores every source prompt of
the model (every task and seed), a random prompt and no prompt per seed on the target's
evaluation split (:func:`tasks.units.evaluate_target_unit`). The target's own prompt (per
seed) is the denominator of ``relative_score``. Tables ``cross_task`` (one row per cell and
metric) and ``cross_task_predictions`` (one row per cell).

A unit is stored when every planned cell of its target has rows of both metrics and a
predictions row: planned from one read of each model's partitions, so a rerun with nothing to
do creates no task run. Its artifacts are per model: the relative-score heatmap, the accuracy
and relative-score tables and the summary section (:func:`flows.publish.publish_cross_task`).
"""

from __future__ import annotations

import functools
from typing import ClassVar

from flows.publish import publish_cross_task
from flows.stage_api import FlowState, StageRun, StatusState, register_stage
from flows.status import StageStatus
from flows.submit import Planned, unit_tags
from prompt_core.config import STAGE_SPECS, ModelConfig, StudyConfig
from tasks.storage import Storage
from tasks.tables import read_partition
from tasks.units import (
    METRICS,
    Cell,
    EvalOutcome,
    NlpTaskInfo,
    RunContext,
    eval_config_key,
    evaluate_target_unit,
    plan_cells,
)

STAGE = "cross_task"


def complete_cells(storage: Storage, study: str, model: str, problems: list[str]) -> set[str]:
    """The model's cell keys with rows of every metric and a predictions row (what the unit
    counts as done), from one read of each partition (columns ``cell_key``, ``metric``)."""
    where = {"study": study, "model": model}
    cells = read_partition(storage, "cross_task", where, ["cell_key", "metric"], problems)
    metrics: dict[str, set[str]] = {}
    for key, metric in zip(cells.column(0).to_pylist(), cells.column(1).to_pylist(),
                           strict=True):
        metrics.setdefault(key, set()).add(metric)
    preds = read_partition(storage, "cross_task_predictions", where, ["cell_key"], problems)
    with_preds = set(preds.column(0).to_pylist())
    return {k for k, ms in metrics.items() if set(METRICS) <= ms and k in with_preds}


def target_cells(study: StudyConfig, info: NlpTaskInfo, sources: list) -> list[Cell] | None:
    """Every planned cell of one target (the unit's :func:`~tasks.units.plan_cells`), or None
    when the target lacks its own prompt for a seed. ``sources``: the model's prompt rows
    (or :class:`flows.status.PlannedPrompt` for prompts not trained yet)."""
    own = {p.seed: p for p in sources if p.task == info.name}
    seeds = list(study.seeds)
    if any(s not in own for s in seeds):
        return None
    config_key = eval_config_key(own[seeds[0]].config_key, study.evaluation)
    return plan_cells(config_key, info, own, sources, seeds, study.training, study.evaluation)


def plan_evaluate(ctx: RunContext, study: StudyConfig, storage: Storage, models: list[ModelConfig],
                  infos: list[NlpTaskInfo], prompts: list,
                  problems: list[str] | None = None) -> list[Planned]:
    """One unit per model x target (model, then study order): stored (its
    :class:`EvalOutcome`, nothing scored) when every planned cell is complete."""
    problems = [] if problems is None else problems
    out = []
    for m in models:
        sources = [p for p in prompts if p.model == m.name]
        complete = complete_cells(storage, study.name, m.name, problems)
        for info in infos:
            own = {p.seed: p for p in sources if p.task == info.name}
            unit = Planned(f"evaluate {m.name} -> {info.name}", m.name,
                           submit=functools.partial(
                               evaluate_target_unit.submit, ctx, m, info, own, sources,
                               study.training, study.evaluation),
                           tags=unit_tags("evaluate", m.name))
            cells = target_cells(study, info, sources)
            if cells is not None and all(c.key in complete for c in cells):
                keys = [c.key for c in cells]
                unit.submit = None
                unit.stored = EvalOutcome(m.name, info.name, keys, 0, len(keys), None, [])
            out.append(unit)
    return out


class CrossTaskStage:
    name: ClassVar[str] = STAGE
    after: ClassVar[tuple[str, ...]] = ()
    tables: ClassVar[tuple[str, ...]] = ("cross_task", "cross_task_predictions")

    def unit_counts(self, study: StudyConfig, infos: list) -> dict[str, int]:
        return {"evaluate": len(study.models) * len(infos)}

    def run(self, state: FlowState) -> StageRun:
        """Score the missing targets; counts are cells (computed now vs stored)."""
        study, out = state.study, StageRun()
        units = plan_evaluate(state.ctx, study, state.storage, list(study.models), state.infos,
                              state.prompts)
        evaluated: list[EvalOutcome] = state.run_units("evaluate", units)
        out.count("evaluate", sum(e.n_cells_evaluated for e in evaluated),
                  sum(e.n_cells_cached for e in evaluated))
        for e in evaluated:
            out.add_keys(e.model, STAGE, e.cell_keys)
        return out

    def publish(self, state: FlowState, run: StageRun) -> tuple[list[str], dict[str, str]]:
        lines, uris, run.summaries = publish_cross_task(state.study, state.storage,
                                                        state.ctx.run_id, state.cells)
        return lines, uris

    def status(self, state: StatusState) -> list:
        """Per model: ``evaluate`` (targets whose every planned cell is complete) and
        ``cells`` (the same cells counted one by one); a task whose data does not load counts
        as missing."""
        study = state.study
        n_tasks, seeds = len(study.tasks), list(study.seeds)
        per_target = n_tasks * len(seeds) + len(seeds) * (
            int(study.evaluation.random_prompt) + int(study.evaluation.no_prompt))
        evaluate, cells_rows = [], []
        by_label = {i.label: i for i in state.infos}
        for m in study.models:
            sources = [p for (model, _, _), p in state.planned.items() if model == m.name]
            complete = complete_cells(state.storage, study.name, m.name, state.problems)
            ev = StageStatus("evaluate", m.name, 0, n_tasks)
            cs = StageStatus("cells", m.name, 0, n_tasks * per_target)
            for cfg in study.tasks:
                info = by_label.get(cfg.label())
                cells = target_cells(study, info, sources) if info is not None else None
                n_done = sum(c.key in complete for c in cells) if cells else 0
                cs.done += n_done
                if cells is not None and n_done == len(cells) == per_target:
                    ev.done += 1
                else:
                    ev.missing.append(f"evaluate {m.name} -> "
                                      f"{info.name if info else cfg.label()}")
            evaluate.append(ev)
            cells_rows.append(cs)
        return evaluate + cells_rows


register_stage(CrossTaskStage(), STAGE_SPECS[STAGE])  # no options section
