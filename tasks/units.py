"""Prefect tasks: one per unit of work of the transfer-matrix study.

Naming: an *NLP task* (SST-2, MNLI...) is called ``nlp_task`` here; a *Prefect task* is one of
the ``@task`` functions below. Tasks receive ids, configs and URIs, never models or tensors; the
frozen backbone and the task data are loaded (once per process) inside.

Every unit has a deterministic key (hash of everything that decides its result). A unit whose
key already has rows in its table is skipped, so reruns are free and adding a task is
incremental, on local disk and S3 alike. Prefect's own result cache is not used (NO_CACHE): the
tables are the cache.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prompt_core.backbones import Backbone, cached_backbone
from prompt_core.config import (
    EvalConfig,
    ModelConfig,
    TaskConfig,
    TrainConfig,
    load_nlp_task,
    stable_hash,
)
from prompt_core.data import TaskData, TaskDataError
from prompt_core.evaluation import EncodedSplit
from prompt_core.prompts import PromptFileError, init_prompt, prompt_from_bytes, prompt_to_bytes
from prompt_core.training import train_prompt
from tasks import progress
from tasks.storage import Storage, open_storage
from tasks.tables import now_utc, read_table, write_part

KEY_VERSION = 1  # bump when the meaning of a key changes


def _no_retry_on_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (storage, OOM), not bad input that would fail again."""
    try:
        state.result()
    except (TaskDataError, PromptFileError, ValueError):
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


unit_task = functools.partial(
    task, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
    retry_condition_fn=_no_retry_on_bad_input,
)


# --- shared, per-process loading ------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _nlp_task_cached(cfg_json: str) -> TaskData:
    return load_nlp_task(TaskConfig.model_validate_json(cfg_json))


def get_nlp_task(cfg: TaskConfig) -> TaskData:
    """The NLP task's data, loaded once per process."""
    return _nlp_task_cached(cfg.model_dump_json())


def get_backbone(model: ModelConfig, device: str) -> Backbone:
    return cached_backbone(model.kind, model.model_id, model.revision, device, **model.options)


def stored_rows(storage: Storage, table: str, partition: dict[str, str], column: str,
                value: Any) -> pd.DataFrame:
    """Rows of one table partition whose ``column`` equals ``value``."""
    df = read_table(storage, table, filters=partition).to_pandas()
    return df[df[column] == value]


# --- records passed between stages (plain, JSON-able) ---------------------------------------


@dataclass
class NlpTaskInfo:
    label: str  # the name in the study file
    name: str
    type: str
    fingerprint: str
    n_train: int
    n_validation: int
    n_test: int
    n_labels: int


@dataclass
class PromptRecord:
    prompt_key: str
    model: str
    nlp_task: str
    task_type: str
    seed: int
    prompt_uri: str
    storage_key: str
    dev_accuracy: float
    dev_macro_f1: float
    trained: bool  # False = found in storage from an earlier run


@dataclass
class EvalOutcome:
    model: str
    target: str
    n_cells_evaluated: int
    n_cells_cached: int
    part_uri: str | None


# --- keys -----------------------------------------------------------------------------------


def prompt_key(model: ModelConfig, info: NlpTaskInfo, train: TrainConfig, seed: int,
               init_sha: str | None = None) -> str:
    """Key of a trained prompt: model, NLP task (name + data fingerprint), training config, and
    the content hash of the init prompt file when training starts from one."""
    return stable_hash({
        "v": KEY_VERSION, "model": model.identity(), "task": [info.name, info.fingerprint],
        "train": train.model_dump(), "lr": model.learning_rate(train), "seed": seed,
        "init_sha": init_sha,
    })


