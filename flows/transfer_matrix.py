"""The ``transfer_matrix`` flow: train a prompt per (model, NLP task, seed), score every prompt
on every target task, write the tables, publish artifacts.

Parts::

    validate (prompt_core.preflight) -> prepare NLP tasks (copied into storage)
    -> train prompts -> each stage of the study, in dependency order (flows/stage_*.py:
       cross_task, cross_model, tpt, indicators) -> runs row + run_keys + artifacts

Each part is planned from the tables first (:mod:`flows.core_units`, each stage's ``run``):
a unit found stored is counted, not run, and only the missing units become Prefect task runs,
at most a window of them in flight (:mod:`flows.submit`). A rerun with nothing to do costs
what its planning costs. Each submitted unit checks its key and claim again before computing.

Where the units run is chosen per run (``runner.task_runner``): ``threads`` (one process, one
model copy), ``processes`` (Prefect's process pool) or ``dask`` (prefect-dask: a local cluster
or an existing one at ``runner.dask_address``). Units receive ids, configs and storage keys
only, and read task data and prompts from storage, so they run anywhere the storage is
reachable. Training can also fan out as one flow run per (model, source task) of a deployment
(``runner.train_deployment``, see :mod:`flows.fan_out`).

Entry points: :func:`run_study` (Python, the CLI) and :func:`study_flow` (deployments: a study
file path or URI plus overrides, what a person types in the UI's custom-run form).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import prefect
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.core_units import plan_prepare, plan_train
from flows.publish import SUMMARY_KEY, akey, publish_run
from flows.runtime import make_task_runner, runner_environment, torch_threads_per_unit
from flows.stage_api import FlowState, StageRun, StudyResult, ordered_stages
from flows.submit import (  # re-exported: callers import the progress types from here
    DEFAULT_WINDOW,
    Planned,
    ProgressObserver,
    RunProgress,
    UnitFailed,
    UnitLedger,
)
from flows.submit import run_units as submit_units
from prompt_core.config import (
    RunnerKind,
    StudyConfig,
    load_study,
    parse_study_bytes,
    with_overrides,
)
from prompt_core.preflight import check_study
from tasks.storage import open_storage
from tasks.tables import RunKeyRow, RunRow, now_utc, write_part
from tasks.units import NlpTaskInfo, RunContext, TrainOutcome, get_nlp_task

__all__ = ["ProgressObserver", "RunProgress", "StudyResult", "UnitFailed", "current_observer",
           "read_study", "run_study", "study_flow", "transfer_matrix", "with_overrides"]



def _package_version() -> str:
    try:
        return version("prompt-transfer")
    except PackageNotFoundError:
        return "unknown"


# --- progress: the observer of the run_study call in progress ------------------------------

# the observer of the run_study call in progress (its caller's, e.g. the CLI's bars): scoped
# to that call and its thread, where the flow runs, never a process-wide list
_observer: ContextVar[ProgressObserver | None] = ContextVar("progress_observer", default=None)


def current_observer() -> ProgressObserver | None:
    """The observer of the run_study call this flow runs in (None: nobody watches)."""
    return _observer.get()


def _run_keys(ledger: UnitLedger, stage_runs: list[StageRun]) -> dict[tuple[str, str], list]:
    """Every key the run covered, per (model, table): prompts (the core's and the stages'),
    cells (from the outcomes so far, so a failed run records what finished) and each stage's
    keys."""
    keys: dict[tuple[str, str], list[str]] = {}
    for o in ledger.outcomes.get("train", []):
        keys.setdefault((o.row.model, "prompts"), []).append(o.row.prompt_key)
    for run in stage_runs:
        for (model, table), ks in run.keys.items():
            keys.setdefault((model, table), []).extend(ks)
    if not any(t == "cross_task" for _, t in keys):  # a failed run: the cells that finished
        for e in ledger.outcomes.get("evaluate", []):
            keys.setdefault((e.model, "cross_task"), []).extend(e.cell_keys)
    return keys


def _write_run_keys(storage, ctx: RunContext, keys: dict[tuple[str, str], list]) -> None:
    """The run's membership: every key it covered (prompts, cells, projectors, TPT runs), one
    part per model."""
    now = now_utc()
    by_model: dict[str, list[RunKeyRow]] = {}
    for (model, table), ks in keys.items():
        by_model.setdefault(model, []).extend(
            RunKeyRow(ctx.run_id, ctx.study, model, table, k, now) for k in dict.fromkeys(ks))
    for rows in by_model.values():
        write_part(storage, "run_keys", rows, ctx.run_id)


def _count_work(result: StudyResult, ledger: UnitLedger) -> None:
    """Prompts trained vs reused (the core's and the stages' own), cells scored vs reused."""
    trained = ledger.outcomes.get("train", [])
    result.n_prompts_trained = sum(o.trained for o in trained)
    result.n_prompts_cached = len(trained) - result.n_prompts_trained
    evaluated = ledger.outcomes.get("evaluate", [])
    result.n_cells_evaluated = sum(o.n_cells_evaluated for o in evaluated)
    result.n_cells_cached = sum(o.n_cells_cached for o in evaluated)


def _run_name() -> str:
    """Flow runs are named after the study and the start time, e.g. ``demo 2026-11-28 17:56``;
    the matrix run inside a deployment's run says so: ``demo transfer matrix 2026-...``."""
    study = flow_run.get_parameters().get("study")
    name = getattr(study, "name", None)
    if name is None:
        try:
            name = read_study(str(study)).name
        except Exception:  # noqa: BLE001 - the flow itself reports a bad study file
            name = Path(str(study or "study")).stem
    if flow_run.get_flow_name() == "transfer-matrix" and flow_run.get_parent_flow_run_id():
        name = f"{name} transfer matrix"
    return f"{name} {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


