"""The ``indicators`` stage of the ``transfer-matrix`` flow.

Per model (``indicators.models``, default all), after the cross-task matrix:

1. ``indicators <model> seed=<s>``: ES and ON between every pair of the model's prompts;
2. ``ablate <model>/<task> seed=<s>``: neuron masking on each own prompt (when
   ``indicators.ablation_fractions`` is not empty);
3. ``probe <model> -> <task> seed=<s>``: the recommender's evidence for each target, from the
   target's train split only;
4. ``correlate <model>`` and ``recommend <model>``: correlations of every indicator with the
   run's matrix, and the leave-one-task-out rankings of the recommender and its baselines.

All are cached units; :func:`run_indicators` returns the run's rows for publishing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from prefect import tags

from prompt_core.config import ModelConfig, StudyConfig
from tasks.indicator_units import (
    KeysOutcome,
    ablation_unit,
    correlations_unit,
    indicators_unit,
    probe_unit,
)
from tasks.indicator_units import recommendations_unit as recommend_unit
from tasks.tables import PromptRow, run_rows
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
                   prompts: list[PromptRow], cells: dict[str, list[str]], gather
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

    # 1-3: the units that run the model
    futures, labels, owners = [], [], []
    for m in models:
        for seed in study.seeds:
            with tags("stage:indicators", f"model:{m.name}"):
                futures.append(indicators_unit.submit(ctx, m, seed, own(m, seed), cfg))
            labels.append(f"indicators {m.name} seed={seed}")
            owners.append(m.name)
    out.add(gather(futures, labels, owners), "indicators", "indicators")

    futures, labels, owners = [], [], []
    for m in models if cfg.ablation_fractions else []:
        for info in infos:
            for seed in study.seeds:
                if (m.name, info.name, seed) not in by:
                    continue
                with tags("stage:indicators", f"model:{m.name}", f"nlp_task:{info.name}"):
                    futures.append(ablation_unit.submit(ctx, m, info, by[(m.name, info.name,
                                                                          seed)],
                                                        cfg, study.evaluation))
                labels.append(f"ablate {m.name}/{info.name} seed={seed}")
                owners.append(m.name)
    out.add(gather(futures, labels, owners), "ablations", "ablate")

    futures, labels, owners, probe_of = [], [], [], []
    for m in models:
        for info in infos:
            for seed in study.seeds:
                sources = [p for p in own(m, seed) if p.task != info.name]
                with tags("stage:indicators", f"model:{m.name}", f"nlp_task:{info.name}"):
                    futures.append(probe_unit.submit(ctx, m, info, seed, sources, cfg,
                                                     study.evaluation))
                labels.append(f"probe {m.name} -> {info.name} seed={seed}")
                owners.append(m.name)
                probe_of.append((m.name, info.name, seed))
    probes: dict[str, list[dict]] = {m.name: [] for m in models}
    for (model, target, seed), o in zip(probe_of, gather(futures, labels, owners),
                                        strict=True):
        probes[model].append({"seed": seed, "target_task": target, "scores": o.scores})
        out.count("probe", int(o.computed), int(not o.computed))

    # 4: the analyses over the run's rows
    futures, labels, owners = [], [], []
    for m in models:
        pairs = out.keys.get((m.name, "indicators"), [])
        with tags("stage:indicators", f"model:{m.name}"):
            futures.append(correlations_unit.submit(ctx, m.name, cells.get(m.name, []), pairs))
        labels.append(f"correlate {m.name}")
        owners.append(m.name)
    out.add(gather(futures, labels, owners), "correlations", "correlate")
    futures, labels, owners = [], [], []
    for m in models:
        pairs = out.keys.get((m.name, "indicators"), [])
        with tags("stage:indicators", f"model:{m.name}"):
            futures.append(recommend_unit.submit(ctx, m.name, cells.get(m.name, []), pairs,
                                                 probes[m.name]))
        labels.append(f"recommend {m.name}")
        owners.append(m.name)
    out.add(gather(futures, labels, owners), "recommendations", "recommend")

    for table in ("indicators", "ablations", "correlations", "recommendations"):
        parts = [(m, ks) for (m, t), ks in out.keys.items() if t == table]
        out.rows[table] = run_rows(storage, table, study.name, parts)
    return out
