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
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the ephemeral API starts in a subprocess; on a busy 2-core machine 20 s (the default) is short
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pandas as pd  # noqa: E402
import prefect  # noqa: E402
from prefect import flow, tags  # noqa: E402
from prefect.artifacts import create_progress_artifact, update_progress_artifact  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.task_runners import (  # noqa: E402
    ProcessPoolTaskRunner,
    TaskRunner,
    ThreadPoolTaskRunner,
)

from flows import stages  # noqa: E402
from flows.indicator_stage import n_indicator_units, run_indicators  # noqa: E402
from flows.publish import publish_run  # noqa: E402
from prompt_core.config import RunnerConfig, StudyConfig, load_study, parse_study_bytes  # noqa: E402
from prompt_core.errors import InputError  # noqa: E402
from prompt_core.preflight import check_study  # noqa: E402
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

RunnerKind = Literal["threads", "processes", "dask"]


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
    # per later stage: units computed now vs found stored ("project", "cross_model", "tpt")
    stage_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # {unit, stage, model, error}


def _package_version() -> str:
    try:
        return version("prompt-transfer")
    except PackageNotFoundError:
        return "unknown"


# --- progress, from the futures the flow holds -----------------------------------------------

ProgressObserver = Callable[[str, int, int, str | None], None]
"""Called in the flow's process as ``(stage, done, total, finished unit label or None)``:
``None`` announces a stage."""

_observers: list[ProgressObserver] = []


@contextlib.contextmanager
def observe_progress(fn: ProgressObserver) -> Iterator[None]:
    """Have ``fn`` called on every stage start and finished unit of the flows run inside (the
    CLI's progress bars). It runs in the flow's process, fed by the flow's futures, so it
    works the same whether the units run in threads, processes or on a Dask cluster."""
    _observers.append(fn)
    try:
        yield
    finally:
        _observers.remove(fn)


class RunProgress:
    """Units done over all stages: one Prefect progress artifact (0-100) plus the observers."""

    def __init__(self, totals: dict[str, int]):
        self.totals = totals
        self.done = dict.fromkeys(totals, 0)
        self.all = max(sum(totals.values()), 1)
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="transfer-matrix-progress", description="units done / all units")

    def set_total(self, stage: str, total: int) -> None:
        """A stage's unit count once it is known (after the tasks are prepared)."""
        self.totals[stage] = total
        self.all = max(sum(self.totals.values()), 1)

    def stage(self, name: str) -> None:
        for fn in list(_observers):
            fn(name, self.done[name], self.totals[name], None)

    def unit_done(self, stage: str, label: str) -> None:
        self.done[stage] += 1
        n = sum(self.done.values())
        update_progress_artifact(self.artifact_id, 100.0 * n / self.all,
                                 description=f"{n}/{self.all} units ({stage}: "
                                             f"{self.done[stage]}/{self.totals[stage]})")
        for fn in list(_observers):
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
    ctx = RunContext(storage.root, study.name, run_id, study.runner.device, study.runner.bf16,
                     study.runner.trainings_per_gpu, torch_threads_per_unit(study.runner))
    n_models, n_tasks, n_seeds = len(study.models), len(study.tasks), len(study.seeds)
    tpt_train = stages.tpt_train_config(study)  # None: TPT's baselines are the train stage's
    n_baselines = 0  # TPT's random-init baselines trained with TPT's own budget, if it has one
    if tpt_train is not None:
        n_targets = len(study.tpt.targets) if study.tpt.targets is not None else n_tasks
        n_baselines = len(stages.tpt_models(study)) * n_targets * n_seeds
    totals = {"prepare": n_tasks, "train": n_models * n_tasks * n_seeds + n_baselines}
    if "cross_task" in study.stages:
        totals["evaluate"] = n_models * n_tasks
    if "cross_model" in study.stages:
        totals["project"] = (len(study.model_pairs()) * len(study.cross_model.objectives)
                             * n_seeds)
        totals["cross_model"] = 0  # known after prepare (held-out tasks by name)
    if "tpt" in study.stages:
        if study.tpt.top_k is not None:
            totals["tpt_rank"] = 0  # known after prepare (the targets)
        totals["tpt"] = 0
    if "indicators" in study.stages:
        totals["indicators"] = 0
    progress = RunProgress(totals)
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
        if "cross_model" in study.stages:
            progress.set_total("cross_model", stages.n_cross_model_units(study, infos))
        if "tpt" in study.stages:
            if study.tpt.top_k is not None:
                progress.set_total("tpt_rank", len(stages.tpt_models(study))
                                   * len(stages.tpt_targets(study, infos)))
            progress.set_total("tpt", stages.n_tpt_units(study, infos))
        if "indicators" in study.stages:
            progress.set_total("indicators", n_indicator_units(study, len(infos)))

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
            for m in stages.tpt_models(study):
                for info in stages.tpt_targets(study, infos):
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
        extra = _later_stages(ctx, study, storage, infos, prompts, baselines, cells, progress,
                              gather, result, later)
        _count_work(result, trained, evaluated)
        _write_run_keys(storage, ctx, _stage_keys(trained, evaluated, later))
        publish_run(study, storage, run_id, result, cells, extra)
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