@flow(name="transfer-matrix", flow_run_name=_run_name, log_prints=True)
def transfer_matrix(study: StudyConfig, checked: bool = False) -> StudyResult:
    """Cross-task transfer matrix for every model in the study (see module docstring).
    ``checked``: the caller ran :func:`check_study` on this very study already (the CLI, before
    it starts the API), so it is not checked twice."""
    t0 = time.perf_counter()
    started = now_utc()
    fr_id = flow_run.get_id()
    run_id = fr_id or uuid.uuid4().hex
    # validate: everything knowable before compute (models, lengths, init prompt, task data,
    # duplicate names), all problems in one InputError, before anything is written. The
    # tasks stay loaded (per-process cache) for planning and the prepare units.
    if not checked:
        check_study(study, load_task=get_nlp_task)
    storage = open_storage(study.storage)
    storage.check_writable()
    result = StudyResult(run_id, study.name, storage.root)
    ctx = RunContext(storage.root, study.name, run_id, study.runner.device, study.runner.bf16,
                     study.runner.trainings_per_gpu, torch_threads_per_unit(study.runner))
    stages = ordered_stages(study)  # in dependency order
    n_models, n_tasks, n_seeds = len(study.models), len(study.tasks), len(study.seeds)
    progress = RunProgress({"prepare": n_tasks, "train": n_models * n_tasks * n_seeds},
                           current_observer(), key=akey("transfer-matrix-progress", study.name))
    ledger = UnitLedger(failures=result.failures)
    window = max(DEFAULT_WINDOW, 4 * (study.runner.max_workers or 1))
    stage_runs: list[StageRun] = []

    def run_units(part: str, units: list[Planned]) -> list:
        progress.stage(part)
        return submit_units(part, units, progress, ledger, window, study.runner.task_tags)
    try:
        # prepare: each NLP task's identity, its data copied into storage for the workers
        infos: list[NlpTaskInfo] = run_units("prepare", plan_prepare(ctx, study, storage))
        for stage in stages:  # each part's unit count, known once the tasks are prepared
            for part, n in stage.unit_counts(study, infos).items():
                progress.set_total(part, progress.totals.get(part, 0) + n)

        # train: one prompt per model x task x seed (or one flow run per model x task)
        if study.runner.train_deployment:
            trained = _fan_out(ctx, study, infos, progress, ledger)
        else:
            trained = run_units("train", plan_train(ctx, study, storage, list(study.models),
                                                    infos, study.training))
        state = FlowState(ctx, study, storage, infos, [o.row for o in trained], run_units)
        for stage in stages:
            run = state.results[stage.name] = stage.run(state)
            stage_runs.append(run)
            for part, c in run.counts.items():
                if part != "evaluate":  # the matrix's cells have their own columns in runs
                    result.stage_counts.setdefault(part, {"computed": 0, "stored": 0})
                    for k in ("computed", "stored"):
                        result.stage_counts[part][k] += c[k]
        _count_work(result, ledger)
        _write_run_keys(storage, ctx, _run_keys(ledger, stage_runs))
        publish_run(study, storage, run_id, result, [(stage, state) for stage in stages
                                                     if stage.name in state.results])
    except BaseException:
        result.status = "failed"
        with contextlib.suppress(Exception):  # what finished before the failure, best effort
            _count_work(result, ledger)
            _write_run_keys(storage, ctx, _run_keys(ledger, stage_runs))
        raise
    finally:
        result.seconds = time.perf_counter() - t0
        write_part(storage, "runs", [RunRow(
            run_id=run_id, study=study.name, flow_run_id=fr_id, status=result.status,
            started_at=started, finished_at=now_utc(), storage=storage.root,
            study_config=study.model_dump_json(), n_prompts_trained=result.n_prompts_trained,
            n_prompts_cached=result.n_prompts_cached,
            n_cells_evaluated=result.n_cells_evaluated, n_cells_cached=result.n_cells_cached,
            prefect_version=prefect.__version__, package_version=_package_version(),
            failures=json.dumps(result.failures), stage_counts=json.dumps(result.stage_counts),
        )], run_id)
    return result


