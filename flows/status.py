"""How complete a study is, from its tables alone: ``prompt-transfer status STUDY.yaml``.

The expected units come from the study file and the content keys the flow would use
(:func:`tasks.units.train_config_key`, :func:`~tasks.units.prompt_key`,
:func:`~tasks.units.eval_config_key`, :func:`~tasks.units.plan_cells`); each NLP task's
identity is read with :func:`~tasks.units.nlp_task_info`, which writes nothing. A unit is done
when the flow would skip it:

- ``prepare <task>``: the task's data loads and its copy is in storage
  (``task_data/<name>/<fingerprint>.parquet``); a task whose data does not load is listed
  with its error, and its prompts and evaluations count as missing (a run would stop there);
- ``train <model>/<task> seed=<s>``: this study's ``prompts`` table holds the prompt key;
- ``evaluate <model> -> <target>``: every planned cell of the target (each source prompt,
  random and none per seed) is in this study's ``cross_task`` table with both metrics and in
  ``cross_task_predictions``;
- ``cells``: the same cells counted one by one;
- ``project``, ``cross_model``, ``tpt`` (studies with those stages): planned from the stored
  rows they build on (prompt rows, projector rows, the cross-task cells a top-k ranks), with
  the flow's keys; a unit whose inputs are not stored yet counts as missing.

The latest run of the study (by ``finished_at``) comes from the ``runs`` table, with the failed
units it recorded in its ``failures`` column. Nothing is written and nothing is trained.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import pandas as pd
import pyarrow as pa

from flows import stages as plan
from prompt_core.config import StudyConfig
from prompt_core.errors import InputError
from tasks.stage_units import plan_cross_model_cells, projector_key, tpt_key, tpt_prompt_key
from tasks.storage import Storage, StorageError, open_storage
from tasks.tables import (
    ProjectorRow,
    PromptRow,
    get_table,
    list_parts,
    read_part,
    read_table,
)
from tasks.tpt_ranking import rank_key
from tasks.units import (
    METRICS,
    NlpTaskInfo,
    eval_config_key,
    nlp_task_info,
    plan_cells,
    prompt_key,
    read_init_prompt,
    task_data_key,
    train_config_key,
)


@dataclass
class StageStatus:
    """Units of one stage for one model (``model`` is None for ``prepare``)."""

    stage: str  # prepare | train | evaluate | cells
    model: str | None
    done: int
    total: int
    missing: list[str] = field(default_factory=list)  # unit labels (none listed for cells)


@dataclass
class FailedUnit:
    """A unit the latest run recorded as failed (``runs.failures``)."""

    unit: str
    stage: str | None
    model: str | None
    error: str


@dataclass
class LatestRun:
    """The study's most recently finished run (completed or failed)."""

    run_id: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime
    failures: list[FailedUnit] = field(default_factory=list)


@dataclass
class StudyStatus:
    """Completion of a study: per stage and model, the latest run, and what could not be
    read (a task's data, a damaged table part)."""

    study: str
    storage: str
    stages: list[StageStatus]
    latest_run: LatestRun | None
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every unit of every stage is done."""
        return all(s.done == s.total for s in self.stages)

    def missing(self) -> list[str]:
        """Every missing unit's label, stage by stage."""
        return [u for s in self.stages for u in s.missing]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (datetimes as ISO strings)."""
        d = asdict(self)
        d["complete"] = self.complete
        if self.latest_run is not None:
            for k in ("started_at", "finished_at"):
                d["latest_run"][k] = getattr(self.latest_run, k).isoformat()
        return d


@dataclass(frozen=True)
class _Planned:
    """The fields of a prompt row that :func:`plan_cells` reads, for a prompt not trained."""

    prompt_key: str
    seed: int
    task: str
    task_type: str


def _read(storage: Storage, table: str, filters: Mapping[str, str], columns: list[str],
          problems: list[str]) -> pa.Table:
    """Rows of one partition; a damaged part counts as absent and is listed in ``problems``."""
    try:
        return read_table(storage, table, filters, columns=columns)
    except StorageError:
        pass
    parts = []
    for key, _ in list_parts(storage, table, filters):
        try:
            parts.append(read_part(storage, table, key).select(columns))
        except StorageError as exc:
            problems.append(f"{exc} (counted as absent; `prompt-transfer verify` lists it)")
    if parts:
        return pa.concat_tables(parts)
    return get_table(table).schema.empty_table().select(columns)


def _failures(raw: str | None) -> list[FailedUnit]:
    """The ``failures`` JSON of a runs row (None in rows written before the column existed)."""
    if not raw:
        return []
    try:
        items = json.loads(raw)
    except ValueError:
        return [FailedUnit("?", None, None, f"unreadable failures column: {raw[:200]}")]
    if not isinstance(items, list):
        items = [items]
    out = []
    for it in items:
        if isinstance(it, dict):
            out.append(FailedUnit(str(it.get("unit", "?")), it.get("stage"), it.get("model"),
                                  str(it.get("error", ""))))
        else:
            out.append(FailedUnit("?", None, None, str(it)))
    return out


def latest_run(storage: Storage, study: str, problems: list[str] | None = None
               ) -> LatestRun | None:
    """The study's run with the latest ``finished_at`` (any status), or None."""
    problems = [] if problems is None else problems
    cols = ["run_id", "status", "started_at", "finished_at", "failures"]
    rows = _read(storage, "runs", {"study": study}, cols, problems).to_pylist()
    if not rows:
        return None
    r = max(rows, key=lambda r: (r["finished_at"], r["run_id"]))
    return LatestRun(r["run_id"], r["status"], r["started_at"], r["finished_at"],
                     _failures(r["failures"]))


