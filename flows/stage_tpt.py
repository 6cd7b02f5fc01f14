"""The ``tpt`` stage: transferable prompt tuning, a target prompt trained from a source prompt.

Parts: ``tpt_rank`` (``tpt.top_k`` only: one unit per model and target that scores every
candidate source prompt on the target's VALIDATION split, table ``tpt_rankings``) and ``tpt``
(one unit per model, target, source and seed: the TPT prompt's dev curve against random init
with the same budget, table ``tpt``). Sources of another model go through the ``cross_model``
stage's projector of that pair, so this stage runs after it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, cast

import pandas as pd

from flows.core_units import plan_train
from flows.publish_stages import publish_tpt, stage_summary_markdown
from flows.stage_api import (
    FlowState,
    PromptIndex,
    StageRun,
    StatusState,
    index_prompts,
    register_stage,
)
from flows.status import PlannedPrompt, StageStatus
from flows.submit import Planned, unit_tags
from prompt_core.config import STAGE_SPECS, ModelConfig, StudyConfig, TrainConfig
from tasks.stage_units import KeyedOutcome, read_curve, tpt_key, tpt_prompt_key, tpt_unit
from tasks.storage import Storage
from tasks.tables import ProjectorRow, PromptRow, TptRankRow, TptRow, read_partition
from tasks.tpt_ranking import RankOutcome, rank_key, rank_tpt_sources_unit
from tasks.units import NlpTaskInfo, RunContext, prompt_key, stored_row, train_config_key


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


def run_rankings(ctx: RunContext, study: StudyConfig, storage, jobs: list[RankJob], run_units
                 ) -> list[RankOutcome]:
    """Each ranking: stored (every candidate's row under its key) or scored by a task run."""
    units = []
    for j in jobs:
        key = rank_key(j.model, j.target, j.own, j.candidates, study.tpt, study.evaluation)
        where = {"study": study.name, "model": j.model.name, "target_task": j.target.name}
        table = read_partition(storage, "tpt_rankings", where,
                               [f.name for f in fields(TptRankRow) if f.name not in where], [])
        rows = [TptRankRow(**{**r, **where}) for r in table.to_pylist() if r["rank_key"] == key]
        stored = (RankOutcome(j.model.name, j.target.name, key, rows, computed=False)
                  if len(rows) == len(j.candidates) else None)
        units.append(Planned(
            j.label, j.model.name, stored=stored,
            tags=unit_tags("tpt_rank", j.model.name),
            submit=None if stored else functools.partial(
                rank_tpt_sources_unit.submit, ctx, j.model, j.target, j.own, j.candidates,
                study.tpt, study.evaluation)))
    return run_units("tpt_rank", units)


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


def run_tpt(ctx: RunContext, study: StudyConfig, storage, jobs: list[TptJob], run_units
            ) -> list[KeyedOutcome]:
    """Each TPT run: stored (its ``tpt`` row) or trained by a task run."""
    train = study.tpt.train_config(study.training)
    k = study.tpt.score_at_step or train.eval_every
    units = []
    for j in jobs:
        key = tpt_key(tpt_prompt_key(j.model, train, j.target, j.source, j.projector, j.seed),
                      j.baseline, study.tpt, k)
        where = {"study": study.name, "model": j.model.name, "target_task": j.target.name}
        row = stored_row(storage, "tpt", where, key, TptRow, "tpt_key")
        units.append(Planned(
            j.label, j.model.name, stored=KeyedOutcome(row, computed=False) if row else None,
            tags=unit_tags("tpt", j.model.name),
            submit=None if row else functools.partial(
                tpt_unit.submit, ctx, j.model, j.target, j.source, j.source_label, j.projector,
                j.baseline, train, study.tpt, j.seed)))
    return run_units("tpt", units)


# --- what the run covered, read back for publishing -----------------------------------------


def tpt_curves(storage, study: str, rows: list, prompts: dict[str, PromptRow]
               ) -> pd.DataFrame:
    """Dev curves (prompt_key, step, elapsed_s, dev_accuracy) of the run's TPT prompts and
    their random-init baselines."""
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


class TptStage:
    name: ClassVar[str] = "tpt"
    after: ClassVar[tuple[str, ...]] = ("cross_model",)
    tables: ClassVar[tuple[str, ...]] = ("tpt_rankings", "tpt")

    def unit_counts(self, study: StudyConfig, infos: list) -> dict[str, int]:
        counts = {"tpt": n_tpt_units(study, infos)}
        if tpt_train_config(study) is not None:  # its baselines: more prompts to train
            counts = {"train": (len(tpt_models(study)) * len(tpt_targets(study, infos))
                                * len(study.seeds)), **counts}
        if study.tpt.top_k is not None:
            counts = {"tpt_rank": len(tpt_models(study)) * len(tpt_targets(study,
                                                                                    infos)),
                      **counts}
        return counts

    def run(self, state: FlowState) -> StageRun:
        study, out = state.study, StageRun()
        index = index_prompts(state.prompts)
        base = index
        tpt_train = tpt_train_config(study)
        if tpt_train is not None:  # random-init baselines trained again with TPT's budget
            out.prompts = state.run_units("train", plan_train(
                state.ctx, study, state.storage, tpt_models(study),
                tpt_targets(study, state.infos), tpt_train, label_suffix=" (tpt budget)"))
            base = index_prompts([o.row for o in out.prompts])
        projectors = (state.results["cross_model"].rows["projectors"]
                      if "cross_model" in state.results else [])
        rankings: dict = {}
        if study.tpt.top_k is not None:  # top-k sources rank on validation data, never test
            ranked = run_rankings(state.ctx, study,
                                  state.storage, plan_rankings(study, state.infos, index),
                                  state.run_units)
            out.count("tpt_rank", sum(o.computed for o in ranked),
                      sum(not o.computed for o in ranked))
            for o in ranked:
                out.add_keys(o.model, "tpt_rankings", [o.key])
            rankings = rankings_by_model(ranked)
        jobs = plan_tpt(study, state.infos, index, base, projectors, rankings)
        outs = run_tpt(state.ctx, study, state.storage, jobs, state.run_units)
        out.count("tpt", sum(o.computed for o in outs), sum(not o.computed for o in outs))
        for o in outs:
            out.add_keys(o.row.model, "tpt", [o.row.tpt_key])
        every = {p.prompt_key: p for p in [*state.prompts, *(b.row for b in out.prompts)]}
        out.rows = {"tpt": pd.DataFrame([asdict(o.row) for o in outs]),
                    "tpt_curves": tpt_curves(state.storage, study.name,
                                                  [o.row for o in outs], every)}
        return out

    def publish(self, state: FlowState, run: StageRun) -> tuple[list[str], dict[str, str]]:
        rows = run.rows["tpt"]
        if not len(rows):
            return [], {}
        names = [m.name for m in state.study.models]
        uris = {f"tpt {k}": v for k, v in publish_tpt(
            state.storage, state.study.name, state.ctx.run_id, rows, run.rows["tpt_curves"],
            model_names=names).items()}
        text = stage_summary_markdown(None, rows, model_names=names)
        return ([text] if text else []), uris

    def status(self, state: StatusState) -> list[StageStatus]:
        return tpt_status(state)


def tpt_status(state: StatusState) -> list[StageStatus]:
    """Ranking units (top-k) and TPT runs whose inputs are stored and whose key is."""
    study, storage, infos, prompts = state.study, state.storage, state.infos, state.prompts
    init_sha, problems = state.init_sha, state.problems
    projectors: list[ProjectorRow] = state.shared.get("projectors", [])
    tpt = study.tpt
    train = tpt.train_config(study.training)
    k = tpt.score_at_step or train.eval_every
    proj = {(p.source_model, p.target_model, p.objective, p.seed): p for p in projectors}
    out = []
    for m in tpt_models(study):
        targets = tpt_targets(study, infos)
        n_sources = (min(tpt.top_k, len(infos) - 1) if tpt.top_k is not None else None)
        stage = StageStatus("tpt", m.name, 0, 0)
        base_cfg = train_config_key(m, train, init_sha)
        stored = set()
        for t in targets:
            rows = read_partition(storage, "tpt", {"study": study.name, "model": m.name,
                                           "target_task": t.name}, ["tpt_key"], problems)
            stored |= set(rows.column(0).to_pylist())
        ranking = None
        if n_sources:
            ranking, rank_stage = stored_rankings(study, storage, m, infos, init_sha, problems)
            out.append(rank_stage)
        for t in targets:
            if tpt.top_k is not None:
                chosen = [(m.name, s) for s in (top_sources(ranking, t.name, tpt.top_k)
                                                if ranking is not None and len(ranking) else [])]
                chosen += [(None, None)] * (n_sources - len(chosen))  # not rankable yet
            else:
                chosen = [(s.model or m.name, s.task) for s in tpt.sources
                          if not ((s.model or m.name) == m.name and s.task == t.name)]
            for seed in study.seeds:
                for smodel, stask in chosen:
                    stage.total += 1
                    label = f"tpt {m.name}/{t.name} <- " + (
                        "(a top-k source)" if stask is None else
                        stask if smodel == m.name else f"{smodel}/{stask}")
                    source = prompts.get((smodel, stask, seed))
                    projector = proj.get((smodel, m.name, tpt.projector_objective, seed))
                    if source is None or (smodel != m.name and projector is None):
                        stage.missing.append(label)
                        continue
                    base_key = prompt_key(base_cfg, t, seed)
                    pkey = tpt_prompt_key(m, train, t, source, projector, seed)
                    baseline = cast(PromptRow, PlannedPrompt(base_key, seed, t.name, t.type))
                    if tpt_key(pkey, baseline, tpt, k) in stored:
                        stage.done += 1
                    else:
                        stage.missing.append(label)
        out.append(stage)
    return out


def stored_rankings(study: StudyConfig, storage: Storage, model, infos: list[NlpTaskInfo],
                    init_sha: str | None, problems: list[str]
                    ) -> tuple[pd.DataFrame, StageStatus]:
    """This study's stored ``tpt_rankings`` rows of ``model`` under the keys the flow would
    use (its plan, :func:`plan_rankings`, on the prompts the train stage would store), and
    the ranking stage's status."""
    cfg_key = train_config_key(model, study.training, init_sha)
    planned: PromptIndex = {
        (model.name, i.name, s): cast(PromptRow, PlannedPrompt(prompt_key(cfg_key, i, s), s,
                                                               i.name, i.type))
        for i in infos for s in study.seeds}
    jobs = [j for j in plan_rankings(study, infos, planned) if j.model.name == model.name]
    stage = StageStatus("tpt_rank", model.name, 0, len(jobs))
    frames = []
    for j in jobs:
        key = rank_key(model, j.target, j.own, j.candidates, study.tpt, study.evaluation)
        where = {"study": study.name, "model": model.name, "target_task": j.target.name}
        rows = read_partition(storage, "tpt_rankings", where,
                              ["rank_key", "source_task", "relative_score"],
                              problems).to_pandas()
        rows = rows[rows["rank_key"] == key]
        if len(rows) == len(j.candidates):
            stage.done += 1
            frames.append(rows.assign(target_task=j.target.name))
        else:
            stage.missing.append(j.label)
    cols = ["rank_key", "source_task", "relative_score", "target_task"]
    return (pd.concat(frames) if frames else pd.DataFrame(columns=cols)), stage


register_stage(TptStage(), STAGE_SPECS["tpt"])  # options: TptConfig
