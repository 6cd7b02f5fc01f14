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

import pyarrow as pa

from flows.stage_api import StatusState, ordered_stages
from prompt_core.config import StudyConfig
from prompt_core.errors import InputError
from tasks.storage import Storage, StorageError, open_storage
from tasks.tables import (
    PromptRow,
    get_table,
    list_parts,
    read_part,
    read_table,
)
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
class PlannedPrompt:
    """The fields of a prompt row that :func:`plan_cells` reads, for a prompt not trained."""

    prompt_key: str
    seed: int
    task: str
    task_type: str


def read_partition(storage: Storage, table: str, filters: Mapping[str, str], columns: list[str],
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
    rows = read_partition(storage, "runs", {"study": study}, cols, problems).to_pylist()
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
        stored = set(read_partition(storage, "prompts", where, ["prompt_key"], problems)
                     .column(0).to_pylist())
        planned: dict[tuple[str, int], PlannedPrompt] = {}
        train = StageStatus("train", m.name, 0, n_tasks * len(seeds))
        for label, info in infos.items():
            for seed in seeds:
                if info is not None:
                    p = PlannedPrompt(prompt_key(cfg_key, info, seed), seed, info.name, info.type)
                    planned[(label, seed)] = p
                    if p.prompt_key in stored:
                        train.done += 1
                        continue
                train.missing.append(f"train {m.name}/{names[label]} seed={seed}")
        stages.append(train)

        cells = read_partition(storage, "cross_task", where, ["cell_key", "metric"], problems)
        metrics: dict[str, set[str]] = {}
        for key, metric in zip(cells.column(0).to_pylist(), cells.column(1).to_pylist(),
                               strict=True):
            metrics.setdefault(key, set()).add(metric)
        # a cell is done with both metrics' rows and its per-example predictions (as the unit)
        preds = read_partition(storage, "cross_task_predictions", where, ["cell_key"], problems)
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


def stored_rows(storage: Storage, table: str, where: Mapping[str, str], row_cls: type,
                 problems: list[str]) -> list[Any]:
    cols = [f.name for f in dataclasses.fields(row_cls) if f.name not in where]
    rows = read_partition(storage, table, dict(where), cols, problems).to_pylist()
    return [row_cls(**{**r, **where}) for r in rows]


def _later_stages(study: StudyConfig, storage: Storage, infos: list[NlpTaskInfo],
                  init_sha: str | None, problems: list[str]) -> list[StageStatus]:
    """The plug-in stages' rows (:meth:`flows.stage_api.Stage.status`, in the flow's order):
    planned from the stored rows they build on (prompts, projectors, rankings), with the
    flow's keys. A unit whose inputs are not stored yet counts as missing."""
    ordered = ordered_stages(study)
    if not ordered or len(infos) < len(study.tasks):
        return []
    prompts: dict[tuple[str, str, int], PromptRow] = {}
    for m in study.models:
        rows = stored_rows(storage, "prompts", {"study": study.name, "model": m.name},
                           PromptRow, problems)
        cfg_key = train_config_key(m, study.training, init_sha)
        by_key = {r.prompt_key: r for r in rows}
        for info in infos:
            for seed in study.seeds:
                r = by_key.get(prompt_key(cfg_key, info, seed))
                if r is not None:
                    prompts[(m.name, info.name, seed)] = r
    state = StatusState(study, storage, infos, prompts, init_sha, problems)
    out: list[StageStatus] = []
    for stage in ordered:
        out += stage.status(state)
    return out
