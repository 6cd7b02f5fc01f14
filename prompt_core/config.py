"""Pydantic models for a study file; every default lives here.

A minimal study file::

    name: my-study
    storage: s3://bucket/prefix      # optional: default root otherwise
    models:
      - kind: encoder                # the offline MiniLM
    tasks:
      - path: ../../shared/data/sst2 # task folder; relative paths resolve from the study file
      - builtin: tweet_sentiment     # a demo task shipped with the package

Everything else has defaults (see the ``description`` of each field). A study file is plain
YAML of at most 1 MiB (anchors and aliases are refused), types are strict (``steps: true`` is
an error, not 1), and ``models[].options`` are the keyword parameters of the backbone kind.
What needs the data, the models' configs or a prompt file is checked by
:func:`prompt_core.preflight.check_study`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from prompt_core.backbone_kinds import (
    DEFAULT_ON_POSITION,
    MINILM_ID,
    NO_DEFAULT,
    OnPosition,
    kind_spec,
)
from prompt_core.errors import InputError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_STUDY_BYTES = 1 << 20  # a study file is a page of settings; 1 MiB is far beyond any real one
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


def _check_name(v: str, what: str) -> str:
    problem = name_problem(v)
    if problem:
        raise ValueError(f"{what} {v!r} {problem}")
    return v


class _Strict(BaseModel):
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


class TrainConfig(_Strict):
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
        _check_name(self.name, "model name")
        return self

    def identity(self) -> dict[str, Any]:
        """What decides this model's outputs (part of every cache key). Options carry their
        defaults filled in, so changing a default changes the keys of the prompts it made."""
        options = {**backbone_option_defaults(self.kind), **self.options}
        return {"kind": self.kind, "model_id": self.model_id, "revision": self.revision,
                "options": dict(sorted(options.items()))}

    def learning_rate(self, train: TrainConfig) -> float:
        return self.lr or train.lr or kind_spec(self.kind).default_lr


class HFSourceConfig(_Strict):
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
            Path(self.path).name if self.path
            else self.hf.name or self.hf.path.rstrip("/").split("/")[-1]
        )


class RunnerConfig(_Strict):
    """How the flow runs its units: which Prefect task runner, where models live."""

    task_runner: Literal["threads", "processes", "dask"] = Field(
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

    @model_validator(mode="after")
    def _dask_address(self):
        if self.dask_address is not None and self.task_runner != "dask":
            raise ValueError("dask_address needs task_runner: dask")
        return self


@dataclass(frozen=True)
class StageSpec:
    """The study-file side of a stage (the flow side is :class:`flows.stage_api.Stage`): its
    name in ``stages:``, the model of its options section (a top-level key of the study named
    after the stage; None: it has none), whether that section must be given (False: every
    option has a default), the stages it needs in the same study, and its cross-checks
    against the rest of the study (``check(study)`` raises ValueError)."""

    name: str
    options: type[BaseModel] | None = None
    needs_section: bool = False
    requires: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None


STAGE_SPECS: dict[str, StageSpec] = {}


def register_stage_spec(spec: StageSpec) -> StageSpec:
    """Make ``spec.name`` a stage a study may name (built-in ones below; a plug-in stage
    registers its own, with its options model). Registering a name again replaces it."""
    _check_name(spec.name, "stage name")
    STAGE_SPECS[spec.name] = spec
    return spec


def _known_stage(name: str) -> str:
    if name not in STAGE_SPECS:
        raise ValueError(f"unknown stage {name!r}; known: {sorted(STAGE_SPECS)}")
    return name


class ProjectorConfig(_Strict):
    """A cross-model projector g: flatten (n * d_s) -> Linear -> activation -> Linear ->
    (n * d_t), optional LayerNorm per token (METHOD.md; the paper's hidden size is 768)."""

    hidden: int = Field(768, ge=1, description="hidden width of the projector MLP")
    activation: Literal["tanh", "leaky_relu"] = Field("tanh", description="tanh or leaky_relu")
    layer_norm: bool = Field(False, description="LayerNorm over each projected prompt token")
    steps: int = Field(200, ge=1, description="optimiser steps")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(16, ge=1, description="task tuning: examples per step")
    max_length: int = Field(128, ge=8, description="task tuning: max tokens of the input text")


class ModelPair(_Strict):
    """A source model whose prompts are projected into a target model (names from
    ``models``)."""

    source: str = Field(description="source model name")
    target: str = Field(description="target model name")


class CrossModelConfig(_Strict):
    """Cross-model transfer: projectors trained on ``train_tasks``, evaluated zero-shot on
    the study's other tasks (held out)."""

    train_tasks: list[str] = Field(
        min_length=1, description="tasks (names) the projectors train on; every other study "
        "task is held out and evaluated")
    pairs: list[ModelPair] | None = Field(
        None, description="(source, target) model pairs; default: every ordered pair of "
        "distinct models")
    objectives: list[Literal["distance", "task"]] = Field(
        default_factory=lambda: ["distance", "task"], min_length=1,
        description="distance (L2 to the target model's own prompt) and/or task (the target "
        "model's task loss through the projector)")
    projector: ProjectorConfig = Field(default_factory=ProjectorConfig)
    unprojected: bool = Field(
        True, description="where hidden sizes match, also score the source prompt as is")

    @model_validator(mode="after")
    def _unique(self):
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives repeat: {self.objectives}")
        if len(set(self.train_tasks)) != len(self.train_tasks):
            raise ValueError(f"train_tasks repeat: {self.train_tasks}")
        return self


class TptSource(_Strict):
    """A source prompt for transferable prompt tuning: a task's prompt of the same model, or
    of another model (projected by the cross_model stage's projector)."""

    task: str = Field(description="source task name")
    model: str | None = Field(None, description="source model name; default: the target's")


class TptConfig(_Strict):
    """Transferable prompt tuning: train a target task's prompt from a source prompt (fresh
    optimiser) and compare its curve with random init under the same budget."""

    models: list[str] | None = Field(None, description="models to run TPT on; default: all")
    targets: list[str] | None = Field(None, description="target tasks; default: all")
    sources: list[TptSource] | None = Field(
        None, description="explicit sources, tried for every target (a target is never its "
        "own source)")
    top_k: int | None = Field(
        None, ge=1, description="or: the k best sources for each target, ranked by their mean "
        "relative accuracy over seeds on the target's VALIDATION split (never the test split: "
        "choosing sources is model selection)")
    rank_max_examples: int | None = Field(
        300, ge=1, description="top_k: score the candidate sources on at most this many "
        "validation examples of the target (null: all)")
    steps: int | None = Field(None, ge=1, description="training steps; default: training.steps")
    eval_every: int | None = Field(
        None, ge=1, description="steps between dev evaluations; default: training.eval_every")
    fraction: float = Field(0.9, gt=0, le=1, description="reach this fraction of the random "
                                                          "init's best dev score")
    score_at_step: int | None = Field(
        None, ge=1, description="report the dev score after this many steps (the last "
        "evaluation at or before it); default: eval_every")
    projector_objective: Literal["distance", "task"] = Field(
        "distance", description="which projector carries another model's prompt over")

    @model_validator(mode="after")
    def _one_source_rule(self):
        if (self.sources is None) == (self.top_k is None):
            raise ValueError("tpt needs exactly one of sources (explicit) and top_k")
        return self

    def train_config(self, training: TrainConfig) -> TrainConfig:
        """The training config of TPT runs and their random-init baseline: the study's, with
        TPT's budget (the same config gives the train stage's prompts as the baseline). Early
        stopping (``patience``) applies to both alike; the TPT measures read curves that end
        early as ending at their last evaluation (:func:`~prompt_core.analysis.tpt_metrics`)."""
        update = {k: v for k, v in {"steps": self.steps, "eval_every": self.eval_every}.items()
                  if v is not None}
        return training.model_copy(update=update) if update else training


class IndicatorsConfig(_Strict):
    """Transferability indicators between every pair of one model's prompts (ES: prompt
    embedding similarity; ON: overlap of the FFN neurons the prompts activate), their
    correlation with the cross-task matrix, the neuron-masking ablation and the source
    recommender's leave-one-task-out evaluation."""

    models: list[str] | None = Field(None, description="models to compute them for; default: "
                                                        "all")
    window: int = Field(3, ge=1, description="ON per window of this many consecutive layers "
                                             "(besides ON over all layers)")
    on_position: OnPosition = Field(
        DEFAULT_ON_POSITION, description="ON of the encoder kind, which reads several positions "
        "(the pooled ones): a neuron is activated (> 0) at a position, and a prompt activates "
        "it when it is activated at: any pooled position (any; the layer's value is the max "
        "over them, which also ranks the neurons the masking ablation zeroes), the first text "
        "position, [CLS] (first), any prompt position (prompt), or the legacy rule, the mean "
        "over the pooled positions > 0 (mean; for comparison only). The other kinds (mlm, "
        "causal, seq2seq) read one position, so it does not change them")
    ablation_fractions: list[float] = Field(
        default_factory=lambda: [0.01, 0.05, 0.1],
        description="neuron masking: fractions k of all FFN neurons masked (the prompt's top-k "
        "activated vs k random); empty: no ablation")
    ablation_split: Literal["validation", "test"] = Field(
        "validation", description="split the ablation scores the own task on")
    ablation_max_examples: int | None = Field(
        200, ge=1, description="at most this many examples of that split (null: all)")
    probe_examples: int = Field(
        64, ge=1, description="recommender: train examples of the new task each source prompt "
        "is scored on")

    @field_validator("ablation_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0 < f < 1]
        if bad:
            raise ValueError(f"ablation_fractions must lie in (0, 1), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"ablation_fractions repeat: {v}")
        return sorted(v)


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
    stages: list[Annotated[str, AfterValidator(_known_stage)]] = Field(
        default_factory=lambda: ["cross_task"], min_length=1,
        description="what the flow computes after training the prompts: cross_task (the "
        "zero-shot matrix per model), cross_model (projectors between models), tpt "
        "(transferable prompt tuning), indicators (ES/ON between prompts, their correlation "
        "with the matrix, neuron masking, the source recommender)")
    cross_model: CrossModelConfig | None = Field(None, description="options of cross_model")
    tpt: TptConfig | None = Field(None, description="options of tpt")
    indicators: IndicatorsConfig | None = Field(None, description="options of indicators")
    plugin_options: dict[str, Any] = Field(
        default_factory=dict, exclude=True,
        description="options sections of registered plug-in stages (their top-level keys), "
        "validated by each stage's options model")
    _source: str = PrivateAttr("study")  # the file it came from, for error messages

    @model_validator(mode="before")
    @classmethod
    def _plugin_sections(cls, data: Any) -> Any:
        """A top-level key naming a registered plug-in stage is that stage's options."""
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields)
        plugins = {k: data[k] for k in data if k not in own and k in STAGE_SPECS}
        if not plugins:
            return data
        return {**{k: v for k, v in data.items() if k not in plugins},
                "plugin_options": {**data.get("plugin_options", {}), **plugins}}

    def stage_options(self, stage: str) -> Any:
        """The options section of ``stage`` (its typed model), or None when it has none."""
        if stage in type(self).model_fields and stage not in ("stages", "plugin_options"):
            return getattr(self, stage)
        return self.plugin_options.get(stage)

    @property
    def source(self) -> str:
        """The study file (or the ``source`` given to :func:`parse_study`)."""
        return self._source

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
        self._check_stages(set(names))
        return self

    def _check_stages(self, models: set[str]) -> None:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages repeat: {self.stages}")
        for name, given in list(self.plugin_options.items()):
            spec = STAGE_SPECS[name]
            if spec.options is None:
                raise ValueError(f"stage {name!r} takes no options section")
            if not isinstance(given, spec.options):
                self.plugin_options[name] = spec.options.model_validate(given or {})
        for stage in self.stages:
            spec = STAGE_SPECS[stage]
            if spec.options is not None and self.stage_options(stage) is None:
                if spec.needs_section:
                    raise ValueError(f"stage {stage!r} needs its options section `{stage}:`")
                default = spec.options()  # every option has a default
                if stage in type(self).model_fields:
                    setattr(self, stage, default)
                else:
                    self.plugin_options[stage] = default
            for need in spec.requires:
                if need not in self.stages:
                    raise ValueError(f"stage {stage!r} needs stage {need!r}: add it to stages")
            if spec.check is not None:
                spec.check(self)

    def _check_builtin_stages(self, models: set[str]) -> None:
        """Cross-checks of the built-in stages' options (their StageSpec.check)."""
        if "cross_model" in self.stages:
            if len(models) < 2:
                raise ValueError("stage 'cross_model' needs at least two models")
            for pair in self.cross_model.pairs or []:
                for m in (pair.source, pair.target):
                    if m not in models:
                        raise ValueError(f"cross_model.pairs: unknown model {m!r}; models: "
                                         f"{sorted(models)}")
                if pair.source == pair.target:
                    raise ValueError(f"cross_model.pairs: {pair.source!r} -> itself")
        if "tpt" in self.stages:
            tpt = self.tpt
            for m in [*(tpt.models or []), *(s.model for s in tpt.sources or [] if s.model)]:
                if m not in models:
                    raise ValueError(f"tpt: unknown model {m!r}; models: {sorted(models)}")
            budget = tpt.train_config(self.training)
            if tpt.score_at_step is not None and tpt.score_at_step > budget.steps:
                raise ValueError(f"tpt.score_at_step {tpt.score_at_step} is beyond the "
                                 f"{budget.steps} training steps of a TPT run (tpt.steps or "
                                 "training.steps); lower it or train longer")
            crossing = {s.model for s in tpt.sources or [] if s.model}
            if crossing and "cross_model" not in self.stages:
                raise ValueError("tpt sources of another model are projected: add stage "
                                 "'cross_model'")
            if crossing and tpt.projector_objective not in self.cross_model.objectives:
                raise ValueError(f"tpt.projector_objective {tpt.projector_objective!r} is not "
                                 f"among cross_model.objectives {self.cross_model.objectives}")

        if "indicators" in self.stages:
            for m in self.indicators.models or []:
                if m not in models:
                    raise ValueError(f"indicators: unknown model {m!r}; models: "
                                     f"{sorted(models)}")
            if "cross_task" not in self.stages:
                raise ValueError("indicators are correlated with the cross-task matrix: add "
                                 "stage 'cross_task'")


    def model_pairs(self) -> list[tuple[str, str]]:
        """The (source, target) model pairs of the cross_model stage."""
        if self.cross_model is None:
            return []
        if self.cross_model.pairs is not None:
            return [(p.source, p.target) for p in self.cross_model.pairs]
        names = [m.name for m in self.models]
        return [(a, b) for a in names for b in names if a != b]


def _builtin_check(study: StudyConfig) -> None:
    study._check_builtin_stages({m.name for m in study.models})


for _spec in (StageSpec("cross_task"),
              StageSpec("cross_model", CrossModelConfig, needs_section=True,
                        check=_builtin_check),
              StageSpec("tpt", TptConfig, needs_section=True, check=_builtin_check),
              StageSpec("indicators", IndicatorsConfig, check=_builtin_check)):
    register_stage_spec(_spec)


class StudyFileError(InputError):
    """The study file is missing, not YAML, or fails validation; the message says where."""


def _format_errors(err: ValidationError, source: str, what: str = "the study file") -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in {what}:"]
    for e in err.errors():
        lines.append(f"  - {format_error_line(e)}")
    return "\n".join(lines)


def format_error_line(e: Any) -> str:
    """One pydantic error as ``field.path: problem``, with the offending value when it is a
    short scalar (``training.steps: Input should be a valid integer (got True)``)."""
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    value = e.get("input")
    if (e["type"].endswith("_type") and isinstance(value, JSON_SCALARS)
            and len(repr(value)) <= 80):
        msg += f" (got {value!r})"
    return f"{loc}: {msg}"


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
    study._source = source
    if base_dir is not None:
        for t in study.tasks:
            if t.path and not Path(t.path).is_absolute():
                t.path = str((base_dir / t.path).resolve())
            if t.hf is not None and t.hf.data_files is not None:
                t.hf.data_files = _resolve_files(t.hf.data_files, base_dir)
        for m in study.models:  # "./x" or "../x": a model folder next to the study file
            if m.model_id.startswith(("./", "../")):
                m.model_id = str((base_dir / m.model_id).resolve())
        if study.training.init_prompt is not None:
            study.training.init_prompt = _resolve_files(study.training.init_prompt, base_dir)
    return study


class _AliasFound(Exception):
    def __init__(self, mark: yaml.Mark):
        super().__init__(f"line {mark.line + 1}")
        self.line = mark.line + 1


class _StudyYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors and aliases. A study file is plain settings, and
    aliases are how a few lines expand to gigabytes (the "billion laughs")."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasFound(event.start_mark)
        return super().compose_node(parent, index)


def _read_yaml(p: Path) -> Any:
    size = p.stat().st_size
    if size > MAX_STUDY_BYTES:
        raise StudyFileError(
            f"{p}: {size} bytes; a study file may be at most {MAX_STUDY_BYTES} bytes (1 MiB)"
        )
    return _parse_yaml(p.read_bytes(), str(p))


def _parse_yaml(data: bytes, where: str) -> Any:
    if len(data) > MAX_STUDY_BYTES:
        raise StudyFileError(f"{where}: {len(data)} bytes; a study file may be at most "
                             f"{MAX_STUDY_BYTES} bytes (1 MiB)")
    try:
        return yaml.load(data.decode("utf-8"), Loader=_StudyYamlLoader)  # noqa: S506
    except _AliasFound as e:
        raise StudyFileError(
            f"{where}: line {e.line}: YAML aliases are not allowed in a study file "
            "(no '&anchor' or '*alias': write each value out)"
        ) from None
    except UnicodeDecodeError as e:
        raise StudyFileError(f"{where}: not UTF-8 text ({e})") from None
    except RecursionError:
        raise StudyFileError(f"{where}: nested too deeply to be a study file") from None
    except yaml.YAMLError as e:
        raise StudyFileError(f"{where}: not valid YAML ({e})") from None


def parse_study_bytes(data: bytes, source: str, base_dir: Path | None = None) -> StudyConfig:
    """A study file's content read from anywhere (a URI): same checks as :func:`load_study`;
    relative task paths resolve from ``base_dir`` (default: the working directory)."""
    return parse_study(_parse_yaml(data, source), source, base_dir or Path.cwd())


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file (relative task paths resolve from its folder).

    Plain YAML only: anchors and aliases are refused, and so is a file over 1 MiB.
    """
    p = Path(path)
    if not p.is_file():
        raise StudyFileError(f"study file {p} does not exist")
    return parse_study(_read_yaml(p), str(p), p.resolve().parent)
