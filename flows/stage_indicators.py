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
    ProbeOutcome,
    ablation_key,
    ablation_unit,
    correlation_key,
    correlations_unit,
    indicators_unit,
    pair_key,
    probe_storage_key,
    probe_unit,
    recommend_key,
)
from tasks.indicator_units import recommendations_unit as recommend_unit
from tasks.tables import PromptRow, read_partition, run_rows
from tasks.units import NlpTaskInfo, RunContext

STAGE = "indicators"


def stored_probe(storage, model: ModelConfig, info: NlpTaskInfo, sources: list[PromptRow],
                 cfg, evaluation, seed: int) -> ProbeOutcome | None:
    """A probe's stored scores (what the unit would read), or None."""
    try:
        scores = storage.read_json(probe_storage_key(model, info, sources, cfg, evaluation,
                                                     seed))["scores"]
        return ProbeOutcome(model.name, {k: float(v) for k, v in scores.items()}, False)
    except Exception:  # noqa: BLE001 - absent or unreadable: the unit recomputes it
        return None


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

    def unit(label: str, model: str, stored, fn, *args) -> Planned:
        """A planned unit: ``stored`` (its outcome from the tables) or a task run of ``fn``."""
        return Planned(label, model, stored=stored, tags=unit_tags("indicators", model),
                       submit=None if stored is not None else functools.partial(fn.submit, *args))

    def keys_in(table: str, m: ModelConfig, column: str) -> set[str]:
        where = {"study": study.name, "model": m.name}
        return set(read_partition(storage, table, where, [column], []).column(0).to_pylist())

    # 1-3: the units that run the model, each planned from its stored keys
    units = []
    for m in models:
        done = keys_in("indicators", m, "pair_key")
        for seed in study.seeds:
            keys = sorted({pair_key(m, a, b, cfg.window, cfg.on_position)
                           for a, b in combinations(own(m, seed), 2)})
            stored = (KeysOutcome(m.name, keys, 0, len(keys)) if all(k in done for k in keys)
                      else None)
            units.append(unit(f"indicators {m.name} seed={seed}", m.name, stored,
                              indicators_unit, ctx, m, seed, own(m, seed), cfg))
    out.add(run_units(STAGE, units), "indicators", "indicators")
    units = []
    for m in models if cfg.ablation_fractions else []:
        done = keys_in("ablations", m, "ablation_key")
        for info in infos:
            for seed in study.seeds:
                p = by.get((m.name, info.name, seed))
                if p is None:
                    continue
                key = ablation_key(m, p, cfg, study.evaluation)
                units.append(unit(f"ablate {m.name}/{info.name} seed={seed}", m.name,
                                  KeysOutcome(m.name, [key], 0, 1) if key in done else None,
                                  ablation_unit, ctx, m, info, p, cfg, study.evaluation))
    out.add(run_units(STAGE, units), "ablations", "ablate")
    probe_of = [(m, info, seed) for m in models for info in infos for seed in study.seeds]
    units = []
    for m, info, seed in probe_of:
        sources = [p for p in own(m, seed) if p.task != info.name]
        units.append(unit(f"probe {m.name} -> {info.name} seed={seed}", m.name,
                          stored_probe(storage, m, info, sources, cfg, study.evaluation, seed),
                          probe_unit, ctx, m, info, seed, sources, cfg, study.evaluation))
    probes: dict[str, list[dict]] = {m.name: [] for m in models}
    for (m, info, seed), o in zip(probe_of, run_units(STAGE, units), strict=True):
        probes[m.name].append({"seed": seed, "target_task": info.name, "scores": o.scores})
        out.count("probe", int(o.computed), int(not o.computed))

    # 4: the analyses over the run's rows
    units = []
    for m in models:
        pairs = out.keys.get((m.name, "indicators"), [])
        key = correlation_key(cells.get(m.name, []), pairs)
        units.append(unit(f"correlate {m.name}", m.name,
                          KeysOutcome(m.name, [key], 0, 1)
                          if key in keys_in("correlations", m, "correlation_key") else None,
                          correlations_unit, ctx, m.name, cells.get(m.name, []), pairs))
    out.add(run_units(STAGE, units), "correlations", "correlate")
    units = []
    for m in models:
        pairs = out.keys.get((m.name, "indicators"), [])
        key = recommend_key(cells.get(m.name, []), pairs, probes[m.name])
        units.append(unit(f"recommend {m.name}", m.name,
                          KeysOutcome(m.name, [key], 0, 1)
                          if key in keys_in("recommendations", m, "recommend_key") else None,
                          recommend_unit, ctx, m.name, cells.get(m.name, []), pairs,
                          probes[m.name]))
    out.add(run_units(STAGE, units), "recommendations", "recommend")

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
