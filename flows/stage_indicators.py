"""The ``indicators`` stage of the ``transfer-matrix`` flow.

Per model (``indicators.models``, default all), after the cross-task matrix:

1. ``indicators <model> seed=<s>``: ES and ON between every pair of the model's prompts;
2. ``ablate <model>/<task> seed=<s>``: neuron masking on each own prompt (when
   ``indicators.ablation_fractions`` is not empty);
3. ``probe <model> -> <task> seed=<s>``: the recommender's evidence for each target, from the
   target's train split only;
4. ``correlate <model>`` and ``recommend <model>``: correlations of every indicator with the
   run's matrix, and the leave-one-task-out rankings of the recommender and its baselines.

All are cached units; :func:`run_indicators` returns the run's rows for publishing, and
:class:`IndicatorsStage` is the stage the flow runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from itertools import combinations
from typing import ClassVar

import pandas as pd

from flows.publish import run_cells
from flows.publish_indicators import indicator_summary_lines, publish_indicators
from flows.stage_api import FlowState, StageRun, StatusState, register_stage
from flows.status import StageStatus
from flows.submit import Planned, unit_tags
from prompt_core.config import STAGE_SPECS, ModelConfig, StudyConfig
from tasks.indicator_units import (
    KeysOutcome,
    ablation_key,
    ablation_unit,
    correlations_unit,
    indicators_unit,
    pair_key,
    probe_unit,
)
from tasks.indicator_units import recommendations_unit as recommend_unit
from tasks.tables import PromptRow, read_partition, run_rows
from tasks.units import NlpTaskInfo, RunContext

STAGE = "indicators"


def indicator_models(study: StudyConfig) -> list[ModelConfig]:
    if STAGE not in study.stages:
        return []
    names = study.indicators.models or [m.name for m in study.models]
    return [m for m in study.models if m.name in names]


def n_indicator_units(study: StudyConfig, n_tasks: int) -> int:
    """Units of the stage: per model, one indicators unit per seed, one ablation and one
    probe per task and seed, one correlation and one recommendation unit."""
    if STAGE not in study.stages:
        return 0
    per_seed = 1 + n_tasks * (2 if study.indicators.ablation_fractions else 1)
    return len(indicator_models(study)) * (len(study.seeds) * per_seed + 2)


@dataclass
class IndicatorResult:
    """What the stage covered: keys per (model, table), what was computed now vs found stored
    per part of the stage (``indicators``: prompt pairs; ``ablate``, ``probe``: prompts and
    targets; ``correlate``, ``recommend``: one analysis per model), and the run's rows."""

    keys: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: dict[str, pd.DataFrame] = field(default_factory=dict)

    def count(self, part: str, computed: int, stored: int) -> None:
        c = self.counts.setdefault(part, {"computed": 0, "stored": 0})
        c["computed"] += computed
        c["stored"] += stored

    def add(self, outcomes: list[KeysOutcome], table: str, part: str) -> None:
        for o in outcomes:
            self.keys.setdefault((o.model, table), []).extend(o.keys)
            self.count(part, o.n_computed, o.n_stored)


def run_indicators(ctx: RunContext, study: StudyConfig, storage, infos: list[NlpTaskInfo],
                   prompts: list[PromptRow], cells: dict[str, list[str]], run_units
                   ) -> IndicatorResult:
    """Run the stage for every indicator model (see the module docstring); ``cells``: the
    run's cross-task cell keys per model."""
    cfg = study.indicators
    out = IndicatorResult()
    models = indicator_models(study)
    by = {(p.model, p.task, p.seed): p for p in prompts}
    names = [i.name for i in infos]

    def own(m: ModelConfig, seed: int) -> list[PromptRow]:
        return [by[(m.name, t, seed)] for t in names if (m.name, t, seed) in by]

    def unit(label: str, model: str, fn, *args, nlp_task: str | None = None) -> Planned:
        return Planned(label, model, submit=functools.partial(fn.submit, *args),
                       tags=unit_tags("indicators", model, nlp_task))

    # 1-3: the units that run the model
    out.add(run_units(STAGE, [
        unit(f"indicators {m.name} seed={seed}", m.name, indicators_unit, ctx, m, seed,
             own(m, seed), cfg) for m in models for seed in study.seeds]),
        "indicators", "indicators")
    out.add(run_units(STAGE, [
        unit(f"ablate {m.name}/{info.name} seed={seed}", m.name, ablation_unit, ctx, m, info,
             by[(m.name, info.name, seed)], cfg, study.evaluation, nlp_task=info.name)
        for m in (models if cfg.ablation_fractions else []) for info in infos
        for seed in study.seeds if (m.name, info.name, seed) in by]), "ablations", "ablate")
    probe_of = [(m, info, seed) for m in models for info in infos for seed in study.seeds]
    probed = run_units(STAGE, [
        unit(f"probe {m.name} -> {info.name} seed={seed}", m.name, probe_unit, ctx, m, info,
             seed, [p for p in own(m, seed) if p.task != info.name], cfg, study.evaluation,
             nlp_task=info.name) for m, info, seed in probe_of])
    probes: dict[str, list[dict]] = {m.name: [] for m in models}
    for (m, info, seed), o in zip(probe_of, probed, strict=True):
        probes[m.name].append({"seed": seed, "target_task": info.name, "scores": o.scores})
        out.count("probe", int(o.computed), int(not o.computed))

    # 4: the analyses over the run's rows
    out.add(run_units(STAGE, [
        unit(f"correlate {m.name}", m.name, correlations_unit, ctx, m.name,
             cells.get(m.name, []), out.keys.get((m.name, "indicators"), []))
        for m in models]), "correlations", "correlate")
    out.add(run_units(STAGE, [
        unit(f"recommend {m.name}", m.name, recommend_unit, ctx, m.name, cells.get(m.name, []),
             out.keys.get((m.name, "indicators"), []), probes[m.name]) for m in models]),
        "recommendations", "recommend")

    for table in ("indicators", "ablations", "correlations", "recommendations"):
        parts = [(m, ks) for (m, t), ks in out.keys.items() if t == table]
        out.rows[table] = run_rows(storage, table, study.name, parts)
    return out


