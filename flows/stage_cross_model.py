"""The ``cross_model`` stage: projectors between models, then the held-out tasks' cells.

Parts: ``project`` (one projector per model pair, objective and seed, trained on
``cross_model.train_tasks``) and ``cross_model`` (one unit per model pair and held-out target
task: every source prompt of the source model through the pair's projectors, and unprojected
where the hidden sizes match, on the target model). Tables ``projectors`` and ``cross_model``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

from flows.publish_stages import publish_cross_model, stage_summary_markdown
from flows.stage_api import (
    FlowState,
    PromptIndex,
    StageRun,
    StatusState,
    index_prompts,
    register_stage,
)
from flows.status import StageStatus
from flows.submit import Planned, unit_tags
from prompt_core.cell_stats import METRICS
from prompt_core.config import STAGE_SPECS, ModelConfig, StudyConfig
from tasks.stage_units import (
    CrossModelOutcome,
    KeyedOutcome,
    evaluate_cross_model_unit,
    plan_cross_model_cells,
    projector_key,
    stored_projector,
    train_projector_unit,
)
from tasks.tables import ProjectorRow, PromptRow, read_partition, run_rows, stored_rows
from tasks.units import NlpTaskInfo, RunContext


@dataclass
class ProjectorJob:
    source: ModelConfig
    target: ModelConfig
    objective: str
    seed: int
    sources: list[PromptRow]
    targets: list[PromptRow]
    infos: list[NlpTaskInfo]

    @property
    def label(self) -> str:
        return f"project {self.source.name}->{self.target.name} [{self.objective}] " \
               f"seed={self.seed}"


def plan_projectors(study: StudyConfig, infos: list[NlpTaskInfo],
                    prompts: PromptIndex) -> list[ProjectorJob]:
    """One projector per (model pair, objective, seed), trained on the training tasks."""
    if "cross_model" not in study.stages:
        return []
    models = {m.name: m for m in study.models}
    train = [i for i in infos if i.name in study.cross_model.train_tasks]
    jobs = []
    for src, tgt in study.model_pairs():
        for objective in study.cross_model.objectives:
            for seed in study.seeds:
                jobs.append(ProjectorJob(
                    models[src], models[tgt], objective, seed,
                    [prompts[(src, i.name, seed)] for i in train],
                    [prompts[(tgt, i.name, seed)] for i in train], train))
    return jobs


def n_cross_model_units(study: StudyConfig, infos: list[NlpTaskInfo]) -> int:
    if "cross_model" not in study.stages:
        return 0
    held_out = [i for i in infos if i.name not in study.cross_model.train_tasks]
    return len(study.model_pairs()) * len(held_out)


def run_projectors(ctx: RunContext, study: StudyConfig, storage, jobs: list[ProjectorJob],
                   run_units) -> list[KeyedOutcome]:
    """Each projector: stored (its row and an intact file) or trained by a task run."""
    cfg = study.cross_model.projector
    units = []
    for j in jobs:
        key = projector_key(j.source, j.target, j.objective, cfg, j.sources, j.targets, j.infos,
                            j.seed)
        row = stored_projector(storage, {"study": study.name, "target_model": j.target.name},
                               key, j.source.name, j.target.name)
        units.append(Planned(
            j.label, j.target.name, stored=KeyedOutcome(row, computed=False) if row else None,
            tags=unit_tags("project", j.target.name, source_model=j.source.name),
            submit=None if row else functools.partial(
                train_projector_unit.submit, ctx, j.source, j.target, j.objective, cfg,
                j.sources, j.targets, j.infos, j.seed)))
    return run_units("project", units)


def complete_cross_model_cells(storage, study: str, target_model: str, target: str,
                               problems: list[str]) -> set[str]:
    """The target's cross-model cell keys with rows of every metric (what the unit counts as
    done), from one read of its partition."""
    where = {"study": study, "target_model": target_model, "target_task": target}
    t = read_partition(storage, "cross_model", where, ["cell_key", "metric"], problems)
    got: dict[str, set[str]] = {}
    for k, metric in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True):
        got.setdefault(k, set()).add(metric)
    return {k for k, ms in got.items() if set(METRICS) <= ms}


def run_cross_model(ctx: RunContext, study: StudyConfig, storage, infos: list[NlpTaskInfo],
                    prompts: PromptIndex, projectors: list[ProjectorRow], run_units
                    ) -> list[CrossModelOutcome]:
    """One unit per (model pair, held-out target task): every source prompt of the source
    model through the pair's projectors (and unprojected), on the target model; stored when
    every planned cell has rows of both metrics."""
    models = {m.name: m for m in study.models}
    cm = study.cross_model
    held_out = [i for i in infos if i.name not in cm.train_tasks]
    units = []
    for src, tgt in study.model_pairs():
        pair_projectors = [p for p in projectors
                           if p.source_model == src and p.target_model == tgt]
        sources = [r for (m, _, _), r in prompts.items() if m == src]
        for info in held_out:
            own = {s: prompts[(tgt, info.name, s)] for s in study.seeds}
            unit = Planned(
                f"cross-model {src}->{tgt} -> {info.name}", tgt,
                tags=unit_tags("cross_model", tgt, source_model=src),
                submit=functools.partial(
                    evaluate_cross_model_unit.submit, ctx, models[src], models[tgt], info, own,
                    sources, pair_projectors, cm.unprojected, list(cm.train_tasks),
                    study.evaluation))
            keys = [c.key for c in plan_cross_model_cells(
                models[tgt], info, own, sources, pair_projectors, cm.unprojected,
                study.evaluation)]
            done = complete_cross_model_cells(storage, study.name, tgt, info.name, [])
            if all(k in done for k in keys):
                unit.submit = None
                unit.stored = CrossModelOutcome(src, tgt, info.name, keys, 0, len(keys), [])
            units.append(unit)
    return run_units("cross_model", units)


class CrossModelStage:
    name: ClassVar[str] = "cross_model"
    after: ClassVar[tuple[str, ...]] = ()
    tables: ClassVar[tuple[str, ...]] = ("projectors", "cross_model")

    def unit_counts(self, study: StudyConfig, infos: list) -> dict[str, int]:
        return {"project": (len(study.model_pairs()) * len(study.cross_model.objectives)
                            * len(study.seeds)),
                "cross_model": n_cross_model_units(study, infos)}

    def run(self, state: FlowState) -> StageRun:
        study, out = state.study, StageRun()
        index = index_prompts(state.prompts)
        projected = run_projectors(state.ctx, study, state.storage,
                                   plan_projectors(study, state.infos, index), state.run_units)
        out.count("project", sum(o.computed for o in projected),
                  sum(not o.computed for o in projected))
        for o in projected:
            out.add_keys(o.row.target_model, "projectors", [o.row.projector_key])
        projectors = [o.row for o in projected]
        xm = run_cross_model(state.ctx, study, state.storage, state.infos, index, projectors,
                             state.run_units)
        out.count("cross_model", sum(o.n_cells_evaluated for o in xm),
                  sum(o.n_cells_cached for o in xm))
        for o in xm:
            out.add_keys(o.target_model, "cross_model", o.cell_keys)
        out.rows = {"projectors": projectors,
                    "cross_model": run_rows(state.storage, "cross_model", study.name,
                                            [(o.target_model, o.cell_keys) for o in xm])}
        return out

    def publish(self, state: FlowState, run: StageRun) -> tuple[list[str], dict[str, str]]:
        names = [m.name for m in state.study.models]
        rows = run.rows["cross_model"]
        uris = {f"cross-model {k}": v for k, v in publish_cross_model(
            state.storage, state.study.name, state.ctx.run_id, rows, model_names=names).items()}
        text = stage_summary_markdown(rows, None, model_names=names)
        return ([text] if text else []), uris

    def status(self, state: StatusState) -> list[StageStatus]:
        """Projectors whose inputs (the training tasks' prompts) are stored and whose key is;
        a held-out target is done when every planned cell has both metrics' rows."""
        study, storage, prompts = state.study, state.storage, state.prompts
        models = {m.name: m for m in study.models}
        cm = study.cross_model
        train = [i for i in state.infos if i.name in cm.train_tasks]
        held_out = [i for i in state.infos if i.name not in cm.train_tasks]
        projectors: list[ProjectorRow] = []
        out: list[StageStatus] = []
        for src, tgt in study.model_pairs():
            stage = StageStatus("project", tgt, 0, len(cm.objectives) * len(study.seeds))
            stored = {r.projector_key: r for r in stored_rows(
                storage, "projectors", {"study": study.name, "target_model": tgt},
                ProjectorRow, state.problems)}
            for objective in cm.objectives:
                for seed in study.seeds:
                    label = f"project {src}->{tgt} [{objective}] seed={seed}"
                    try:
                        srcs = [prompts[(src, i.name, seed)] for i in train]
                        tgts = [prompts[(tgt, i.name, seed)] for i in train]
                    except KeyError:
                        stage.missing.append(label)
                        continue
                    key = projector_key(models[src], models[tgt], objective, cm.projector,
                                        srcs, tgts, train, seed)
                    if key in stored:
                        stage.done += 1
                        projectors.append(stored[key])
                    else:
                        stage.missing.append(label)
            out.append(stage)
        state.shared["projectors"] = projectors
        for src, tgt in study.model_pairs():
            stage = StageStatus("cross_model", tgt, 0, len(held_out))
            pair = [p for p in projectors if p.source_model == src and p.target_model == tgt]
            sources = [r for (m, _, _), r in prompts.items() if m == src]
            for info in held_out:
                if self._target_done(state, src, tgt, info, pair, sources):
                    stage.done += 1
                else:
                    stage.missing.append(f"cross-model {src}->{tgt} -> {info.name}")
            out.append(stage)
        return out

    @staticmethod
    def _target_done(state: StatusState, src: str, tgt: str, info, pair: list,
                     sources: list) -> bool:
        study, cm = state.study, state.study.cross_model
        own = {s: state.prompts.get((tgt, info.name, s)) for s in study.seeds}
        if (None in own.values() or len(pair) != len(cm.objectives) * len(study.seeds)
                or len(sources) != len(state.infos) * len(study.seeds)):
            return False
        target_model = next(m for m in study.models if m.name == tgt)
        cells = plan_cross_model_cells(target_model, info, own, sources, pair, cm.unprojected,
                                       study.evaluation)
        done = complete_cross_model_cells(state.storage, study.name, tgt, info.name,
                                          state.problems)
        return all(c.key in done for c in cells)


register_stage(CrossModelStage(), STAGE_SPECS["cross_model"])  # options: CrossModelConfig
