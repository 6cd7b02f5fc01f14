"""The ``transfer_matrix`` flow: train a prompt per (model, NLP task, seed), score every prompt
on every target task, write the tables, publish artifacts.

Stages (each a fan-out of Prefect tasks, each unit skipped when its key is already stored)::

    validate (prompt_core.preflight) -> prepare NLP tasks (copied into storage)
    -> train prompts -> cross-task evaluation -> runs row + run_keys + artifacts

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
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import prefect
from prefect import flow, tags
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.runtime import flow_run

from flows.publish import publish_run
from flows.runtime import make_task_runner, runner_environment, torch_threads_per_unit
from flows.stage_api import FlowState, StudyResult, ordered_stages
from flows.stage_tpt import tpt_models, tpt_targets, tpt_train_config
from prompt_core.config import RunnerConfig, StudyConfig, load_study, parse_study_bytes
from prompt_core.errors import InputError
from prompt_core.preflight import check_study
from tasks.storage import open_storage
from tasks.tables import RunKeyRow, RunRow, now_utc, write_part
from tasks.units import (
    EvalOutcome,
    NlpTaskInfo,
    RunContext,
    TrainOutcome,
    evaluate_target_unit,
    get_nlp_task,
    prepare_nlp_task,
    train_prompt_unit,
)

RunnerKind = Literal["threads", "processes", "dask"]


def _package_version() -> str:
    try:
        return version("prompt-transfer")
    except PackageNotFoundError:
        return "unknown"


# --- progress, from the futures the flow holds -----------------------------------------------

ProgressObserver = Callable[[str, int, int, str | None], None]
"""Called in the flow's process as ``(stage, done, total, finished unit label or None)``:
``None`` announces a stage."""

# the observer of the run_study call in progress (its caller's, e.g. the CLI's bars): scoped
# to that call and its thread, where the flow runs, never a process-wide list
_observer: ContextVar[ProgressObserver | None] = ContextVar("progress_observer", default=None)


def current_observer() -> ProgressObserver | None:
    """The observer of the run_study call this flow runs in (None: nobody watches)."""
    return _observer.get()


class RunProgress:
    """Units done over all stages: one Prefect progress artifact (0-100) plus the observers."""

    def __init__(self, totals: dict[str, int], observer: ProgressObserver | None = None):
        self.observers = [observer] if observer is not None else []
        self.totals = totals
        self.done = dict.fromkeys(totals, 0)
        self.all = max(sum(totals.values()), 1)
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="transfer-matrix-progress", description="units done / all units")

    def set_total(self, stage: str, total: int) -> None:
        """A stage's unit count once it is known (after the tasks are prepared)."""
        self.totals[stage] = total
        self.done.setdefault(stage, 0)
        self.all = max(sum(self.totals.values()), 1)

    def stage(self, name: str) -> None:
        for fn in self.observers:
            fn(name, self.done[name], self.totals[name], None)

    def unit_done(self, stage: str, label: str) -> None:
        self.done[stage] += 1
        n = sum(self.done.values())
        update_progress_artifact(self.artifact_id, 100.0 * n / self.all,
                                 description=f"{n}/{self.all} units ({stage}: "
                                             f"{self.done[stage]}/{self.totals[stage]})")
        for fn in self.observers:
            fn(stage, self.done[stage], self.totals[stage], label)


class UnitFailed(RuntimeError):
    """Units failed for a reason other than bad input; the message names the first one."""


def _gather(futures: list, labels: list[str], stage: str, model_of: list[str | None],
            progress: RunProgress, failures: list[dict]) -> list:
    """Wait for a stage's futures in completion order, reporting each as it finishes; results
    in submission order. Every failure is recorded (``failures``), then the first is raised,
    naming its unit (bad input as is)."""
    index = {id(f): i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    errors: list[tuple[int, BaseException]] = []
    for f in as_completed(futures):
        i = index[id(f)]
        try:
            results[i] = f.result()
        except Exception as exc:  # noqa: BLE001 - recorded, then the first is raised
            errors.append((i, exc))
            failures.append({"unit": labels[i], "stage": stage, "model": model_of[i],
                             "error": f"{type(exc).__name__}: {exc}"})
        progress.unit_done(stage, labels[i])
    if errors:
        i, exc = min(errors, key=lambda e: e[0])
        if isinstance(exc, InputError):
            raise exc
        more = f" (and {len(errors) - 1} more unit(s))" if len(errors) > 1 else ""
        raise UnitFailed(f"{labels[i]}: {type(exc).__name__}: {exc}{more}") from exc
    return results


def _completed(futures: list) -> list:
    return [f.result() for f in futures if f.state.is_completed()]


def _count_work(result: StudyResult, trained: list[TrainOutcome],
                evaluated: list[EvalOutcome]) -> None:
    """Units done vs reused."""
    result.n_prompts_trained = sum(o.trained for o in trained)
    result.n_prompts_cached = len(trained) - result.n_prompts_trained
    result.n_cells_evaluated = sum(o.n_cells_evaluated for o in evaluated)
    result.n_cells_cached = sum(o.n_cells_cached for o in evaluated)


@dataclass
class StageKeys:
    """Every key the run covered, per (model, table): the run's membership (``run_keys``)."""

    keys: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, model: str, table: str, keys: list[str]) -> None:
        self.keys.setdefault((model, table), []).extend(keys)