class IndicatorsStage:
    name: ClassVar[str] = STAGE
    after: ClassVar[tuple[str, ...]] = ("cross_task",)  # correlates with the run's cells
    tables: ClassVar[tuple[str, ...]] = ("indicators", "ablations", "correlations",
                                         "recommendations")

    def unit_counts(self, study: StudyConfig, infos: list) -> dict[str, int]:
        return {STAGE: n_indicator_units(study, len(infos))}

    def run(self, state: FlowState) -> StageRun:
        ir = run_indicators(state.ctx, state.study, state.storage, state.infos, state.prompts,
                            state.cells, state.run_units)
        out = StageRun(rows=ir.rows)
        for part, c in ir.counts.items():
            out.count(part, c["computed"], c["stored"])
        for (model, table), keys in ir.keys.items():
            out.add_keys(model, table, keys)
        return out

    def publish(self, state: FlowState, run: StageRun) -> tuple[list[str], dict[str, str]]:
        if not run.rows:
            return [], {}
        study = state.study
        names = [m.name for m in study.models]
        cells = {m: run_cells(state.storage, study.name, m, keys)
                 for m, keys in state.cells.items() if keys}
        uris = {f"indicators {k}": v for k, v in publish_indicators(
            state.storage, study.name, state.ctx.run_id, run.rows, cells, model_names=names
        ).items()}
        return indicator_summary_lines(run.rows, model_names=names), uris

    def status(self, state: StatusState) -> list[StageStatus]:
        return indicator_status(state)


def indicator_status(state: StatusState) -> list[StageStatus]:
    """Per indicator model: the prompt pairs with indicator rows (a pair whose prompts are not
    stored yet counts as missing) and the own prompts with an ablation."""
    study, storage, infos, prompts = state.study, state.storage, state.infos, state.prompts
    problems = state.problems
    cfg = study.indicators
    out = []
    for m in indicator_models(study):
        where = {"study": study.name, "model": m.name}
        stored = set(read_partition(storage, "indicators", where, ["pair_key"], problems)
                     .column("pair_key").to_pylist())
        pairs = StageStatus("indicators", m.name, 0, 0)
        for seed in study.seeds:
            for a, b in combinations(infos, 2):
                pairs.total += 1
                pa, pb = prompts.get((m.name, a.name, seed)), prompts.get((m.name, b.name, seed))
                if pa and pb and pair_key(m, pa, pb, cfg.window, cfg.on_position) in stored:
                    pairs.done += 1
                else:
                    pairs.missing.append(f"indicators {m.name} {a.name}~{b.name} seed={seed}")
        out.append(pairs)
        if not cfg.ablation_fractions:
            continue
        done = set(read_partition(storage, "ablations", where, ["ablation_key"], problems)
                   .column("ablation_key").to_pylist())
        abl = StageStatus("ablate", m.name, 0, 0)
        for info in infos:
            for seed in study.seeds:
                abl.total += 1
                p = prompts.get((m.name, info.name, seed))
                if p and ablation_key(m, p, cfg, study.evaluation) in done:
                    abl.done += 1
                else:
                    abl.missing.append(f"ablate {m.name}/{info.name} seed={seed}")
        out.append(abl)
    return out


register_stage(IndicatorsStage(), STAGE_SPECS[STAGE])  # options: IndicatorsConfig