def _later_stages(ctx: RunContext, study: StudyConfig, storage, infos: list[NlpTaskInfo],
                  prompts: list, baselines: list[TrainOutcome], cells: dict[str, list[str]],
                  progress: RunProgress, gather, result: StudyResult, later: StageKeys
                  ) -> dict:
    """The stages after the cross-task matrix: projectors and cross-model cells, then TPT.
    Returns what :func:`flows.publish.publish_run` publishes for them."""
    index = stages.index_prompts(prompts)
    projector_rows: list = []
    published: dict = {}

    def count(stage: str, computed: int, stored: int) -> None:
        result.stage_counts[stage] = {"computed": computed, "stored": stored}

    if "cross_model" in study.stages:
        progress.stage("project")
        outs = stages.run_projectors(ctx, study, stages.plan_projectors(study, infos, index),
                                     gather("project"))
        projector_rows = [o.row for o in outs]
        count("project", sum(o.computed for o in outs), sum(not o.computed for o in outs))
        for o in outs:
            later.add(o.row.target_model, "projectors", [o.row.projector_key])
        progress.stage("cross_model")
        xm = stages.run_cross_model(ctx, study, infos, index, projector_rows,
                                    gather("cross_model"))
        count("cross_model", sum(o.n_cells_evaluated for o in xm),
              sum(o.n_cells_cached for o in xm))
        for o in xm:
            later.add(o.target_model, "cross_model", o.cell_keys)
        published["cross_model"] = stages.run_rows(storage, "cross_model", study.name,
                                            [(o.target_model, o.cell_keys) for o in xm])
    if "tpt" in study.stages:
        progress.stage("tpt")
        base = stages.index_prompts([o.row for o in baselines]) if baselines else index
        rankings: dict = {}
        if study.tpt.top_k is not None:  # top-k sources rank on validation data, never test
            progress.stage("tpt_rank")
            ranked = stages.run_rankings(ctx, study, stages.plan_rankings(study, infos, index),
                                         gather("tpt_rank"))
            count("tpt_rank", sum(o.computed for o in ranked),
                  sum(not o.computed for o in ranked))
            for o in ranked:
                later.add(o.model, "tpt_rankings", [o.key])
            rankings = stages.rankings_by_model(ranked)
        jobs = stages.plan_tpt(study, infos, index, base, projector_rows, rankings)
        outs = stages.run_tpt(ctx, study, jobs, gather("tpt"))
        count("tpt", sum(o.computed for o in outs), sum(not o.computed for o in outs))
        for o in outs:
            later.add(o.row.model, "tpt", [o.row.tpt_key])
        rows = pd.DataFrame([asdict(o.row) for o in outs])
        published["tpt"] = rows
        published["tpt_curves"] = stages.tpt_curves(storage, study.name, [o.row for o in outs],
                                             {p.prompt_key: p for p in [*prompts,
                                              *(b.row for b in baselines)]})
    if "indicators" in study.stages:
        progress.stage("indicators")
        ir = run_indicators(ctx, study, storage, infos, prompts, cells, gather("indicators"))
        for part, c in ir.counts.items():
            count(part, c["computed"], c["stored"])
        for (model, table), keys in ir.keys.items():
            later.add(model, table, keys)
        published["indicators"] = ir.rows
    return published


# --- task runners ---------------------------------------------------------------------------


def _one_torch_thread_each(n_threads: int) -> None:  # pragma: no cover - runs in workers
    import torch

    torch.set_num_threads(n_threads)


def make_task_runner(cfg: RunnerConfig) -> TaskRunner:
    """The Prefect task runner a study's ``runner`` section asks for. Worker processes split
    the machine's cores between them (:func:`torch_threads_per_unit`)."""
    threads = torch_threads_per_unit(cfg)
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.max_workers,
                                     initializer=_one_torch_thread_each, initargs=(threads,))
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": cfg.max_workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": None,
    })


def _api_url() -> str | None:
    """The API this process talks to: the configured URL, else the ephemeral server's."""
    url = prefect.settings.get_current_settings().api.url
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if not server.running:
        server.start()
    return server.api_url


def torch_threads_per_unit(cfg: RunnerConfig) -> int | None:
    """Torch threads each unit computes with: ``runner.torch_threads``, else this machine's
    cores shared by the concurrent units; on an existing Dask cluster (other machines) the
    workers' own setting unless ``torch_threads`` is given. The same rule on every runner, so
    threads, processes and Dask give identical scores (float reductions depend on the thread
    count; a different count changes the last bits, and training can amplify them)."""
    if cfg.torch_threads or cfg.dask_address:
        return cfg.torch_threads
    return max(1, (os.cpu_count() or 1) // cfg.max_workers)


@contextlib.contextmanager
def runner_environment(cfg: RunnerConfig) -> Iterator[None]:
    """What the chosen runner needs around the flow, restored afterwards.

    threads: this process computes with :func:`torch_threads_per_unit` torch threads.
    processes / local Dask: the worker processes started inside report to this run's Prefect
    API, not an ephemeral server each (its URL goes into the environment they inherit), and
    compute with the same thread count. An existing Dask cluster is configured by whoever
    started it."""
    threads = torch_threads_per_unit(cfg)
    if cfg.task_runner == "threads":
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
        return
    if cfg.dask_address:
        yield
        return
    env = {"PREFECT_API_URL": _api_url() or "", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    env = {k: v for k, v in env.items() if v and k not in os.environ}
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)


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
) -> StudyResult:
    """Validate (if given a path) and run a study; the task runner is chosen here."""
    if not isinstance(study, StudyConfig):
        study = load_study(study)
    study = with_overrides(study, storage, task_runner, max_workers, dask_address, device,
                           train_deployment)
    return _run_matrix(study)


def _run_matrix(study: StudyConfig) -> StudyResult:
    """The transfer-matrix flow on the task runner the study's ``runner`` section asks for."""
    with runner_environment(study.runner):
        return transfer_matrix.with_options(task_runner=make_task_runner(study.runner))(study)


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