def _stage_keys(trained: list[TrainOutcome], evaluated: list[EvalOutcome], later: StageKeys
                ) -> StageKeys:
    out = StageKeys({k: list(v) for k, v in later.keys.items()})
    for o in trained:
        out.add(o.row.model, "prompts", [o.row.prompt_key])
    for e in evaluated:
        out.add(e.model, "cross_task", e.cell_keys)
    return out


def _write_run_keys(storage, ctx: RunContext, keys: StageKeys) -> None:
    """The run's membership: every key it covered (prompts, cells, projectors, TPT runs), one
    part per model."""
    now = now_utc()
    by_model: dict[str, list[RunKeyRow]] = {}
    for (model, table), ks in keys.keys.items():
        by_model.setdefault(model, []).extend(
            RunKeyRow(ctx.run_id, ctx.study, model, table, k, now) for k in dict.fromkeys(ks))
    for rows in by_model.values():
        write_part(storage, "run_keys", rows, ctx.run_id)


def _unit_tags(stage: str, model: str | None, nlp_task: str) -> list[str]:
    """Tags the UI filters task runs by."""
    return [f"stage:{stage}", f"nlp_task:{nlp_task}", *([f"model:{model}"] if model else [])]


def _run_name() -> str:
    """Flow runs are named after the study and the start time, e.g. ``demo 2026-11-28 17:56``."""
    study = flow_run.get_parameters().get("study")
    name = getattr(study, "name", None)
    if name is None:
        try:
            name = read_study(str(study)).name
        except Exception:  # noqa: BLE001 - the flow itself reports a bad study file
            name = Path(str(study or "study")).stem
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
    # tasks stay loaded (per-process cache) for the prepare stage.
    if not checked:
        check_study(study, load_task=get_nlp_task)
    storage = open_storage(study.storage)
    storage.check_writable()
    result = StudyResult(run_id, study.name, storage.root)
    ctx = RunContext(storage.root, study.name, run_id, study.runner.device, study.runner.bf16,
                     study.runner.trainings_per_gpu, torch_threads_per_unit(study.runner))
    n_models, n_tasks, n_seeds = len(study.models), len(study.tasks), len(study.seeds)
    tpt_train = tpt_train_config(study)  # None: TPT's baselines are the train stage's
    n_baselines = 0  # TPT's random-init baselines trained with TPT's own budget, if it has one
    if tpt_train is not None:
        n_targets = len(study.tpt.targets) if study.tpt.targets is not None else n_tasks
        n_baselines = len(tpt_models(study)) * n_targets * n_seeds
    totals = {"prepare": n_tasks, "train": n_models * n_tasks * n_seeds + n_baselines}
    if "cross_task" in study.stages:
        totals["evaluate"] = n_models * n_tasks
    plugins = ordered_stages(study)  # the stages after the matrix, in dependency order
    progress = RunProgress(totals, current_observer())
    train_futures: list = []
    eval_futures: list = []
    later = StageKeys()

    def gather(stage: str):
        return lambda futures, labels, models: _gather(futures, labels, stage, models, progress,
                                                       result.failures)
    try:
        # prepare: each NLP task's identity, its data copied into storage for the workers
        progress.stage("prepare")
        prep = []
        for cfg in study.tasks:
            with tags(*_unit_tags("prepare", None, cfg.label())):
                prep.append(prepare_nlp_task.submit(ctx, cfg, cfg.label()))
        infos: list[NlpTaskInfo] = _gather(prep, [f"prepare {c.label()}" for c in study.tasks],
                                           "prepare", [None] * n_tasks, progress,
                                           result.failures)
        for stage in plugins:  # each part's unit count, known once the tasks are prepared
            for part, n in stage.unit_counts(study, infos).items():
                progress.set_total(part, n)

        # train: fan out per model x task x seed (or one flow run per model x task)
        progress.stage("train")
        if study.runner.train_deployment:
            from flows.fan_out import fan_out_training

            try:
                trained = fan_out_training(ctx, study, infos, study.runner.train_deployment)
            except Exception as exc:
                result.failures.append({"unit": f"fan out {study.runner.train_deployment}",
                                        "stage": "train", "model": None,
                                        "error": f"{type(exc).__name__}: {exc}"})
                raise
            for o in trained:
                progress.unit_done("train", f"train {o.row.model}/{o.row.task} "
                                            f"seed={o.row.seed}")
        else:
            labels, models = [], []
            for m in study.models:
                for info in infos:
                    for seed in study.seeds:
                        with tags(*_unit_tags("train", m.name, info.name)):
                            train_futures.append(train_prompt_unit.submit(
                                ctx, m, info, study.training, seed))
                        labels.append(f"train {m.name}/{info.name} seed={seed}")
                        models.append(m.name)
            trained = _gather(train_futures, labels, "train", models, progress,
                              result.failures)
        prompts = [o.row for o in trained]
        baselines: list[TrainOutcome] = []
        if tpt_train is not None:  # TPT's random-init baselines with TPT's budget
            labels, models, futures = [], [], []
            for m in tpt_models(study):
                for info in tpt_targets(study, infos):
                    for seed in study.seeds:
                        with tags(*_unit_tags("train", m.name, info.name)):
                            futures.append(train_prompt_unit.submit(ctx, m, info, tpt_train,
                                                                    seed))
                        labels.append(f"train {m.name}/{info.name} seed={seed} (tpt budget)")
                        models.append(m.name)
            train_futures += futures
            baselines = _gather(futures, labels, "train", models, progress, result.failures)
            trained = trained + baselines

        # evaluate: one unit per model x target task, all sources inside; the target's own
        # prompt (per seed) is passed explicitly as the denominator of relative_score
        labels, models = [], []
        if "cross_task" in study.stages:
            progress.stage("evaluate")
        for m in study.models if "cross_task" in study.stages else []:
            sources = [p for p in prompts if p.model == m.name]
            for info in infos:
                own = {p.seed: p for p in sources if p.task == info.name}
                with tags(*_unit_tags("evaluate", m.name, info.name)):
                    eval_futures.append(evaluate_target_unit.submit(
                        ctx, m, info, own, sources, study.training, study.evaluation))
                labels.append(f"evaluate {m.name} -> {info.name}")
                models.append(m.name)
        evaluated = _gather(eval_futures, labels, "evaluate", models, progress,
                            result.failures)
        cells = {}
        for e in evaluated:
            cells.setdefault(e.model, []).extend(e.cell_keys)
        state = FlowState(ctx, study, storage, infos, prompts, baselines, cells, gather)
        for stage in plugins:
            run = state.results[stage.name] = stage.run(state)
            result.stage_counts.update(run.counts)
            for (model, table), keys in run.keys.items():
                later.add(model, table, keys)
        _count_work(result, trained, evaluated)
        _write_run_keys(storage, ctx, _stage_keys(trained, evaluated, later))
        publish_run(study, storage, run_id, result, cells,
                    [(stage, state) for stage in plugins])
    except BaseException:
        result.status = "failed"
        with contextlib.suppress(Exception):  # what finished before the failure, best effort
            trained, evaluated = _completed(train_futures), _completed(eval_futures)
            _count_work(result, trained, evaluated)
            _write_run_keys(storage, ctx, _stage_keys(trained, evaluated, later))
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


