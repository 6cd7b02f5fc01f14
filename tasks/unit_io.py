"""What the transfer-matrix units read, loaded once per process where caching pays: NLP task
data (from where the study names it, or the copy the prepare unit stored), the frozen
backbone, the init prompt file; and the stored rows and prompt files a unit checks before it
computes. Damaged parts and prompt files count as absent: they are moved to ``_quarantine/``
(:func:`tasks.integrity.quarantine_key`)."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from prompt_core.backbones import Backbone, cached_backbone
from prompt_core.config import ModelConfig, TaskConfig, TrainConfig
from prompt_core.data import TaskData, load_nlp_task, task_from_parquet
from prompt_core.preflight import read_prompt_bytes
from prompt_core.prompts import PromptFileError, prompt_from_bytes
from tasks.integrity import quarantine_key
from tasks.keys import prompt_storage_key
from tasks.storage import Storage, StorageError, open_storage
from tasks.tables import PromptRow, part_path, read_part
from tasks.unit_records import NlpTaskInfo, RunContext

# --- shared, per-process loading ------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _nlp_task_cached(cfg_json: str) -> TaskData:
    return load_nlp_task(TaskConfig.model_validate_json(cfg_json))


def get_nlp_task(cfg: TaskConfig) -> TaskData:
    """The NLP task's data, loaded once per process."""
    return _nlp_task_cached(cfg.model_dump_json())


@functools.lru_cache(maxsize=8)
def _root(storage_root: str) -> Storage:
    """One Storage per root and process, for the cheap checks below."""
    return open_storage(storage_root)


@functools.lru_cache(maxsize=64)
def _stored_task(storage_root: str, key: str, stamp: tuple[int, str]) -> TaskData:
    storage = _root(storage_root)
    return task_from_parquet(storage.read_bytes(key), storage.uri(key))


def stored_task_cached(storage_root: str, key: str) -> TaskData:
    """The NLP task data stored at ``key``, read once per process and version of the object:
    a copy replaced or damaged since it was read (another size, ETag or mtime: one stat) is
    read again, so a damaged copy is found (TaskDataError) and recopied by a rerun in the
    same process too."""
    return _stored_task(storage_root, key, _root(storage_root).stamp(key))


stored_task_cached.cache_clear = _stored_task.cache_clear  # type: ignore[attr-defined]


def task_data(ctx: RunContext, info: NlpTaskInfo) -> TaskData:
    """An NLP task's data as the prepare unit stored it: read from the run's storage (once per
    process), so a worker on another machine needs no access to the submitting machine's
    files."""
    if info.data_key is None:
        raise ValueError(f"NLP task {info.name!r} was not prepared (no data in storage)")
    return stored_task_cached(ctx.storage_root, info.data_key)


def get_backbone(model: ModelConfig, device: str) -> Backbone:
    return cached_backbone(model.kind, model.model_id, model.revision, device, **model.options)


def nlp_task_info(cfg: TaskConfig) -> NlpTaskInfo:
    """One NLP task's identity (name, type, data fingerprint, split sizes), read without
    writing anything (``status`` uses it; the prepare unit adds the copy in storage)."""
    td = get_nlp_task(cfg)
    n = {s: len(df) for s, df in td.splits.items()}
    return NlpTaskInfo(cfg.label(), td.name, td.spec.type, td.fingerprint, n["train"],
                       n["validation"], n["test"], td.spec.n_labels)


def read_init_prompt(train: TrainConfig) -> tuple[bytes | None, str | None]:
    """Bytes and sha256 of ``train.init_prompt`` (a local path or any fsspec URI), if set."""
    if train.init_prompt is None:
        return None, None
    data = read_prompt_bytes(train.init_prompt)
    return data, hashlib.sha256(data).hexdigest()[:16]


# --- stored rows and prompt files -----------------------------------------------------------


def intact_prompt_meta(storage: Storage, skey: str, key: str, n_tokens: int) -> dict | None:
    """The prompt file's metadata if it is complete, readable and the right one, else None
    (a damaged file is quarantined)."""
    if not storage.exists(skey):
        return None
    try:
        prompt, meta = prompt_from_bytes(storage.read_bytes(skey), storage.uri(skey))
        if meta.get("prompt_key") != key or prompt.shape[0] != n_tokens:
            raise PromptFileError(f"holds prompt {meta.get('prompt_key')!r} of shape "
                                  f"{tuple(prompt.shape)}")
    except (PromptFileError, StorageError) as exc:
        quarantine_key(storage, skey, str(exc))
        return None
    return meta


def stored_row(storage: Storage, table: str, values: dict[str, str], key: str, row_cls: type,
               key_field: str) -> Any | None:
    """The row of ``key`` from its own part of ``table``, if the part is intact (a damaged
    part is quarantined and counts as absent)."""
    part = part_path(table, values, key)
    if not storage.exists(part):
        return None
    try:
        rows = read_part(storage, table, part).to_pylist()
        return row_cls(**next(r for r in rows if r[key_field] == key))
    except (StorageError, StopIteration, TypeError) as exc:
        quarantine_key(storage, part, str(exc) or "no row with its key")
        return None


def stored_prompt_row(storage: Storage, ctx: RunContext, model: str, key: str
                      ) -> PromptRow | None:
    """This study's ``prompts`` row of ``key`` from its own part, if the part is intact."""
    return stored_row(storage, "prompts", {"study": ctx.study, "model": model}, key, PromptRow,
                      "prompt_key")


def load_stored_prompt(storage: Storage, row: PromptRow, hidden: int | None = None) -> Any:
    """A stored prompt (n, D) by its ``prompts`` row."""
    skey = prompt_storage_key(row.model, row.task, row.prompt_key)
    prompt, _ = prompt_from_bytes(storage.read_bytes(skey), storage.uri(skey), hidden,
                                  row.n_tokens)
    return prompt
