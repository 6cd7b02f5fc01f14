"""How complete a study is, from its tables alone: ``prompt-transfer status STUDY.yaml``.

The expected units come from the study file and the content keys the flow would use
(:func:`tasks.units.train_config_key`, :func:`~tasks.units.prompt_key`,
:func:`~tasks.units.eval_config_key`, :func:`~tasks.units.plan_cells`); each NLP task's
identity is read with :func:`~tasks.units.nlp_task_info`, which writes nothing. A unit is done
when the flow would skip it:

- ``prepare <task>``: the task's data loads and its copy is in storage
  (``task_data/<name>/<fingerprint>.parquet``); a task whose data does not load is listed
  with its error, and its prompts and evaluations count as missing (a run would stop there);
- ``train <model>/<task> seed=<s>``: this study's ``prompts`` table holds the prompt key and
  its prompt file is intact (the flow's planning, :func:`flows.core_units.plan_train`);
- then each stage of the study gives its rows (:meth:`flows.stage_api.Stage.status`):
  ``evaluate <model> -> <target>`` and ``cells`` (cross_task: every planned cell of the target
  with both metrics in ``cross_task`` and a row in ``cross_task_predictions``), ``project``,
  ``cross_model``, ``tpt_rank``, ``tpt``, ``indicators``, ``ablate``: planned from the stored
  rows they build on (prompt rows, projector rows, rankings), with the flow's keys; a unit
  whose inputs are not stored yet counts as missing.

The latest run of the study (by ``finished_at``) comes from the ``runs`` table, with the failed
units it recorded in its ``failures`` column. Nothing is written and nothing is trained.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from flows.core_units import plan_prepare, plan_train
from flows.stage_api import StatusState, ordered_stages
from prompt_core.config import StudyConfig
from prompt_core.errors import InputError
from tasks.storage import Storage, open_storage
from tasks.tables import PromptRow, read_partition, stored_rows
from tasks.units import (
    NlpTaskInfo,
    RunContext,
    nlp_task_info,
    prompt_key,
    read_init_prompt,
    train_config_key,
)

__all__ = ["FailedUnit", "LatestRun", "PlannedPrompt", "StageStatus", "StudyStatus",
           "latest_run", "read_partition", "stored_rows", "study_status"]


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
    config_key: str = ""
    model: str = ""


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

    Plans the core parts with the flow's own planning (:mod:`flows.core_units`: the study's
    task data where the study names it, the stored copies, this study's ``prompts`` partition
    and prompt files), then asks every stage of the study for its rows
    (:meth:`flows.stage_api.Stage.status`); writes nothing. InputError when the init prompt
    file cannot be read (as ``run`` would).
    """
    if not isinstance(storage, Storage):
        storage = open_storage(storage or study.storage)
    problems: list[str] = []
    ctx = RunContext(storage.root, study.name, "status")  # planning only: nothing submitted
    prep = plan_prepare(ctx, study, storage, problems)
    prepare = StageStatus("prepare", None, sum(u.is_stored for u in prep), len(prep),
                          [u.label for u in prep if not u.is_stored])
    infos: list[NlpTaskInfo] = []
    unloadable: list[str] = []
    for cfg in study.tasks:
        try:
            infos.append(nlp_task_info(cfg))
        except InputError:
            unloadable.append(cfg.label())
    _, init_sha = read_init_prompt(study.training)
    stages = [prepare]
    planned: dict[tuple[str, str, int], Any] = {}
    prompts: dict[tuple[str, str, int], PromptRow] = {}
    for m in study.models:
        units = plan_train(ctx, study, storage, [m], infos, study.training, problems=problems)
        train = StageStatus("train", m.name, 0, len(study.tasks) * len(study.seeds))
        cfg_key = train_config_key(m, study.training, init_sha)
        it = iter(units)
        for info in infos:
            for seed in study.seeds:
                u = next(it)
                if u.is_stored:
                    train.done += 1
                    prompts[(m.name, info.name, seed)] = u.stored.row
                    planned[(m.name, info.name, seed)] = u.stored.row
                else:
                    train.missing.append(u.label)
                    planned[(m.name, info.name, seed)] = PlannedPrompt(
                        prompt_key(cfg_key, info, seed), seed, info.name, info.type, cfg_key,
                        m.name)
        train.missing += [f"train {m.name}/{label} seed={seed}" for label in unloadable
                          for seed in study.seeds]
        stages.append(train)
    state = StatusState(study, storage, infos, prompts, init_sha, problems, planned=planned)
    for stage in ordered_stages(study):
        if stage.name != "cross_task" and unloadable:
            continue  # a run would stop at prepare: the later stages cannot be planned
        stages += stage.status(state)
    run = latest_run(storage, study.name, problems)
    return StudyStatus(study.name, storage.root, stages, run, problems)
