"""Content keys of the transfer-matrix units.

Every unit has a deterministic key: the hash of the *content* that decides its result (model
identity or a local model folder's fingerprint, NLP task name + data fingerprint, training or
evaluation config, init prompt file hash, seed), never a file location. The storage keys of
prompt files and of the stored task data are derived from them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from prompt_core.config import EvalConfig, ModelConfig, TrainConfig, stable_hash
from tasks.unit_records import NlpTaskInfo

KEY_VERSION = 2  # bump when the meaning of a key changes (2: content keys, target partitions)


@functools.lru_cache(maxsize=64)
def _folder_fingerprint(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name, size, _ in stamp:
        h.update(f"{name}\0{size}\0".encode())
        with open(os.path.join(path, name), "rb") as f:  # head and tail: fast on GB weights
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]


def model_identity(model: ModelConfig) -> dict[str, Any]:
    """What decides the model's outputs, by content: a local model folder is fingerprinted
    (file names, sizes, first and last MiB of each file), so the same model copied to another
    folder keeps its keys; a hub id stays an id + revision."""
    ident = model.identity()
    p = Path(os.path.expanduser(model.model_id))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        ident = {**ident, "model_id": None, "folder_sha": _folder_fingerprint(str(p), stamp)}
    return ident


def train_config_key(model: ModelConfig, train: TrainConfig, init_sha: str | None) -> str:
    """Model identity + training config; the init prompt by content hash, not by path."""
    return stable_hash({
        "v": KEY_VERSION, "model": model_identity(model),
        "train": train.model_dump(exclude={"init_prompt"}), "lr": model.learning_rate(train),
        "init_sha": init_sha,
    })


def prompt_key(config_key: str, info: NlpTaskInfo, seed: int) -> str:
    """Key of a trained prompt: its training config key (:func:`train_config_key`), NLP task
    (name + data fingerprint), seed."""
    return stable_hash({"config": config_key, "task": [info.name, info.fingerprint],
                        "seed": seed})


def eval_config_key(train_key: str, evaluation: EvalConfig) -> str:
    """The configuration a matrix cell comes from: the training config key (carried by every
    prompt row as ``config_key``) + the evaluation slice."""
    ev = evaluation.model_dump(include={"split", "max_examples", "max_length"})
    return stable_hash({"train": train_key, "eval": ev})


def random_source_key(train: TrainConfig, seed: int) -> str:
    return f"random:{train.n_tokens}:{train.init_std}:{seed}"


def cell_key(config_key: str, source: str, target: NlpTaskInfo, own_key: str, seed: int) -> str:
    """Key of one matrix cell: configuration, source (prompt key, random spec or none), target
    task (name + data fingerprint), the target's own prompt (the denominator of
    relative_score) and the seed."""
    return stable_hash({
        "v": KEY_VERSION, "config": config_key, "source": source,
        "target": [target.name, target.fingerprint], "own": own_key, "seed": seed,
    })


def prompt_storage_key(model: str, nlp_task: str, key: str) -> str:
    return f"prompts/{model}/{nlp_task}/{key}.safetensors"


def task_data_key(name: str, fingerprint: str) -> str:
    return f"task_data/{name}/{fingerprint}.parquet"