def with_overrides(study: StudyConfig, storage: str | None = None,
                   task_runner: RunnerKind | None = None, workers: int | None = None,
                   dask_address: str | None = None, device: str | None = None,
                   train_deployment: str | None = None) -> StudyConfig:
    """The study with the run's overrides applied (validated like the study file)."""
    runner = {k: v for k, v in {
        "task_runner": task_runner, "max_workers": workers, "dask_address": dask_address,
        "device": device, "train_deployment": train_deployment}.items() if v is not None}
    if runner:
        merged = {**study.runner.model_dump(), **runner}
        if dask_address is not None and task_runner is None:
            merged["task_runner"] = "dask"
        study = study.model_copy(update={"runner": RunnerConfig.model_validate(merged)})
    if storage is not None:
        study = study.model_copy(update={"storage": storage})
    return study


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
    """Run a study file (a path relative to the working directory, or a URI such as
    ``s3://bucket/studies/x.yaml``) with optional overrides of its storage root and runner:
    the deployment entry point, whose parameters fit the UI's custom-run form. The transfer
    matrix runs as a subflow with the chosen task runner."""
    cfg = with_overrides(read_study(study), storage, task_runner, workers, dask_address,
                         device, train_deployment)
    result = _run_matrix(cfg)
    return {"run_id": result.run_id, "study": result.study, "storage": result.storage,
            "status": result.status, "summaries": result.summaries}