def study_status(study: StudyConfig, storage: Storage | str | None = None) -> StudyStatus:
    """How complete ``study`` is in ``storage`` (default: the study's root), from the tables.

    Reads the study's task data where the study names it (to know the tasks' fingerprints),
    its init prompt file if any, whether each task's copy is stored, and this study's
    partitions of ``prompts``, ``cross_task`` and ``runs``; writes nothing. InputError when
    the init prompt file cannot be read (as ``run`` would).
    """
    if not isinstance(storage, Storage):
        storage = open_storage(storage or study.storage)
    problems: list[str] = []
    stages: list[StageStatus] = []

    infos: dict[str, NlpTaskInfo | None] = {}  # task label -> identity (None: not loadable)
    prepare = StageStatus("prepare", None, 0, len(study.tasks))
    for cfg in study.tasks:
        label = cfg.label()
        try:
            info = infos[label] = nlp_task_info(cfg)
        except InputError as exc:
            info = infos[label] = None
            problems.append(f"prepare {label}: {exc}")
        if info is not None and storage.exists(task_data_key(info.name, info.fingerprint)):
            prepare.done += 1
        else:
            prepare.missing.append(f"prepare {label}")
    stages.append(prepare)
    names = {label: (i.name if i else label) for label, i in infos.items()}

    _, init_sha = read_init_prompt(study.training)
    seeds = list(study.seeds)
    n_tasks = len(study.tasks)
    per_target = n_tasks * len(seeds) + len(seeds) * (
        int(study.evaluation.random_prompt) + int(study.evaluation.no_prompt))
    evaluate_stages: list[StageStatus] = []
    cells_stages: list[StageStatus] = []
    for m in study.models:
        where = {"study": study.name, "model": m.name}
        cfg_key = train_config_key(m, study.training, init_sha)
        stored = set(_read(storage, "prompts", where, ["prompt_key"], problems)
                     .column(0).to_pylist())
        planned: dict[tuple[str, int], _Planned] = {}
        train = StageStatus("train", m.name, 0, n_tasks * len(seeds))
        for label, info in infos.items():
            for seed in seeds:
                if info is not None:
                    p = _Planned(prompt_key(cfg_key, info, seed), seed, info.name, info.type)
                    planned[(label, seed)] = p
                    if p.prompt_key in stored:
                        train.done += 1
                        continue
                train.missing.append(f"train {m.name}/{names[label]} seed={seed}")
        stages.append(train)

        cells = _read(storage, "cross_task", where, ["cell_key", "metric"], problems)
        metrics: dict[str, set[str]] = {}
        for key, metric in zip(cells.column(0).to_pylist(), cells.column(1).to_pylist(),
                               strict=True):
            metrics.setdefault(key, set()).add(metric)
        # a cell is done with both metrics' rows and its per-example predictions (as the unit)
        preds = _read(storage, "cross_task_predictions", where, ["cell_key"], problems)
        with_preds = set(preds.column(0).to_pylist())
        complete = {k for k, ms in metrics.items() if set(METRICS) <= ms and k in with_preds}
        ev_key = eval_config_key(cfg_key, study.evaluation)
        sources = cast(list[PromptRow], list(planned.values()))
        evaluate = StageStatus("evaluate", m.name, 0, n_tasks)
        cell_stage = StageStatus("cells", m.name, 0, n_tasks * per_target)
        for label, info in infos.items():
            unit_done = False
            if info is not None:
                own = cast(dict[int, PromptRow], {s: planned[(label, s)] for s in seeds})
                plan = plan_cells(ev_key, info, own, sources, seeds, study.training,
                                  study.evaluation)
                n_done = sum(c.key in complete for c in plan)
                cell_stage.done += n_done
                unit_done = n_done == len(plan) == per_target
            if unit_done:
                evaluate.done += 1
            else:
                evaluate.missing.append(f"evaluate {m.name} -> {names[label]}")
        if "cross_task" in study.stages:
            evaluate_stages.append(evaluate)
            cells_stages.append(cell_stage)
    stages += evaluate_stages + cells_stages  # flow order: prepare, train, evaluate, cells
    stages += _later_stages(study, storage, [i for i in infos.values() if i is not None],
                            init_sha, problems)
    run = latest_run(storage, study.name, problems)
    return StudyStatus(study.name, storage.root, stages, run, problems)