def _fan_out(ctx: RunContext, study: StudyConfig, infos: list[NlpTaskInfo],
             progress: RunProgress, ledger: UnitLedger) -> list[TrainOutcome]:
    """Training as one flow run per (model, task) of ``runner.train_deployment``."""
    from flows.fan_out import fan_out_training

    progress.stage("train")
    try:
        trained = fan_out_training(ctx, study, infos, study.runner.train_deployment)
    except Exception as exc:
        ledger.failures.append({"unit": f"fan out {study.runner.train_deployment}",
                                "stage": "train", "model": None,
                                "error": f"{type(exc).__name__}: {exc}"})
        raise
    ledger.outcomes.setdefault("train", []).extend(trained)
    for o in trained:
        progress.unit_done("train", f"train {o.row.model}/{o.row.task} seed={o.row.seed}")
    return trained


def run_study(
    study: StudyConfig | str | Path,
    storage: str | None = None,
    max_workers: int | None = None,
    task_runner: RunnerKind | None = None,
    dask_address: str | None = None,
    device: str | None = None,
    train_deployment: str | None = None,
    observer: ProgressObserver | None = None,
    checked: bool = False,
) -> StudyResult:
    """Validate (if given a path) and run a study; the task runner is chosen here.
    ``observer``: called on every stage start and finished unit (the CLI's progress bars), in
    this process, fed by the flow's futures, so it works the same whether the units run in
    threads, processes or on a Dask cluster. ``checked``: the study (with these overrides)
    passed :func:`check_study` already."""
    if not isinstance(study, StudyConfig):
        study = load_study(study)
    study = with_overrides(study, storage, task_runner, max_workers, dask_address, device,
                           train_deployment)
    token = _observer.set(observer)
    try:
        return _run_matrix(study, checked)
    finally:
        _observer.reset(token)


def _run_matrix(study: StudyConfig, checked: bool = False) -> StudyResult:
    """The transfer-matrix flow on the task runner the study's ``runner`` section asks for."""
    with runner_environment(study.runner):
        return transfer_matrix.with_options(task_runner=make_task_runner(study.runner))(
            study, checked=checked)


def read_study(study: str) -> StudyConfig:
    """A study file from a local path or any URI the storage layer reads (s3://...)."""
    if "://" in study and not study.startswith("file://"):
        folder, _, name = study.rstrip("/").rpartition("/")
        return parse_study_bytes(open_storage(folder).read_bytes(name), study)
    return load_study(study.removeprefix("file://"))


@flow(name="prompt-transfer-study", flow_run_name=_run_name, log_prints=True)
def study_flow(
    study: str = "deployments/studies/demo.yaml",
    storage: str | None = None,
    task_runner: RunnerKind | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    device: str | None = None,
    train_deployment: str | None = None,
) -> dict:
    """Run a study file with optional overrides of its storage root and runner: the deployment
    entry point, whose parameters fit the UI's custom-run form (their descriptions below are
    what the form shows). The transfer matrix runs as a subflow with the chosen task runner;
    this run carries its summary.

    Args:
        study: The study file: a path relative to the worker's working directory (the
            repository root), or a URI such as s3://bucket/studies/x.yaml.
        storage: Storage root for the tables and files, overriding the study's own
            (a local folder or s3://bucket/prefix). Empty: the study's.
        task_runner: Where the units run: threads (one process), processes (a process
            pool) or dask (a local Dask cluster, or the one at dask_address). Empty: the
            study's runner.task_runner.
        workers: Units at a time (threads, processes or Dask workers). Empty: the study's.
        dask_address: An existing Dask scheduler, e.g. tcp://scheduler:8786 (implies
            task_runner dask).
        device: cpu, cuda, cuda:N or auto (a GPU when the worker has one). Empty: the
            study's.
        train_deployment: Train each (model, task) as a flow run of this deployment, e.g.
            train-prompts/gpu. Empty: train inside this run.
    """
    cfg = with_overrides(read_study(study), storage, task_runner, workers, dask_address,
                         device, train_deployment)
    try:
        result = _run_matrix(cfg)
    except BaseException as exc:
        create_markdown_artifact(
            f"# Study `{cfg.name}`: failed\n\n`{type(exc).__name__}: {exc}`\n\n"
            f"The transfer matrix ran as this run's subflow; its task runs and logs say "
            f"which unit failed. `prompt-transfer status` lists what is stored.\n",
            key=akey(SUMMARY_KEY, cfg.name), description=f"study {cfg.name} (failed)")
        raise
    create_markdown_artifact(result.summary_markdown, key=akey(SUMMARY_KEY, cfg.name),
                             description=f"study {cfg.name}: the summary of its transfer-matrix "
                                         f"subflow run")
    return {"run_id": result.run_id, "study": result.study, "storage": result.storage,
            "status": result.status, "summaries": result.summaries}