def read_init_prompt(train: TrainConfig) -> tuple[bytes | None, str | None]:
    """Bytes and sha256 of ``train.init_prompt`` (a local path or any fsspec URI), if set."""
    if train.init_prompt is None:
        return None, None
    import hashlib

    import fsspec

    try:
        with fsspec.open(train.init_prompt, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise PromptFileError(f"cannot read init_prompt {train.init_prompt!r}: {e}") from e
    return data, hashlib.sha256(data).hexdigest()[:16]


def random_source_key(train: TrainConfig, seed: int) -> str:
    return f"random:{train.n_tokens}:{train.init_std}:{seed}"


def cell_key(model: ModelConfig, source: str, target: NlpTaskInfo, evaluation: EvalConfig,
             own_key: str, seed: int) -> str:
    """Key of one matrix cell: source (prompt key, random spec or none), target task, eval
    config, and the target's own prompt (the denominator of relative_score)."""
    ev = evaluation.model_dump(include={"split", "max_examples", "max_length"})
    return stable_hash({
        "v": KEY_VERSION, "model": model.identity(), "source": source,
        "target": [target.name, target.fingerprint],
        "eval": ev, "own": own_key, "seed": seed,
    })


# --- Prefect tasks --------------------------------------------------------------------------


@unit_task(task_run_name="prepare {cfg_label}", retries=0)
def prepare_nlp_task(cfg: TaskConfig, cfg_label: str) -> NlpTaskInfo:
    """Load and validate one NLP task; return its identity (name, type, data fingerprint)."""
    td = get_nlp_task(cfg)
    n = {s: len(df) for s, df in td.splits.items()}
    return NlpTaskInfo(cfg_label, td.name, td.spec.type, td.fingerprint, n["train"],
                       n["validation"], n["test"], td.spec.n_labels)


def prompt_storage_key(model: str, nlp_task: str, key: str) -> str:
    return f"prompts/{model}/{nlp_task}/{key}.safetensors"


@unit_task(task_run_name="train {model.name}/{info.name} seed={seed}")
def train_prompt_unit(
    model: ModelConfig,
    nlp_task: TaskConfig,
    info: NlpTaskInfo,
    train: TrainConfig,
    seed: int,
    storage_root: str,
    study: str,
    run_id: str,
    device: str = "cpu",
) -> PromptRecord:
    """Train one soft prompt (model x NLP task x seed) unless its key is already stored.

    Writes the prompt (safetensors + .json), then its ``prompts`` and ``training_curves`` rows;
    the ``prompts`` row is written last, so its presence means the unit is complete.
    """
    storage = open_storage(storage_root)
    init_bytes, init_sha = read_init_prompt(train)
    key = prompt_key(model, info, train, seed, init_sha)
    skey = prompt_storage_key(model.name, info.name, key)
    part = {"study": study, "model": model.name}
    hit = stored_rows(storage, "prompts", part, "prompt_key", key)
    if len(hit) and storage.exists(skey):
        row = hit.iloc[0]
        progress.report("train", advance=1)
        return PromptRecord(key, model.name, info.name, info.type, seed, storage.uri(skey), skey,
                            float(row["dev_accuracy"]), float(row["dev_macro_f1"]), trained=False)

    logger = get_run_logger()
    backbone = get_backbone(model, device)
    td = get_nlp_task(nlp_task)
    lr = model.learning_rate(train)
    label = f"train {model.name}/{info.name} seed={seed}"
    step_cb = progress.step_callback(label)
    init = None
    if init_bytes is not None:
        init, _ = prompt_from_bytes(init_bytes, train.init_prompt)
    result = train_prompt(backbone, td, train, seed=seed, lr=lr, init=init, on_step=step_cb)
    progress.finish_steps(label)
    meta = {
        "prompt_key": key, "model": model.name, **{f"model_{k}": v for k, v in
                                                   model.identity().items()},
        "hidden_size": backbone.hidden_size, "n_tokens": train.n_tokens, "task": info.name,
        "task_type": info.type, "task_fingerprint": info.fingerprint, "seed": seed,
        "train_config": train.model_dump(), "lr": lr,
        "config_hash": stable_hash(train.model_dump()),
        "best_step": result.best_step, "dev_scores": result.best_scores, "study": study,
        "run_id": run_id,
    }
    storage.write_bytes(skey, prompt_to_bytes(result.prompt, meta))
    storage.write_json(skey.removesuffix(".safetensors") + ".json", meta)
    now = now_utc()
    curve_rows = [
        {**asdict(c), "prompt_key": key, "model": model.name, "task": info.name, "seed": seed,
         "study": study, "run_id": run_id, "created_at": now}
        for c in result.curve
    ]
    write_part(storage, "training_curves", curve_rows, key)
    write_part(storage, "prompts", [{
        "prompt_key": key, "model": model.name, "model_id": model.model_id,
        "backbone_kind": model.kind, "task": info.name, "task_type": info.type,
        "task_fingerprint": info.fingerprint, "seed": seed, "n_tokens": train.n_tokens,
        "init": train.init, "steps": train.steps, "lr": lr, "batch_size": train.batch_size,
        "best_step": result.best_step, "dev_accuracy": result.best_scores["accuracy"],
        "dev_macro_f1": result.best_scores["macro_f1"], "train_seconds": result.seconds,
        "prompt_uri": storage.uri(skey), "config_hash": meta["config_hash"], "study": study,
        "run_id": run_id, "created_at": now,
    }], key)
    logger.info("%s: best dev accuracy %.3f at step %d (%.1fs)", label,
                result.best_scores["accuracy"], result.best_step, result.seconds)
    progress.report("train", advance=1)
    return PromptRecord(key, model.name, info.name, info.type, seed, storage.uri(skey), skey,
                        result.best_scores["accuracy"], result.best_scores["macro_f1"], True)


@unit_task(task_run_name="evaluate {model.name} -> {target.name}")
def evaluate_target_unit(
    model: ModelConfig,
    target_cfg: TaskConfig,
    target: NlpTaskInfo,
    sources: list[PromptRecord],
    seeds: list[int],
    train: TrainConfig,
    evaluation: EvalConfig,
    storage_root: str,
    study: str,
    run_id: str,
    device: str = "cpu",
) -> EvalOutcome:
    """Score every source prompt (+ random and no-prompt rows) on one target NLP task.

    One Prefect task per (model, target): the target split is tokenised once and the model loaded
    once for all its cells. Cells whose key is already in ``cross_task`` are skipped; the new
    cells go into one Parquet part named by the hash of their keys.
    """
    storage = open_storage(storage_root)
    part = {"study": study, "model": model.name}
    own = {s.seed: s for s in sources if s.nlp_task == target.name}
    missing_own = [s for s in seeds if s not in own]
    if missing_own:
        raise ValueError(f"target {target.name!r} has no own prompt for seed(s) {missing_own}")

    # planned cells: (cell_key, source_kind, source record or None, seed)
    plan = []
    for s in sources:
        plan.append((s.prompt_key, "prompt", s, s.seed))
    for seed in seeds:
        if evaluation.random_prompt:
            plan.append((random_source_key(train, seed), "random", None, seed))
        if evaluation.no_prompt:
            plan.append(("none", "none", None, seed))
    keyed = [(cell_key(model, src, target, evaluation, own[seed].prompt_key, seed),
              kind, rec, seed) for src, kind, rec, seed in plan]

    existing = stored_rows(storage, "cross_task", part, "target_task", target.name)
    done = set(existing["cell_key"])
    todo = [c for c in keyed if c[0] not in done]
    if not todo:
        progress.report("evaluate", advance=1)
        return EvalOutcome(model.name, target.name, 0, len(keyed), None)

    backbone = get_backbone(model, device)
    backbone.check_lengths(train.n_tokens, evaluation.max_length)
    td = get_nlp_task(target_cfg)
    enc = EncodedSplit(backbone, td, evaluation.split, evaluation.max_length,
                       evaluation.max_examples)
    label = f"evaluate {model.name} -> {target.name}"
    scores: dict[tuple[str, int], dict[str, float]] = {}  # (source id, seed) -> scores
    none_scores = None
    for i, (_ck, kind, rec, seed) in enumerate(todo):
        if kind == "prompt":
            prompt, _ = prompt_from_bytes(storage.read_bytes(rec.storage_key), rec.prompt_uri)
            s = enc.evaluate(prompt, evaluation.batch_size)
        elif kind == "random":
            prompt = init_prompt("random", backbone, train.n_tokens, seed, std=train.init_std)
            s = enc.evaluate(prompt, evaluation.batch_size)
        else:
            none_scores = none_scores or enc.evaluate(None, evaluation.batch_size)
            s = none_scores
        scores[(rec.prompt_key if rec else kind, seed)] = s
        progress.report_steps(label, i + 1, len(todo))
    progress.finish_steps(label)

    # own-prompt score per seed and metric, for relative_score (from this run or the table)
    own_score: dict[tuple[int, str], float] = {}
    for seed, rec in own.items():
        if (rec.prompt_key, seed) in scores:
            for m in ("accuracy", "macro_f1"):
                own_score[(seed, m)] = scores[(rec.prompt_key, seed)][m]
        else:  # stored by an earlier run: the row of this exact cell, not a stale config's
            own_cell = next(k for k, kind, r, sd in keyed if r is rec and sd == seed)
            rows = existing[existing["cell_key"] == own_cell]
            for _, r in rows.iterrows():
                own_score[(seed, r["metric"])] = r["score"]

    now = now_utc()
    rows = []
    for ck, kind, rec, seed in todo:
        s = scores[(rec.prompt_key if rec else kind, seed)]
        for metric in ("accuracy", "macro_f1"):
            base = own_score.get((seed, metric))
            rows.append({
                "cell_key": ck, "model": model.name,
                "source_task": rec.nlp_task if rec else None, "source_kind": kind,
                "source_prompt_key": rec.prompt_key if rec else None,
                "source_task_type": rec.task_type if rec else None,
                "target_task": target.name, "target_task_type": target.type,
                "same_type": (rec.task_type == target.type) if rec else None,
                "metric": metric, "score": s[metric],
                "relative_score": s[metric] / base if base else None,
                "n_examples": len(enc), "seed": seed, "eval_split": evaluation.split,
                "study": study, "run_id": run_id, "created_at": now,
            })
    uri = write_part(storage, "cross_task", rows, stable_hash(sorted(c[0] for c in todo)))
    progress.report("evaluate", advance=1)
    return EvalOutcome(model.name, target.name, len(todo), len(keyed) - len(todo), uri)
