"""Training fanned out as one flow run per (model, source NLP task) of a deployment.

When a study sets ``runner.train_deployment`` (e.g. ``train-prompts/local``), the train stage
of :func:`flows.transfer_matrix.transfer_matrix` calls :func:`fan_out_training` instead of
submitting the training units itself::

    parent run: write studies/<study>/<hash>.json (study + prepared NLP tasks) to storage
      -> "fan out train <model>/<task>" (one Prefect task per pair, in threads)
         -> run_deployment("train-prompts/...", idempotency_key=<hash of the pair's prompt keys>)
            -> child flow run "train <model>/<task> (<study>)" on any worker of the pool:
               reads the JSON, runs train_prompt_unit per seed, writes prompts as usual
      -> the parent reads each prompt's row back from storage

The same work gets the same flow run: a pair's idempotency key is the hash of its storage
root, study and prompt keys, so a parent that is rerun while a child still runs waits for that
child instead of starting another. A pair whose prompts are all stored starts no flow run at
all. When the run an earlier parent started under the key ended FAILED, CRASHED or CANCELLED,
or completed but its prompts are no longer stored, a new run starts under the key + this
parent's run id. This parent's own child failing fails the train stage (:class:`FanOutError`).

Child runs train in threads (``runner.max_workers`` of them) whatever the study's task
runner: one child is one (model, task); parallelism across pairs comes from the workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runtime import torch_threads_per_unit
from prompt_core.config import ModelConfig, StudyConfig, stable_hash
from prompt_core.errors import InputError
from tasks.storage import Storage, open_storage
from tasks.units import (
    NlpTaskInfo,
    RunContext,
    TrainOutcome,
    intact_prompt_meta,
    prompt_key,
    prompt_storage_key,
    read_init_prompt,
    stored_prompt_row,
    train_config_key,
    train_prompt_unit,
)

TRAIN_FLOW = "train-prompts"
STUDY_DOCS = "studies"  # <root>/studies/<study>/<hash>.json: what a child flow run reads
POLL_INTERVAL_S = 3.0  # how often a fan-out task asks the API for its child run's state
DEFAULT_TIMEOUT_S = 24 * 3600.0  # a child run not final by then fails the parent's stage


class FanOutError(RuntimeError):
    """Child training flow runs did not complete; the message names each pair and its run."""


# --- the study document a child flow run reads ----------------------------------------------


@dataclass(frozen=True)
class StudyDoc:
    """What a child flow run needs besides its (model, task): the study, the prepared NLP
    tasks (their data is in storage), the storage root and the torch device."""

    study: StudyConfig
    tasks: list[NlpTaskInfo]
    storage_root: str
    device: str

    def to_json(self) -> dict:
        return {"study": self.study.model_dump(mode="json"),
                "tasks": [dataclasses.asdict(i) for i in self.tasks],
                "storage_root": self.storage_root, "device": self.device}

    @classmethod
    def from_json(cls, doc: dict) -> StudyDoc:
        return cls(StudyConfig.model_validate(doc["study"]),
                   [NlpTaskInfo(**t) for t in doc["tasks"]], doc["storage_root"], doc["device"])


def write_study_doc(storage: Storage, doc: StudyDoc) -> str:
    """Store ``doc`` under ``studies/<study>/<content hash>.json``; its URI."""
    body = doc.to_json()
    key = f"{STUDY_DOCS}/{doc.study.name}/{stable_hash(body)}.json"
    if not storage.exists(key):
        storage.write_json(key, body)
    return storage.uri(key)


def _split_doc_uri(study_uri: str) -> tuple[str, str]:
    """``(storage root, key)`` of a study document URI written by :func:`write_study_doc`."""
    root, sep, rest = study_uri.replace("\\", "/").rpartition(f"/{STUDY_DOCS}/")
    if not sep or not rest.endswith(".json") or rest.count("/") != 1:
        raise InputError(f"study_uri {study_uri!r} is not a study document "
                         f"(<storage root>/{STUDY_DOCS}/<study>/<hash>.json)")
    return root, f"{STUDY_DOCS}/{rest}"


def read_study_doc(study_uri: str) -> StudyDoc:
    """The study document at ``study_uri`` (a local path or s3:// URI)."""
    root, key = _split_doc_uri(study_uri)
    storage = open_storage(root)
    if not storage.exists(key):
        raise InputError(f"study document {study_uri} does not exist")
    return StudyDoc.from_json(storage.read_json(key))


# --- the child flow: one (model, source task), every seed ------------------------------------


def _train_run_name() -> str:
    """``train <model>/<task> (<study>)``: the study is the document's folder name."""
    p = flow_run.get_parameters()
    try:
        study = _split_doc_uri(p["study_uri"])[1].split("/")[1]
    except (InputError, KeyError, IndexError):
        study = "?"
    return f"train {p.get('model')}/{p.get('task')} ({study})"


@flow(name=TRAIN_FLOW, flow_run_name=_train_run_name, log_prints=True)
def train_prompts_flow(study_uri: str, model: str, task: str, run_id: str) -> list[str]:
    """Train the prompts of one (model, source NLP task) of a study, every seed, as Prefect
    tasks: the child flow run of a fanned-out train stage (see the module docstring).

    ``study_uri`` is the study document the parent run wrote to storage, ``model`` a model
    name and ``task`` an NLP task name of that study, ``run_id`` the parent run's id (written
    into the rows). A prompt that is already stored is not trained again. Returns the prompt
    keys, in seed order.
    """
    doc = read_study_doc(study_uri)
    models = {m.name: m for m in doc.study.models}
    infos = {i.name: i for i in doc.tasks}
    if model not in models or task not in infos:
        raise InputError(f"{study_uri}: study {doc.study.name!r} has no model {model!r} or no "
                         f"NLP task {task!r} (models: {sorted(models)}, tasks: {sorted(infos)})")
    ctx = RunContext(doc.storage_root, doc.study.name, run_id, doc.device,
                     doc.study.runner.bf16, doc.study.runner.trainings_per_gpu,
                     torch_threads_per_unit(doc.study.runner))
    m, info = models[model], infos[task]
    with ThreadPoolTaskRunner(max_workers=doc.study.runner.max_workers) as runner:
        futures = [runner.submit(train_prompt_unit.with_options(
                       tags=["stage:train", f"model:{model}"]),
                       {"ctx": ctx, "model": m, "info": info, "train": doc.study.training,
                        "seed": seed})
                   for seed in doc.study.seeds]
        outcomes: list[TrainOutcome] = [f.result() for f in futures]
    n_trained = sum(o.trained for o in outcomes)
    get_run_logger().info("train %s/%s (%s): %d prompt(s) trained, %d stored before", model,
                          task, doc.study.name, n_trained, len(outcomes) - n_trained)
    return [o.row.prompt_key for o in outcomes]


# --- the parent side ------------------------------------------------------------------------


def pair_idempotency_key(ctx: RunContext, keys: list[str]) -> str:
    """The same work (storage root, study, prompt keys) gets the same key, so the same run."""
    return stable_hash({"flow": TRAIN_FLOW, "storage": ctx.storage_root, "study": ctx.study,
                        "prompts": keys}, n=32)


def _failed(run: FlowRun) -> bool:
    return run.state is not None and (run.state.is_failed() or run.state.is_crashed()
                                      or run.state.is_cancelled())


def _stored_outcome(storage: Storage, ctx: RunContext, model: ModelConfig, info: NlpTaskInfo,
                    key: str, n_tokens: int) -> TrainOutcome | None:
    """A prompt's outcome if its file and this study's row are stored (checked as the training
    unit checks them); ``trained`` when this run's flow runs trained it."""
    skey = prompt_storage_key(model.name, info.name, key)
    if intact_prompt_meta(storage, skey, key, n_tokens) is None:
        return None
    row = stored_prompt_row(storage, ctx, model.name, key)
    if row is None:
        return None
    return TrainOutcome(row, skey, trained=row.run_id == ctx.run_id)


def _all_stored(ctx: RunContext, model: ModelConfig, info: NlpTaskInfo, keys: list[str],
                n_tokens: int) -> bool:
    storage = ctx.storage()
    return all(_stored_outcome(storage, ctx, model, info, k, n_tokens) for k in keys)


@task(task_run_name="fan out train {model.name}/{info.name}", cache_policy=NO_CACHE,
      retries=0)
def run_training_deployment(deployment: str, study_uri: str, ctx: RunContext,
                            model: ModelConfig, info: NlpTaskInfo, keys: list[str],
                            n_tokens: int, timeout_s: float) -> str:
    """Run one (model, task) as a flow run of ``deployment`` and wait for it; the flow run's
    id. The idempotency key is :func:`pair_idempotency_key` of the pair's prompt ``keys``: a
    run an earlier study run started for it that ended FAILED, CRASHED or CANCELLED, or whose
    prompts are no longer stored, is followed by a new run (key + this run's id). A run not
    COMPLETED raises, naming it and its state message."""
    logger = get_run_logger()
    params = {"study_uri": study_uri, "model": model.name, "task": info.name,
              "run_id": ctx.run_id}
    key = pair_idempotency_key(ctx, keys)

    def start(idempotency_key: str) -> FlowRun:
        return run_deployment(deployment, parameters=params, idempotency_key=idempotency_key,
                              flow_run_name=f"train {model.name}/{info.name} ({ctx.study})",
                              timeout=timeout_s, poll_interval=POLL_INTERVAL_S,
                              as_subflow=True)

    run = start(key)
    earlier = run.parameters.get("run_id") != ctx.run_id  # started by an earlier study run
    if earlier and (_failed(run) or not _all_stored(ctx, model, info, keys, n_tokens)):
        why = (f"ended {run.state_name} ({run.state.message if run.state else ''})"
               if _failed(run) else "completed, but its prompts are no longer stored")
        logger.warning("flow run %r for %s/%s of an earlier run %s: starting a new one",
                       run.name, model.name, info.name, why)
        run = start(f"{key}:{ctx.run_id}")
    if run.state is None or not run.state.is_completed():
        message = (run.state.message or "").strip() if run.state else ""
        raise FanOutError(f"flow run {run.name!r} ({run.id}) of {deployment} is "
                          f"{run.state_name}" + (f": {message}" if message else ""))
    logger.info("train %s/%s: flow run %r completed", model.name, info.name, run.name)
    return str(run.id)


def _plan(study: StudyConfig, infos: list[NlpTaskInfo]
          ) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """(model, task) -> [(seed, prompt key)], in study order."""
    _, init_sha = read_init_prompt(study.training)
    plan: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for m in study.models:
        cfg_key = train_config_key(m, study.training, init_sha)
        for info in infos:
            plan[(m.name, info.name)] = [(s, prompt_key(cfg_key, info, s)) for s in study.seeds]
    return plan


def fan_out_training(ctx: RunContext, study: StudyConfig, infos: list[NlpTaskInfo],
                     deployment_name: str, timeout_s: float | None = None
                     ) -> list[TrainOutcome]:
    """The train stage as one flow run of ``deployment_name`` per (model, source task) not yet
    stored, all at once, each waited for (at most ``timeout_s``, default
    :data:`DEFAULT_TIMEOUT_S`); then every prompt's row read
    back from storage. One outcome per model x task x seed, in that order. Child runs that did
    not complete raise :class:`FanOutError` naming each pair and its run's state message."""
    storage = ctx.storage()
    models = {m.name: m for m in study.models}
    by_name = {i.name: i for i in infos}
    plan = _plan(study, infos)
    n_tokens = study.training.n_tokens

    def stored(pair: tuple[str, str]) -> list[TrainOutcome | None]:
        m, info = models[pair[0]], by_name[pair[1]]
        return [_stored_outcome(storage, ctx, m, info, k, n_tokens) for _, k in plan[pair]]

    todo = [pair for pair in plan if None in stored(pair)]
    get_run_logger().info("train: %d of %d (model, task) pair(s) to run as flow runs of %s",
                          len(todo), len(plan), deployment_name)
    if todo:
        doc_uri = write_study_doc(storage, StudyDoc(study, infos, ctx.storage_root, ctx.device))
        problems = []
        with ThreadPoolTaskRunner(max_workers=len(todo)) as runner:
            futures = [runner.submit(run_training_deployment, {
                "deployment": deployment_name, "study_uri": doc_uri, "ctx": ctx,
                "model": models[m], "info": by_name[t], "keys": [k for _, k in plan[(m, t)]],
                "n_tokens": n_tokens, "timeout_s": timeout_s or DEFAULT_TIMEOUT_S})
                for m, t in todo]
            for (m, t), fut in zip(todo, futures, strict=True):
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001 - every pair's failure is reported
                    problems.append(f"train {m}/{t}: {exc}")
        if problems:
            raise FanOutError(f"{len(problems)} of {len(todo)} training flow run(s) did not "
                              "complete:\n  " + "\n  ".join(problems))

    outcomes: list[TrainOutcome] = []
    missing = []
    for pair in plan:
        for (seed, key), got in zip(plan[pair], stored(pair), strict=True):
            if got is None:
                missing.append(f"{pair[0]}/{pair[1]} seed={seed} ({key})")
            else:
                outcomes.append(got)
    if missing:
        raise FanOutError("training flow runs completed but these prompts are not stored: "
                          + ", ".join(missing))
    return outcomes
