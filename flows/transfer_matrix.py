"""The ``transfer_matrix`` flow: train a prompt per (model, NLP task, seed), score every prompt
on every target task, write the tables, publish artifacts.

Stages (each a fan-out of Prefect tasks, each unit skipped when its key is already stored)::

    validate (prompt_core.preflight) -> prepare NLP tasks -> train prompts
    -> cross-task evaluation -> runs row + run_keys + artifacts

Run it from Python with :func:`run_study` or from the shell with ``prompt-transfer run``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the ephemeral API starts in a subprocess; on a busy 2-core machine 20 s (the default) is short
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import prefect  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.artifacts import create_progress_artifact, update_progress_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from flows.publish import publish_run  # noqa: E402
from prompt_core.config import StudyConfig, load_study  # noqa: E402
from prompt_core.errors import InputError  # noqa: E402
from prompt_core.preflight import check_study  # noqa: E402
from tasks import progress  # noqa: E402
from tasks.storage import open_storage  # noqa: E402
from tasks.tables import RunKeyRow, RunRow, now_utc, write_part  # noqa: E402
from tasks.units import (  # noqa: E402
    EvalOutcome,
    NlpTaskInfo,
    RunContext,
    TrainOutcome,
    evaluate_target_unit,
    get_nlp_task,
    prepare_nlp_task,
    train_prompt_unit,
)


@dataclass
class StudyResult:
    """What a run did and where its outputs are."""

    run_id: str
    study: str
    storage: str
    status: str = "completed"
    n_prompts_trained: int = 0
    n_prompts_cached: int = 0
    n_cells_evaluated: int = 0
    n_cells_cached: int = 0
    seconds: float = 0.0
    summaries: dict[str, dict] = field(default_factory=dict)  # model -> transfer_summary
    heatmaps: dict[str, str] = field(default_factory=dict)  # model -> uri


def _package_version() -> str:
    try:
        return version("prompt-transfer")
    except PackageNotFoundError:
        return "unknown"


class _StageProgress:
    """Mirror completed units into one Prefect progress artifact (0-100 over all units)."""

    def __init__(self, total: int):
        self.total, self.done = max(total, 1), 0
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="transfer-matrix-progress", description="units done / all units"
        )

    def __call__(self, stage: str) -> None:
        self.done += 1
        update_progress_artifact(self.artifact_id, 100.0 * self.done / self.total,
                                 description=f"{self.done}/{self.total} units ({stage})")


class UnitFailed(RuntimeError):
    """A unit of work failed for a reason other than bad input; the message names the unit."""


def _results(futures: list, labels: list[str]) -> list:
    """Each future's result in order; a failure re-raised naming its unit (bad input as is)."""
    out = []
    for f, label in zip(futures, labels, strict=True):
        try:
            out.append(f.result())
        except InputError:
            raise
        except Exception as exc:
            raise UnitFailed(f"{label}: {type(exc).__name__}: {exc}") from exc
    return out


def _completed(futures: list) -> list:
    return [f.result() for f in futures if f.state.is_completed()]


def _count_work(result: StudyResult, trained: list[TrainOutcome],
                evaluated: list[EvalOutcome]) -> None:
    """Units done vs reused."""
    result.n_prompts_trained = sum(o.trained for o in trained)
    result.n_prompts_cached = len(trained) - result.n_prompts_trained
    result.n_cells_evaluated = sum(o.n_cells_evaluated for o in evaluated)
    result.n_cells_cached = sum(o.n_cells_cached for o in evaluated)


def _write_run_keys(storage, ctx: RunContext, trained: list[TrainOutcome],
                    evaluated: list[EvalOutcome]) -> None:
    """The run's membership: every prompt and cell key it covered, one part per model."""
    now = now_utc()
    by_model: dict[str, list[RunKeyRow]] = {}
    for o in trained:
        by_model.setdefault(o.row.model, []).append(
            RunKeyRow(ctx.run_id, ctx.study, o.row.model, "prompts", o.row.prompt_key, now))
    for e in evaluated:
        by_model.setdefault(e.model, []).extend(
            RunKeyRow(ctx.run_id, ctx.study, e.model, "cross_task", k, now) for k in e.cell_keys)
    for rows in by_model.values():
        write_part(storage, "run_keys", rows, ctx.run_id)


