"""Pydantic models for a study file; every default lives here.

A minimal study file::

    name: my-study
    storage: s3://bucket/prefix      # optional: default root otherwise
    models:
      - kind: encoder                # the offline MiniLM
    tasks:
      - path: ../../shared/data/sst2 # task folder; relative paths resolve from the study file
      - builtin: movie_sentiment     # a demo task shipped with the package

Everything else has defaults (see the ``description`` of each field).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prompt_core.errors import InputError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def stable_hash(obj: Any, n: int = 16) -> str:
    """Deterministic short sha256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _check_name(v: str, what: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(f"{what} {v!r} may only use letters, digits, '_', '.', '-'")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Strict):
    """Prompt tuning: AdamW, constant LR, best-dev checkpoint."""

    n_tokens: int = Field(20, ge=1, le=512, description="soft prompt length")
    steps: int = Field(150, ge=1, description="optimiser steps")
    batch_size: int = Field(16, ge=1, description="training batch size")
    lr: float | None = Field(
        None, gt=0, description="learning rate; None = the backbone kind's default"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (paper: 0)")
    eval_every: int = Field(50, ge=1, description="steps between dev evaluations")
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


class EvalConfig(_Strict):
    """Zero-shot cross-task evaluation."""

    split: Literal["train", "validation", "test"] = Field("test", description="target split scored")
    batch_size: int = Field(64, ge=1, description="evaluation batch size")
    max_examples: int | None = Field(None, ge=1, description="cap on target examples (None = all)")
    max_length: int = Field(128, ge=8, description="max tokens of the input text")
    random_prompt: bool = Field(True, description="add a random-prompt baseline row per target")
    no_prompt: bool = Field(True, description="add a no-prompt row per target")


class ModelConfig(_Strict):
    """A backbone. ``kind: encoder`` alone means the offline MiniLM."""

    kind: str = Field(description="backbone kind: encoder, mlm")
    name: str | None = Field(None, description="short name used in tables and paths")
    model_id: str | None = Field(None, description="hub id or local directory; default per kind")
    revision: str | None = Field(None, description="model revision (hub)")
    lr: float | None = Field(None, gt=0, description="learning rate override for this model")
    options: dict[str, Any] = Field(default_factory=dict, description="backbone options")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from prompt_core.backbones import BACKBONES

        if v not in BACKBONES:
            raise ValueError(f"unknown backbone kind {v!r}; known kinds: {sorted(BACKBONES)}")
        return v

    @model_validator(mode="after")
    def _defaults(self):
        from prompt_core.backbones import MINILM_ID, backbone_class

        if self.model_id is None:
            self.model_id = backbone_class(self.kind).default_model_id
        if self.name is None:
            base = ("minilm" if self.model_id == MINILM_ID
                    else self.model_id.rstrip("/").split("/")[-1])
            self.name = re.sub(r"[^A-Za-z0-9_.-]", "-", base)
        _check_name(self.name, "model name")
        return self

    def identity(self) -> dict[str, Any]:
        """What decides this model's outputs (part of every cache key)."""
        return {"kind": self.kind, "model_id": self.model_id, "revision": self.revision,
                "options": self.options}

    def learning_rate(self, train: TrainConfig) -> float:
        from prompt_core.backbones import backbone_class

        return self.lr or train.lr or backbone_class(self.kind).default_lr


class HFSourceConfig(_Strict):
    path: str = Field(description="dataset id or builder (e.g. 'parquet')")
    name: str | None = Field(None, description="dataset config name")
    data_files: dict[str, str] | str | None = None
    revision: str | None = None
    text_a: str
    text_b: str | None = None
    label: str = "label"
    label_names: list[str]
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    type: str = "unknown"


class TaskConfig(_Strict):
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
            _check_name(self.name, "task name")
        return self

    def label(self) -> str:
        """Display label before the data is loaded."""
        return self.name or self.builtin or self.catalogue or (
            Path(self.path).name if self.path else self.hf.name or self.hf.path
        )


class RunnerConfig(_Strict):
    max_workers: int = Field(1, ge=1, description="concurrent Prefect task runs (threads)")
    device: str = Field("cpu", description="torch device for models")


class StudyConfig(_Strict):
    """A whole transfer study: models x tasks x seeds."""

    name: str = Field(description="study name (a table partition)")
    storage: str | None = Field(None, description="storage root URI; default root when absent")
    models: list[ModelConfig] = Field(min_length=1)
    tasks: list[TaskConfig] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    training: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "study name")

    @model_validator(mode="after")
    def _unique(self):
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model names must be unique; repeated: {sorted(dup)} (set `name:`)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