# --- the later stages (cross_model, tpt) ----------------------------------------------------


def _stored_rows(storage: Storage, table: str, where: Mapping[str, str], row_cls: type,
                 problems: list[str]) -> list[Any]:
    cols = [f.name for f in dataclasses.fields(row_cls) if f.name not in where]
    rows = _read(storage, table, dict(where), cols, problems).to_pylist()
    return [row_cls(**{**r, **where}) for r in rows]


def _later_stages(study: StudyConfig, storage: Storage, infos: list[NlpTaskInfo],
                  init_sha: str | None, problems: list[str]) -> list[StageStatus]:
    """``project``, ``cross_model`` and ``tpt`` units: planned from the stored rows they build
    on (prompts, projectors, the validation rankings for top-k), with the flow's keys. A unit
    whose inputs are not stored yet counts as missing."""
    if (not {"cross_model", "tpt", "indicators"} & set(study.stages)
            or len(infos) < len(study.tasks)):
        return []
    models = {m.name: m for m in study.models}
    prompts: plan.PromptIndex = {}
    for m in study.models:
        rows = _stored_rows(storage, "prompts", {"study": study.name, "model": m.name},
                            PromptRow, problems)
        cfg_key = train_config_key(m, study.training, init_sha)
        by_key = {r.prompt_key: r for r in rows}
        for info in infos:
            for seed in study.seeds:
                r = by_key.get(prompt_key(cfg_key, info, seed))
                if r is not None:
                    prompts[(m.name, info.name, seed)] = r
    out: list[StageStatus] = []
    projectors: list[ProjectorRow] = []
    if "cross_model" in study.stages:
        cm = study.cross_model
        train = [i for i in infos if i.name in cm.train_tasks]
        held_out = [i for i in infos if i.name not in cm.train_tasks]
        for src, tgt in study.model_pairs():
            stage = StageStatus("project", tgt, 0, len(cm.objectives) * len(study.seeds))
            stored = {r.projector_key: r for r in _stored_rows(
                storage, "projectors", {"study": study.name, "target_model": tgt},
                ProjectorRow, problems)}
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
        for src, tgt in study.model_pairs():
            stage = StageStatus("cross_model", tgt, 0, len(held_out))
            pair = [p for p in projectors if p.source_model == src and p.target_model == tgt]
            sources = [r for (m, _, _), r in prompts.items() if m == src]
            for info in held_out:
                label = f"cross-model {src}->{tgt} -> {info.name}"
                own = {s: prompts.get((tgt, info.name, s)) for s in study.seeds}
                complete_inputs = (None not in own.values()
                                   and len(pair) == len(cm.objectives) * len(study.seeds)
                                   and len(sources) == len(infos) * len(study.seeds))
                if complete_inputs:
                    cells = plan_cross_model_cells(models[tgt], info, own, sources, pair,
                                                   cm.unprojected, study.evaluation)
                    where = {"study": study.name, "target_model": tgt, "target_task": info.name}
                    t = _read(storage, "cross_model", where, ["cell_key", "metric"], problems)
                    got: dict[str, set[str]] = {}
                    for k, metric in zip(t.column(0).to_pylist(), t.column(1).to_pylist(),
                                         strict=True):
                        got.setdefault(k, set()).add(metric)
                    if all(set(METRICS) <= got.get(c.key, set()) for c in cells):
                        stage.done += 1
                        continue
                stage.missing.append(label)
            out.append(stage)
    if "tpt" in study.stages:
        out += _tpt_status(study, storage, infos, prompts, projectors, init_sha, problems)
    if "indicators" in study.stages:
        out += _indicator_status(study, storage, infos, prompts, problems)
    return out


