"""The flow's core parts, planned from storage: ``prepare`` (one unit per NLP task) and ``train``
(one prompt per model x NLP task x seed), which every stage builds on.

The flow and ``prompt-transfer status`` plan them with the same functions: a unit is stored
when the unit itself would skip it.

- ``prepare <task>``: the task's data loads where the study names it, and an intact copy is in
  storage (``task_data/<name>/<fingerprint>.parquet``, read the same way the units read it);
- ``train <model>/<task> seed=<s>``: this study's ``prompts`` table holds the prompt key and
  the prompt file (``prompts/<model>/<task>/<key>.safetensors``) is intact and the right one.

Planning reads each model's ``prompts`` partition once and the prompt files on a small thread
pool; it writes nothing (a damaged file or part is planned as missing, and the unit that
recomputes it moves it to ``_quarantine/``).
"""

from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor

from flows.submit import Planned, unit_tags
from prompt_core.config import StudyConfig, TrainConfig
from prompt_core.data import TaskDataError
from prompt_core.errors import InputError
from prompt_core.prompts import PromptFileError, prompt_from_bytes
from tasks.storage import Storage, StorageError
from tasks.tables import PromptRow, stored_rows
from tasks.unit_io import stored_task_cached
from tasks.units import (
    NlpTaskInfo,
    RunContext,
    TrainOutcome,
    nlp_task_info,
    prepare_nlp_task,
    prompt_key,
    prompt_storage_key,
    read_init_prompt,
    task_data_key,
    train_config_key,
    train_prompt_unit,
)

READ_THREADS = 8  # prompt files checked at once while planning (object storage round-trips)


def plan_prepare(ctx: RunContext, study: StudyConfig, storage: Storage,
                 problems: list[str] | None = None) -> list[Planned]:
    """One unit per NLP task of the study: stored (its :class:`NlpTaskInfo` with the copy's
    key) when an intact copy is in storage. A task whose data does not load is planned as
    missing and its error added to ``problems`` (``check_study`` refuses such a study before a
    run, so only ``status`` meets it)."""
    out = []
    for cfg in study.tasks:
        label = cfg.label()
        submit = functools.partial(prepare_nlp_task.submit, ctx, cfg, label)
        tags = unit_tags("prepare", None)
        try:
            info = nlp_task_info(cfg)
        except InputError as exc:
            if problems is None:
                raise
            problems.append(f"prepare {label}: {exc}")
            out.append(Planned(f"prepare {label}", None, submit=submit, tags=tags))
            continue
        key = task_data_key(info.name, info.fingerprint)
        stored = None
        if storage.exists(key):
            try:
                stored_task_cached(storage.root, key)
                stored = dataclasses.replace(info, label=label, data_key=key)
            except (TaskDataError, StorageError):
                stored_task_cached.cache_clear()
        out.append(Planned(f"prepare {label}", None, stored=stored, tags=tags,
                           submit=None if stored is not None else submit))
    return out


def prompt_file_ok(storage: Storage, row: PromptRow) -> bool:
    """The prompt file of a stored row is there, loads, and holds that prompt (key, shape)."""
    skey = prompt_storage_key(row.model, row.task, row.prompt_key)
    try:
        prompt, meta = prompt_from_bytes(storage.read_bytes(skey), storage.uri(skey))
    except (PromptFileError, StorageError):
        return False
    return meta.get("prompt_key") == row.prompt_key and prompt.shape[0] == row.n_tokens


def plan_train(ctx: RunContext, study: StudyConfig, storage: Storage, models: list,
               infos: list[NlpTaskInfo], train: TrainConfig, label_suffix: str = "",
               problems: list[str] | None = None) -> list[Planned]:
    """One unit per model x NLP task x seed (model, then task, then seed): stored (its
    :class:`TrainOutcome`, ``trained=False``) when this study's ``prompts`` row and the prompt
    file are intact. ``train``: the training config (the study's, or TPT's own budget)."""
    problems = [] if problems is None else problems
    _, init_sha = read_init_prompt(train)
    out: list[Planned] = []
    checks: list[tuple[int, PromptRow]] = []
    for m in models:
        cfg_key = train_config_key(m, train, init_sha)
        rows = {r.prompt_key: r for r in stored_rows(
            storage, "prompts", {"study": study.name, "model": m.name}, PromptRow, problems)}
        for info in infos:
            for seed in study.seeds:
                key = prompt_key(cfg_key, info, seed)
                out.append(Planned(
                    f"train {m.name}/{info.name} seed={seed}{label_suffix}", m.name,
                    submit=functools.partial(train_prompt_unit.submit, ctx, m, info, train,
                                             seed),
                    tags=unit_tags("train", m.name)))
                if key in rows:
                    checks.append((len(out) - 1, rows[key]))
    with ThreadPoolExecutor(min(READ_THREADS, max(len(checks), 1))) as pool:
        oks = list(pool.map(lambda c: prompt_file_ok(storage, c[1]), checks))
    for (i, row), ok in zip(checks, oks, strict=True):
        if ok:
            skey = prompt_storage_key(row.model, row.task, row.prompt_key)
            out[i] = dataclasses.replace(out[i], submit=None,
                                         stored=TrainOutcome(row, skey, trained=False))
    return out
