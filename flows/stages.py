"""The cross-model and transferable-prompt-tuning stages of the ``transfer-matrix`` flow.

Each function plans one stage's units from what earlier stages returned (prompt rows,
projector rows, the run's cross-task cells), submits them as Prefect tasks and gathers them
through the flow's :func:`flows.transfer_matrix._gather` (progress, failures). Planning is
separate from running (``plan_*``), so the flow knows every stage's unit count up front.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
from prefect import tags

from prompt_core.config import ModelConfig, StudyConfig, TrainConfig
from tasks.stage_units import (
    CrossModelOutcome,
    KeyedOutcome,
    evaluate_cross_model_unit,
    tpt_unit,
    train_projector_unit,
)
from tasks.tables import ProjectorRow, PromptRow, run_rows  # noqa: F401 - re-exported
from tasks.tpt_ranking import RankOutcome, rank_tpt_sources_unit
from tasks.units import NlpTaskInfo, RunContext

PromptIndex = dict[tuple[str, str, int], PromptRow]  # (model, task, seed) -> row


def index_prompts(rows: list[PromptRow]) -> PromptIndex:
    return {(r.model, r.task, r.seed): r for r in rows}


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


def run_projectors(ctx: RunContext, study: StudyConfig, jobs: list[ProjectorJob], gather
                   ) -> list[KeyedOutcome]:
    futures, labels, models = [], [], []
    cfg = study.cross_model.projector
    for j in jobs:
        with tags("stage:project", f"model:{j.target.name}", f"source_model:{j.source.name}"):
            futures.append(train_projector_unit.submit(
                ctx, j.source, j.target, j.objective, cfg, j.sources, j.targets, j.infos,
                j.seed))
        labels.append(j.label)
        models.append(j.target.name)
    return gather(futures, labels, models)


def run_cross_model(ctx: RunContext, study: StudyConfig, infos: list[NlpTaskInfo],
                    prompts: PromptIndex, projectors: list[ProjectorRow], gather
                    ) -> list[CrossModelOutcome]:
    """One unit per (model pair, held-out target task): every source prompt of the source
    model through the pair's projectors (and unprojected), on the target model."""
    models = {m.name: m for m in study.models}
    cm = study.cross_model
    held_out = [i for i in infos if i.name not in cm.train_tasks]
    futures, labels, owners = [], [], []
    for src, tgt in study.model_pairs():
        pair_projectors = [p for p in projectors
                           if p.source_model == src and p.target_model == tgt]
        sources = [r for (m, _, _), r in prompts.items() if m == src]
        for info in held_out:
            own = {s: prompts[(tgt, info.name, s)] for s in study.seeds}
            with tags("stage:cross_model", f"model:{tgt}", f"source_model:{src}",
                      f"nlp_task:{info.name}"):
                futures.append(evaluate_cross_model_unit.submit(
                    ctx, models[src], models[tgt], info, own, sources, pair_projectors,
                    cm.unprojected, list(cm.train_tasks), study.evaluation))
            labels.append(f"cross-model {src}->{tgt} -> {info.name}")
            owners.append(tgt)
    return gather(futures, labels, owners)


# --- TPT ------------------------------------------------------------------------------------


@dataclass
class TptJob:
    model: ModelConfig
    target: NlpTaskInfo
    source: PromptRow
    projector: ProjectorRow | None
    baseline: PromptRow
    seed: int

    @property
    def source_label(self) -> str:
        if self.source.model != self.model.name:
            return f"{self.source.model}/{self.source.task}"
        return self.source.task

    @property
    def label(self) -> str:
        return f"tpt {self.model.name}/{self.target.name} <- {self.source_label}"


def tpt_models(study: StudyConfig) -> list[ModelConfig]:
    if "tpt" not in study.stages:
        return []
    names = study.tpt.models or [m.name for m in study.models]
    return [m for m in study.models if m.name in names]


def tpt_targets(study: StudyConfig, infos: list[NlpTaskInfo]) -> list[NlpTaskInfo]:
    if "tpt" not in study.stages:
        return []
    return [i for i in infos if study.tpt.targets is None or i.name in study.tpt.targets]


def tpt_train_config(study: StudyConfig) -> TrainConfig | None:
    """TPT's training config when it differs from the study's (then its random-init baselines
    are trained as extra prompts), else None."""
    if "tpt" not in study.stages:
        return None
    cfg = study.tpt.train_config(study.training)
    return None if cfg == study.training else cfg


def n_tpt_units(study: StudyConfig, infos: list[NlpTaskInfo]) -> int:
    """TPT units the stage will run (top-k: k per target, fewer when there are fewer
    sources)."""
    if "tpt" not in study.stages:
        return 0
    tpt, n = study.tpt, 0
    for m in tpt_models(study):
        for t in tpt_targets(study, infos):
            if tpt.top_k is not None:
                n += min(tpt.top_k, len(infos) - 1)
            else:
                n += sum(1 for s in tpt.sources if not ((s.model or m.name) == m.name
                                                        and s.task == t.name))
    return n * len(study.seeds)


def top_sources(rankings: pd.DataFrame, target: str, k: int) -> list[str]:
    """The ``k`` source tasks with the highest mean relative accuracy on ``target`` (seeds
    averaged; ties by name) among trained prompts of other tasks, from ``tpt_rankings`` rows:
    accuracy on the target's VALIDATION split over the target's own prompt's (never the test
    split: choosing sources is model selection). Rows of other targets are ignored."""
    d = rankings[(rankings["target_task"] == target) & (rankings["source_task"] != target)]
    mean = d.groupby("source_task")["relative_score"].mean().reset_index()
    mean = mean.sort_values(["relative_score", "source_task"], ascending=[False, True])
    return mean["source_task"].head(k).tolist()