def _indicator_status(study: StudyConfig, storage: Storage, infos: list[NlpTaskInfo],
                      prompts: plan.PromptIndex, problems: list[str]) -> list[StageStatus]:
    """Per indicator model: the prompt pairs with indicator rows (a pair whose prompts are not
    stored yet counts as missing) and the own prompts with an ablation."""
    from itertools import combinations

    from flows.indicator_stage import indicator_models
    from tasks.indicator_units import ablation_key, pair_key

    cfg = study.indicators
    out = []
    for m in indicator_models(study):
        where = {"study": study.name, "model": m.name}
        stored = set(_read(storage, "indicators", where, ["pair_key"], problems)
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
        done = set(_read(storage, "ablations", where, ["ablation_key"], problems)
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


def _tpt_status(study: StudyConfig, storage: Storage, infos: list[NlpTaskInfo],
                prompts: plan.PromptIndex, projectors: list[ProjectorRow],
                init_sha: str | None, problems: list[str]) -> list[StageStatus]:
    tpt = study.tpt
    train = tpt.train_config(study.training)
    k = tpt.score_at_step or train.eval_every
    proj = {(p.source_model, p.target_model, p.objective, p.seed): p for p in projectors}
    out = []
    for m in plan.tpt_models(study):
        targets = plan.tpt_targets(study, infos)
        n_sources = (min(tpt.top_k, len(infos) - 1) if tpt.top_k is not None else None)
        stage = StageStatus("tpt", m.name, 0, 0)
        base_cfg = train_config_key(m, train, init_sha)
        stored = set()
        for t in targets:
            rows = _read(storage, "tpt", {"study": study.name, "model": m.name,
                                           "target_task": t.name}, ["tpt_key"], problems)
            stored |= set(rows.column(0).to_pylist())
        ranking = None
        if n_sources:
            ranking, rank_stage = _rankings(study, storage, m, infos, init_sha, problems)
            out.append(rank_stage)
        for t in targets:
            if tpt.top_k is not None:
                chosen = [(m.name, s) for s in (plan.top_sources(ranking, t.name, tpt.top_k)
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
                    baseline = cast(PromptRow, _Planned(base_key, seed, t.name, t.type))
                    if tpt_key(pkey, baseline, tpt, k) in stored:
                        stage.done += 1
                    else:
                        stage.missing.append(label)
        out.append(stage)
    return out


def _rankings(study: StudyConfig, storage: Storage, model, infos: list[NlpTaskInfo],
              init_sha: str | None, problems: list[str]) -> tuple[pd.DataFrame, StageStatus]:
    """This study's stored ``tpt_rankings`` rows of ``model`` under the flow's ranking keys
    (validation scores the flow ranks top-k sources by), and the ranking stage's status."""
    cfg_key = train_config_key(model, study.training, init_sha)
    planned = {(i.name, s): cast(PromptRow, _Planned(prompt_key(cfg_key, i, s), s, i.name,
                                                     i.type))
               for i in infos for s in study.seeds}
    targets = plan.tpt_targets(study, infos)
    stage = StageStatus("tpt_rank", model.name, 0, len(targets))
    frames = []
    for t in targets:
        own = {s: planned[(t.name, s)] for s in study.seeds}
        candidates = [planned[(i.name, s)] for i in infos if i.name != t.name
                      for s in study.seeds]
        key = rank_key(model, t, own, candidates, study.tpt, study.evaluation)
        rows = _read(storage, "tpt_rankings", {"study": study.name, "model": model.name,
                                               "target_task": t.name},
                     ["rank_key", "source_task", "relative_score"], problems).to_pandas()
        rows = rows[rows["rank_key"] == key]
        if len(rows) == len(candidates):
            stage.done += 1
            frames.append(rows.assign(target_task=t.name))
        else:
            stage.missing.append(f"rank tpt sources {model.name} -> {t.name}")
    cols = ["rank_key", "source_task", "relative_score", "target_task"]
    return (pd.concat(frames) if frames else pd.DataFrame(columns=cols)), stage
