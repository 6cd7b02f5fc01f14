"""The study file's common sections: names and hashes, the strict base of every section, and
the ``training``, ``evaluation``, ``models[]``, ``tasks[]`` and ``runner`` models with their
backbone-option checks. :mod:`prompt_core.config` assembles them into a study (and re-exports
every name here); the built-in stages' option sections are in :mod:`prompt_core.stage_options`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from prompt_core.backbone_kinds import MINILM_ID, NO_DEFAULT, kind_spec

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
JSON_SCALARS = (str, int, float, bool, type(None))


def stable_hash(obj: Any, n: int = 16) -> str:
    """Deterministic short sha256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot name a study, model or task (it becomes a path segment and a table
    partition value), or None when it can."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not NAME_RE.match(value):
        return "may only use letters, digits, '_', '.', '-'"
    if value in (".", ".."):
        return "may not be '.' or '..'"
    return None



def check_name(v: str, what: str) -> str:
    """``v`` when it can name a ``what`` (see :func:`name_problem`); ValueError otherwise."""
    problem = name_problem(v)
    if problem:
        raise ValueError(f"{what} {v!r} {problem}")
    return v


class StrictSection(BaseModel):
    """Base of every study section: unknown keys are errors, and types are strict (``steps:
    true`` or ``lr: "1e-3"`` is refused, never read as 1 or parsed from text)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def backbone_options(kind: str) -> dict[str, Any]:
    """Options a backbone kind accepts, name -> type (``Any`` when unannotated): the keyword
    parameters its class's ``from_pretrained`` and constructor add to those every backbone
    takes, as declared in :mod:`prompt_core.backbone_kinds`."""
    return {name: typ for name, (typ, _) in kind_spec(kind).options.items()}


def backbone_option_defaults(kind: str) -> dict[str, Any]:
    """The default value of each option of a backbone kind that has one (name -> value)."""
    return {name: default for name, (_, default) in kind_spec(kind).options.items()
            if default is not NO_DEFAULT}


def _option_problem(kind: str, name: str, value: Any, known: dict[str, Any]) -> str | None:
    if name not in known:
        return f"unknown option {name!r} for kind {kind!r}; known: {sorted(known)}"
    if not isinstance(value, JSON_SCALARS):
        return (f"option {name!r} must be a string, number, boolean or null, "
                f"got {type(value).__name__}")
    try:
        TypeAdapter(known[name]).validate_python(value, strict=True)
    except ValidationError:
        return f"option {name!r} for kind {kind!r} must be {_type_name(known[name])}, got {value!r}"
    return None


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return f"one of {list(typing.get_args(tp))}"
    return getattr(tp, "__name__", None) or str(tp)


class TrainConfig(StrictSection):
    """Prompt tuning: AdamW, constant LR, best-dev checkpoint."""

    n_tokens: int = Field(20, ge=1, le=512, description="soft prompt length")
    steps: int = Field(300, ge=1, description="optimiser steps (fewer with patience)")
    batch_size: int = Field(16, ge=1, description="training batch size")
    batching: Literal["bucketed", "random"] = Field(
        "bucketed", description="how training batches are drawn: bucketed (each epoch in random "
        "order, members of a batch of similar length so less padding; faster) or random (a "
        "random batch padded to its longest member)"
    )
    lr: float | None = Field(
        None, gt=0, description="learning rate; None = the backbone kind's default"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (paper: 0)")
    eval_every: int = Field(50, ge=1, description="steps between dev evaluations")
    patience: int | None = Field(
        None, ge=1, description="early stopping: stop after this many dev evaluations in a row "
        "without a better select_metric (null = always train all steps)")
    init: Literal["random", "vocab", "text", "prompt"] = Field(
        "random", description="prompt initialisation: random, vocab, text, prompt (a file)"
    )
    init_text: str | None = Field(None, description="text whose token embeddings init the prompt")
    init_prompt: str | None = Field(
        None, description="prompt file (path or URI, .safetensors) to start from (init: prompt)"
    )
    init_std: float = Field(0.02, gt=0, description="std of the random init")
    max_length: int = Field(128, ge=8, description="max tokens of the input text (prompt excluded)")
    max_dev_examples: int | None = Field(
        500, ge=1, description="cap on dev examples per evaluation"
    )
    select_metric: Literal["accuracy", "macro_f1"] = Field(
        "accuracy", description="dev metric that picks the best checkpoint"
    )

    @model_validator(mode="after")
    def _init_args(self):
        if self.init == "text" and not self.init_text:
            raise ValueError("init: text needs init_text")
        if (self.init == "prompt") != (self.init_prompt is not None):
            raise ValueError("init: prompt and init_prompt (a prompt file) go together")
        return self


class EvalConfig(StrictSection):
    """Zero-shot cross-task evaluation."""

    split: Literal["train", "validation", "test"] = Field("test", description="target split scored")
    batch_size: int = Field(64, ge=1, description="evaluation batch size")
    max_examples: int | None = Field(None, ge=1, description="cap on target examples (None = all)")
    max_length: int = Field(128, ge=8, description="max tokens of the input text")
    random_prompt: bool = Field(True, description="add a random-prompt baseline row per target")
    no_prompt: bool = Field(True, description="add a no-prompt row per target")


class ModelConfig(StrictSection):
    """A backbone. ``kind: encoder`` alone means the offline MiniLM."""

    kind: str = Field(description="backbone kind: encoder, mlm")
    name: str | None = Field(None, description="short name used in tables and paths")
    model_id: str | None = Field(
        None, description="hub id or local directory (a path starting with ./ or ../ resolves "
        "from the study file's folder); default per kind")
    revision: str | None = Field(None, description="model revision (hub)")
    lr: float | None = Field(None, gt=0, description="learning rate override for this model")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="backbone options: keyword parameters of the kind's class (e.g. encoder: "
        "temperature), scalar values",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        kind_spec(v)  # ValueError naming the known kinds
        return v

    @field_validator("options")
    @classmethod
    def _known_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("kind")
        if kind is None:  # the kind itself is invalid and already reported
            return v
        known = backbone_options(kind)
        problems = [p for name, value in v.items()
                    if (p := _option_problem(kind, name, value, known))]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _defaults(self):
        if self.model_id is None:
            self.model_id = kind_spec(self.kind).default_model_id
        elif self.model_id.startswith("~"):  # transformers does not expand the home folder
            self.model_id = os.path.expanduser(self.model_id)
        if self.name is None:
            base = ("minilm" if self.model_id == MINILM_ID
                    else self.model_id.rstrip("/").split("/")[-1])
            self.name = re.sub(r"[^A-Za-z0-9_.-]", "-", base)
        check_name(self.name, "model name")
        return self

    def identity(self) -> dict[str, Any]:
        """What decides this model's outputs (part of every cache key). Options carry their
        defaults filled in, so changing a default changes the keys of the prompts it made."""
        options = {**backbone_option_defaults(self.kind), **self.options}
        return {"kind": self.kind, "model_id": self.model_id, "revision": self.revision,
                "options": dict(sorted(options.items()))}

    def learning_rate(self, train: TrainConfig) -> float:
        return self.lr or train.lr or kind_spec(self.kind).default_lr


class HFSourceConfig(StrictSection):
    """Any Hugging Face dataset read through ``datasets.load_dataset`` with a column mapping."""

    path: str = Field(description="dataset id or builder (e.g. 'parquet')")
    name: str | None = Field(None, description="dataset config name")
    data_files: dict[str, str] | str | None = Field(
        None, description="local files or URLs for a builder; relative to the study file"
    )
    revision: str | None = Field(None, description="dataset revision (hub)")
    text_a: str = Field(description="column holding the first text")
    text_b: str | None = Field(None, description="column holding the second text (pairs)")
    label: str = Field("label", description="column holding the label id")
    label_names: list[str] = Field(description="label names, in label id order (a list)")
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"},
        description="our split name -> the dataset's split name",
    )
    type: str = Field("unknown", description="task type (sentiment, nli...)")


class TaskConfig(StrictSection):
    """One NLP task: exactly one of ``path``, ``builtin``, ``catalogue`` or ``hf``."""

    path: str | None = Field(None, description="task folder (task.json + split files)")
    builtin: str | None = Field(None, description="a built-in demo task by name")
    catalogue: str | None = Field(None, description="a paper task from the HF catalogue")
    hf: HFSourceConfig | None = Field(None, description="any HF dataset with a column mapping")
    name: str | None = Field(None, description="override the task name")
    type: str | None = Field(None, description="override the task type")
    label_words: list[str] | None = Field(None, description="override the verbalizer words")
    max_train: int | None = Field(None, ge=1, description="cap on training rows (HF sources)")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("path", "builtin", "catalogue", "hf") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a task needs exactly one of path, builtin, catalogue, hf; got "
                + (", ".join(given) or "none")
            )
        if self.name is not None:
            check_name(self.name, "task name")
        return self

    def label(self) -> str:
        """Display label before the data is loaded."""
        return self.name or self.builtin or self.catalogue or (
            Path(self.path).name if self.path
            else self.hf.name or self.hf.path.rstrip("/").split("/")[-1]
        )


DEVICE_SPECS = "cpu, cuda, cuda:N or auto"
DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
DASK_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)"
                        r":(\d{1,5})$")


def dask_address_problem(address: str) -> str | None:
    """Why ``address`` is not a Dask scheduler address (``[scheme://]host:port``), or None."""
    scheme, sep, rest = address.strip().rpartition("://")
    if sep and scheme not in DASK_SCHEMES:
        return (f"has scheme {scheme!r}; a Dask scheduler address is "
                f"{'|'.join(DASK_SCHEMES)}://host:port")
    if not sep and (address.endswith(".json") or "/" in address):
        return ("looks like a scheduler file: give the scheduler's address instead (its "
                "'address' field, e.g. tcp://sched:8786)")
    m = _HOST_PORT.match(rest)
    if not m or not 0 < int(m.group(3)) < 65536:
        return "is not a Dask scheduler address: use tcp://host:port (e.g. tcp://sched:8786)"
    return None


RunnerKind = Literal["threads", "processes", "dask"]  # runner.task_runner, the CLI's --runner


class RunnerConfig(StrictSection):
    """How the flow runs its units: which Prefect task runner, where models live."""

    task_runner: RunnerKind = Field(
        "threads", description="threads (one process, models shared), processes (a local "
        "process pool), dask (prefect-dask: a local cluster, or dask_address)")
    max_workers: int = Field(1, ge=1, description="concurrent task runs (threads or processes; "
                                                  "dask: worker processes of a local cluster)")
    dask_address: str | None = Field(
        None, description="scheduler address of an existing Dask cluster (tcp://host:8786); "
        "task_runner: dask only")
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per unit; default: the machine's cores // "
        "max_workers (scores are bit-identical across runners for the same thread count)")
    device: str = Field("cpu", description="torch device for models: cpu, cuda, cuda:N or auto "
                                           "(cuda when present, else cpu)")
    bf16: bool = Field(True, description="bf16 autocast on a CUDA device that supports it")
    trainings_per_gpu: int = Field(
        1, ge=1, description="trainings sharing one GPU at once (a Prefect global concurrency "
        "limit per GPU)")
    train_deployment: str | None = Field(
        None, description="fan training out as one flow run per (model, source task) of this "
        "deployment (e.g. 'train-prompts/local') through run_deployment; default: in this run")
    task_tags: bool = Field(
        False, description="tag each unit's task run with its stage and model (stage:train, "
        "model:minilm): the UI filters by them and Prefect tag concurrency limits apply to "
        "them. Prefect then acquires tag slots through the API as each unit starts (1-2 s per "
        "unit on 2 CPU cores); without tags the stage and model are in the task run's name")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        """The spec's format (whether this machine has the device is checked before a run, by
        :func:`prompt_core.preflight.check_study`, where the units run locally)."""
        if not DEVICE_RE.match(v.strip().lower()):
            raise ValueError(f"{v!r} is not one of {DEVICE_SPECS}")
        return v

    @field_validator("dask_address")
    @classmethod
    def _dask_address_format(cls, v: str | None) -> str | None:
        """A scheduler address as prefect-dask hands it to ``distributed.Client``:
        ``[tcp|tls|ws|wss|ucx]://host:port`` (no scheme: tcp). Only the format can be known
        here; whether a scheduler answers is probed before the flow starts."""
        if v is not None and dask_address_problem(v):
            raise ValueError(f"{v!r} {dask_address_problem(v)}")
        return v

    @model_validator(mode="after")
    def _dask_address(self):
        if self.dask_address is not None and self.task_runner != "dask":
            raise ValueError("dask_address needs task_runner: dask")
        return self