@dataclass
class RankJob:
    """One ranking unit of ``tpt.top_k``: a target's candidate sources (the model's prompts of
    every other task, every seed) and its own prompt per seed."""

    model: ModelConfig
    target: NlpTaskInfo
    own: dict[int, PromptRow]
    candidates: list[PromptRow]

    @property
    def label(self) -> str:
        return f"rank tpt sources {self.model.name} -> {self.target.name}"


def plan_rankings(study: StudyConfig, infos: list[NlpTaskInfo], prompts: PromptIndex
                  ) -> list[RankJob]:
    """One ranking unit per (TPT model, target) when ``tpt.top_k`` chooses the sources."""
    if "tpt" not in study.stages or study.tpt.top_k is None:
        return []
    jobs = []
    for m in tpt_models(study):
        for t in tpt_targets(study, infos):
            own = {s: prompts[(m.name, t.name, s)] for s in study.seeds}
            candidates = [prompts[(m.name, i.name, s)] for i in infos if i.name != t.name
                          for s in study.seeds]
            jobs.append(RankJob(m, t, own, candidates))
    return jobs


def run_rankings(ctx: RunContext, study: StudyConfig, jobs: list[RankJob], gather
                 ) -> list[RankOutcome]:
    futures, labels, models = [], [], []
    for j in jobs:
        with tags("stage:tpt_rank", f"model:{j.model.name}", f"nlp_task:{j.target.name}"):
            futures.append(rank_tpt_sources_unit.submit(ctx, j.model, j.target, j.own,
                                                        j.candidates, study.tpt,
                                                        study.evaluation))
        labels.append(j.label)
        models.append(j.model.name)
    return gather(futures, labels, models)


def rankings_by_model(outcomes: list[RankOutcome]) -> dict[str, pd.DataFrame]:
    """The ranking units' rows, one DataFrame per model (what :func:`plan_tpt` ranks by)."""
    frames: dict[str, list[dict]] = {}
    for o in outcomes:
        frames.setdefault(o.model, []).extend(asdict(r) for r in o.rows)
    return {m: pd.DataFrame(rows) for m, rows in frames.items()}


def plan_tpt(study: StudyConfig, infos: list[NlpTaskInfo], prompts: PromptIndex,
             baselines: PromptIndex, projectors: list[ProjectorRow],
             rankings: dict[str, pd.DataFrame]) -> list[TptJob]:
    """Every (model, target, source, seed) TPT run: explicit sources, or the top-k of the
    model's validation ranking for the target (``rankings``: :func:`rankings_by_model`). A
    source of another model goes through the projector of that pair for
    ``tpt.projector_objective`` and the same seed."""
    tpt = study.tpt
    proj = {(p.source_model, p.target_model, p.objective, p.seed): p for p in projectors}
    jobs = []
    for m in tpt_models(study):
        for t in tpt_targets(study, infos):
            if tpt.top_k is not None:
                chosen = [(m.name, s) for s in top_sources(rankings[m.name], t.name,
                                                           tpt.top_k)]
            else:
                chosen = [(s.model or m.name, s.task) for s in tpt.sources
                          if not ((s.model or m.name) == m.name and s.task == t.name)]
            for seed in study.seeds:
                for smodel, stask in chosen:
                    projector = None
                    if smodel != m.name:
                        projector = proj[(smodel, m.name, tpt.projector_objective, seed)]
                    jobs.append(TptJob(m, t, prompts[(smodel, stask, seed)], projector,
                                       baselines[(m.name, t.name, seed)], seed))
    return jobs


def run_tpt(ctx: RunContext, study: StudyConfig, jobs: list[TptJob], gather
            ) -> list[KeyedOutcome]:
    train = study.tpt.train_config(study.training)
    futures, labels, models = [], [], []
    for j in jobs:
        with tags("stage:tpt", f"model:{j.model.name}", f"nlp_task:{j.target.name}"):
            futures.append(tpt_unit.submit(ctx, j.model, j.target, j.source, j.source_label,
                                           j.projector, j.baseline, train, study.tpt, j.seed))
        labels.append(j.label)
        models.append(j.model.name)
    return gather(futures, labels, models)


# --- what the run covered, read back for publishing -----------------------------------------


def tpt_curves(storage, study: str, rows: list, prompts: dict[str, PromptRow]
               ) -> pd.DataFrame:
    """Dev curves (prompt_key, step, elapsed_s, dev_accuracy) of the run's TPT prompts and
    their random-init baselines."""
    from tasks.stage_units import read_curve

    out = []
    for r in rows:
        base = prompts[r.baseline_prompt_key]
        tpt_row = PromptRow(**{**base.__dict__, "prompt_key": r.tpt_prompt_key})
        for key, prow in ((r.baseline_prompt_key, base), (r.tpt_prompt_key, tpt_row)):
            for step, elapsed, acc in read_curve(storage, study, prow):
                out.append({"prompt_key": key, "model": r.model, "task": r.target_task,
                            "step": step, "elapsed_s": elapsed, "dev_accuracy": acc})
    return pd.DataFrame(out, columns=["prompt_key", "model", "task", "step", "elapsed_s",
                                      "dev_accuracy"]).drop_duplicates()
