"""Pydantic models for a study file; every default lives here (the sections in
:mod:`prompt_core.config_sections` and :mod:`prompt_core.stage_options`, re-exported here).

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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from prompt_core.backbone_kinds import DEFAULT_ON_POSITION, OnPosition
from prompt_core.config_sections import (
    JSON_SCALARS,
    NAME_RE,
    EvalConfig,
    HFSourceConfig,
    ModelConfig,
    RunnerConfig,
    RunnerKind,
    StrictSection,
    TaskConfig,
    TrainConfig,
    backbone_option_defaults,
    backbone_options,
    check_name,
    name_problem,
    stable_hash,
)
from prompt_core.errors import InputError
from prompt_core.stage_options import (
    CrossModelConfig,
    IndicatorsConfig,
    ModelPair,
    ProjectorConfig,
    TptConfig,
    TptSource,
)

__all__ = [  # the study's models and helpers, wherever defined (importers use this module)
    "DEFAULT_ON_POSITION", "JSON_SCALARS", "MAX_STUDY_BYTES", "NAME_RE", "STAGE_SPECS",
    "CrossModelConfig", "EvalConfig", "HFSourceConfig", "IndicatorsConfig", "ModelConfig",
    "ModelPair", "OnPosition", "ProjectorConfig", "RunnerConfig", "RunnerKind", "StageSpec",
    "StrictSection", "StudyConfig", "StudyFileError", "TaskConfig", "TptConfig", "TptSource",
    "TrainConfig",
    "backbone_option_defaults", "backbone_options", "check_name", "format_error_line",
    "load_study", "name_problem", "parse_study", "parse_study_bytes", "register_stage_spec",
    "stable_hash", "with_overrides",
]

MAX_STUDY_BYTES = 1 << 20  # a study file is a page of settings; 1 MiB is far beyond any real one


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
    check_name(spec.name, "stage name")
    STAGE_SPECS[spec.name] = spec
    return spec


def _known_stage(name: str) -> str:
    if name not in STAGE_SPECS:
        raise ValueError(f"unknown stage {name!r}; known: {sorted(STAGE_SPECS)}")
    return name


class StudyConfig(StrictSection):
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
        return check_name(v, "study name")

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
        # each cross-check once (the built-in stages share one)
        for check in dict.fromkeys(STAGE_SPECS[s].check for s in self.stages):
            if check is not None:
                check(self)

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


def with_overrides(study: StudyConfig, storage: str | None = None,
                   task_runner: RunnerKind | None = None, workers: int | None = None,
                   dask_address: str | None = None, device: str | None = None,
                   train_deployment: str | None = None) -> StudyConfig:
    """The study with a run's overrides applied (the CLI's options; validated like the study
    file)."""
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