@flow(name="transfer-matrix", log_prints=True)
def transfer_matrix(study: StudyConfig) -> StudyResult:
    """Cross-task transfer matrix for every model in the study (see module docstring)."""
    t0 = time.perf_counter()
    started = now_utc()
    fr_id = flow_run.get_id()
    run_id = fr_id or uuid.uuid4().hex
    # validate: everything knowable before compute (models, lengths, init prompt, task data,
    # duplicate names), all problems in one InputError, before anything is written. The
    # tasks stay loaded (per-process cache) for the prepare stage.
    check_study(study, load_task=get_nlp_task)
    storage = open_storage(study.storage)
    storage.check_writable()
    result = StudyResult(run_id, study.name, storage.root)
    ctx = RunContext(storage.root, study.name, run_id, study.runner.device)
    n_units = len(study.tasks) * (1 + len(study.models) * (len(study.seeds) + 1))
    progress.clear_listeners()
    progress.add_listener(_StageProgress(n_units))
    train_futures: list = []
    eval_futures: list = []
    try:
        # prepare: each NLP task's identity (name, type, data fingerprint)
        progress.start_stage("prepare", len(study.tasks))
        infos: list[NlpTaskInfo] = []
        for cfg in study.tasks:
            infos.append(prepare_nlp_task(cfg, cfg.label()))
            progress.report("prepare")

        # train: fan out per model x task x seed
        progress.start_stage("train", len(study.models) * len(infos) * len(study.seeds))
        train_futures, train_labels = [], []
        for m in study.models:
            for cfg, info in zip(study.tasks, infos, strict=True):
                for seed in study.seeds:
                    train_futures.append(train_prompt_unit.submit(
                        ctx, m, cfg, info, study.training, seed))
                    train_labels.append(f"train {m.name}/{info.name} seed={seed}")
        prompts = [o.row for o in _results(train_futures, train_labels)]

        # evaluate: one unit per model x target task, all sources inside; the target's own
        # prompt (per seed) is passed explicitly as the denominator of relative_score
        progress.start_stage("evaluate", len(study.models) * len(infos))
        eval_futures, eval_labels = [], []
        for m in study.models:
            sources = [p for p in prompts if p.model == m.name]
            for cfg, info in zip(study.tasks, infos, strict=True):
                own = {p.seed: p for p in sources if p.task == info.name}
                eval_futures.append(evaluate_target_unit.submit(
                    ctx, m, cfg, info, own, sources, study.training, study.evaluation))
                eval_labels.append(f"evaluate {m.name} -> {info.name}")
        evaluated = _results(eval_futures, eval_labels)  # raises if a unit failed
        _count_work(result, _completed(train_futures), evaluated)
        _write_run_keys(storage, ctx, _completed(train_futures), evaluated)
        cells = {}
        for e in evaluated:
            cells.setdefault(e.model, []).extend(e.cell_keys)
        publish_run(study, storage, run_id, result, cells)
    except BaseException:
        result.status = "failed"
        with contextlib.suppress(Exception):  # what finished before the failure, best effort
            trained, evaluated = _completed(train_futures), _completed(eval_futures)
            _count_work(result, trained, evaluated)
            _write_run_keys(storage, ctx, trained, evaluated)
        raise
    finally:
        result.seconds = time.perf_counter() - t0
        progress.clear_listeners()
        write_part(storage, "runs", [RunRow(
            run_id=run_id, study=study.name, flow_run_id=fr_id, status=result.status,
            started_at=started, finished_at=now_utc(), storage=storage.root,
            study_config=study.model_dump_json(), n_prompts_trained=result.n_prompts_trained,
            n_prompts_cached=result.n_prompts_cached,
            n_cells_evaluated=result.n_cells_evaluated, n_cells_cached=result.n_cells_cached,
            prefect_version=prefect.__version__, package_version=_package_version(),
        )], run_id)
    return result


def run_study(
    study: StudyConfig | str | Path,
    storage: str | None = None,
    max_workers: int | None = None,
) -> StudyResult:
    """Validate (if given a path) and run a study; the task runner is chosen here."""
    if not isinstance(study, StudyConfig):
        study = load_study(study)
    if storage is not None:
        study = study.model_copy(update={"storage": storage})
    workers = max_workers or study.runner.max_workers
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return transfer_matrix.with_options(task_runner=runner)(study)