class StudyFileError(InputError):
    """The study file is missing, not YAML, or fails validation; the message says where."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the study file:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def _resolve_files(files: dict[str, str] | str, base_dir: Path) -> dict[str, str] | str:
    """Relative local data files resolve from the study file's folder (URLs stay as given)."""

    def one(f: str) -> str:
        return f if "://" in f or Path(f).is_absolute() else str((base_dir / f).resolve())

    return one(files) if isinstance(files, str) else {k: one(v) for k, v in files.items()}


def parse_study(data: Any, source: str = "study", base_dir: Path | None = None) -> StudyConfig:
    """Validate a study dict; resolve relative task paths against ``base_dir``."""
    if not isinstance(data, dict):
        raise StudyFileError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as e:
        raise StudyFileError(_format_errors(e, source)) from None
    if base_dir is not None:
        for t in study.tasks:
            if t.path and not Path(t.path).is_absolute():
                t.path = str((base_dir / t.path).resolve())
            if t.hf is not None and t.hf.data_files is not None:
                t.hf.data_files = _resolve_files(t.hf.data_files, base_dir)
        if study.training.init_prompt is not None:
            study.training.init_prompt = _resolve_files(study.training.init_prompt, base_dir)
    return study


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file (relative task paths resolve from its folder)."""
    p = Path(path)
    if not p.is_file():
        raise StudyFileError(f"study file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise StudyFileError(f"{p}: not valid YAML ({e})") from None
    return parse_study(data, str(p), p.resolve().parent)


def load_nlp_task(cfg: TaskConfig):
    """Load the NLP task a study entry names (folder, built-in, catalogue or HF) as TaskData."""
    from prompt_core import data

    if cfg.path is not None:
        td = data.load_task_folder(cfg.path)
    elif cfg.builtin is not None:
        td = data.load_builtin_task(cfg.builtin)
    elif cfg.catalogue is not None:
        if cfg.catalogue not in data.PAPER_TASKS:
            raise data.TaskDataError(
                f"no catalogue task {cfg.catalogue!r}; known: {sorted(data.PAPER_TASKS)}"
            )
        max_rows = {"train": cfg.max_train} if cfg.max_train else None
        td = data.load_hf_task(cfg.catalogue, data.PAPER_TASKS[cfg.catalogue], max_rows=max_rows)
    else:
        h = cfg.hf
        src = data.HFTaskSource(
            h.path, h.name, h.type, h.text_a, h.text_b, h.label, tuple(h.label_names),
            splits=tuple(h.splits.items()),
        )
        max_rows = {"train": cfg.max_train} if cfg.max_train else None
        td = data.load_hf_task(cfg.label(), src, h.data_files, h.revision, max_rows=max_rows)
    if cfg.name or cfg.type or cfg.label_words:
        spec = data.make_spec(
            cfg.name or td.spec.name, cfg.type or td.spec.type, td.spec.label_names,
            cfg.label_words or td.spec.label_words, td.spec.description, td.source,
        )
        td = data.TaskData(spec, td.splits, td.source)
    if cfg.max_train and len(td.splits["train"]) > cfg.max_train:
        td = data.TaskData(td.spec, {**td.splits, "train": td.splits["train"].sample(
            n=cfg.max_train, random_state=0).reset_index(drop=True)}, td.source)
    return td
