"""What a stage of the ``transfer-matrix`` flow is: one protocol, one registry.

The flow's core prepares the NLP tasks and trains the prompts every stage builds on
(:mod:`flows.core_units`); every stage, the cross-task matrix included, is a plug-in. A stage
is one module ``flows/stage_<name>.py`` (found and imported by :func:`load_stages`) that
registers a :class:`Stage` with :func:`register_stage`, plus one options section in the study
file (its :class:`prompt_core.config.StageSpec`, given to :func:`register_stage` too). A
stage:

* :meth:`Stage.unit_counts`: names the parts of its work the progress bars count and how many
  units each has (known once the tasks are prepared);
* :meth:`Stage.run`: plans its units from the study, the stored keys and what the run has so
  far (:class:`FlowState`: prompts, earlier stages' results) as :class:`flows.submit.Planned`
  units (stored ones carry their outcome, missing ones the call that submits them) and hands
  them to ``state.run_units(part, units)``, which creates task runs for the missing ones only;
  returns a :class:`StageRun`: what it computed vs found stored, the keys it covered per
  (model, table) (the run's ``run_keys``) and this run's rows for publishing;
* ``tables``: names the tables it writes;
* :meth:`Stage.publish`: writes its artifacts and returns its section of the run summary;
* :meth:`Stage.status`: gives its rows of ``prompt-transfer status`` from stored keys only.

The flow runs the study's stages in dependency order (``after``), then publishes each.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from prompt_core.config import STAGE_SPECS, StageSpec, StudyConfig, register_stage_spec

RunUnits = Callable[[str, list], list]  # (part, planned units) -> their outcomes, in order
PromptIndex = dict[tuple[str, str, int], Any]  # (model, task, seed) -> its PromptRow


def index_prompts(rows: list) -> PromptIndex:
    return {(r.model, r.task, r.seed): r for r in rows}


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
    # per part of each plug-in stage: units computed now vs found stored ("project", "tpt"...)
    stage_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # {unit, stage, model, error}
    summary_markdown: str = ""  # the run's summary artifact (a deployment's parent run shows it)


@dataclass
class StageRun:
    """What one stage did in one run: per part, units computed now vs found stored; the keys it
    covered per (model, table); and this run's rows, for :meth:`Stage.publish`."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    keys: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    rows: Any = None
    prompts: list = field(default_factory=list)  # TrainOutcomes of prompts the stage trained
    summaries: dict[str, dict] = field(default_factory=dict)  # model -> figures (publish)

    def count(self, part: str, computed: int, stored: int) -> None:
        c = self.counts.setdefault(part, {"computed": 0, "stored": 0})
        c["computed"] += computed
        c["stored"] += stored

    def add_keys(self, model: str, table: str, keys: list[str]) -> None:
        self.keys.setdefault((model, table), []).extend(keys)


@dataclass
class FlowState:
    """What a stage may read of the run so far. ``run_units(part, units)`` runs a part's
    :class:`flows.submit.Planned` units (task runs for the missing ones only; progress,
    failures) and returns their outcomes in order."""

    ctx: Any  # tasks.units.RunContext
    study: StudyConfig
    storage: Any  # tasks.storage.Storage
    infos: list  # tasks.units.NlpTaskInfo, study order
    prompts: list  # the study's PromptRows (every model, task, seed)
    run_units: RunUnits
    results: dict[str, StageRun] = field(default_factory=dict)  # earlier stages, by name

    @property
    def cells(self) -> dict[str, list[str]]:
        """The run's cross-task cell keys per model (empty without the cross_task stage)."""
        run = self.results.get("cross_task")
        if run is None:
            return {}
        return {m: ks for (m, t), ks in run.keys.items() if t == "cross_task"}


@dataclass
class StatusState:
    """What a stage's status may read: stored rows only (``prompts``: the stored prompts of the
    study's current configuration, by (model, task, seed)); ``shared``: what earlier stages'
    status found for later ones (e.g. the stored projectors); ``problems``: damaged parts."""

    study: StudyConfig
    storage: Any
    infos: list
    prompts: dict[tuple[str, str, int], Any]
    init_sha: str | None
    problems: list[str]
    shared: dict[str, Any] = field(default_factory=dict)
    # every (model, task, seed) of the study: its stored PromptRow, or the PlannedPrompt (key,
    # task, type, config key) the train part would store
    planned: dict[tuple[str, str, int], Any] = field(default_factory=dict)


class Stage(Protocol):
    """A stage of the flow (see the module docstring)."""

    name: ClassVar[str]
    after: ClassVar[tuple[str, ...]]  # stages that must run before it when both are in a study
    tables: ClassVar[tuple[str, ...]]

    def unit_counts(self, study: StudyConfig, infos: list) -> dict[str, int]: ...

    def run(self, state: FlowState) -> StageRun: ...

    def publish(self, state: FlowState, run: StageRun) -> tuple[list[str], dict[str, str]]:
        """Write the stage's artifacts from this run's rows; return its markdown lines for the
        run summary and {label: URI} of images it wrote."""
        ...

    def status(self, state: StatusState) -> list: ...  # flows.status.StageStatus rows


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage, spec: StageSpec) -> Stage:
    """Register a flow stage and its study-file side (options section, checks) under one
    name. A name registered again is replaced (a plug-in may override a built-in)."""
    if spec.name != stage.name:
        raise ValueError(f"stage {stage.name!r} registered with the spec of {spec.name!r}")
    register_stage_spec(spec)
    STAGES[stage.name] = stage
    return stage


def unregister_stage(name: str) -> None:
    """Forget a plug-in stage (tests)."""
    STAGES.pop(name, None)
    STAGE_SPECS.pop(name, None)


_loaded = False


def load_stages() -> dict[str, Stage]:
    """Import every ``flows/stage_<name>.py`` module once (each registers its stage)."""
    global _loaded
    if not _loaded:
        import flows

        for mod in pkgutil.iter_modules(flows.__path__):
            if mod.name.startswith("stage_") and mod.name != "stage_api":
                importlib.import_module(f"flows.{mod.name}")
        _loaded = True
    return STAGES


def ordered_stages(study: StudyConfig) -> list[Stage]:
    """The study's stages in dependency order (``after``; otherwise study order)."""
    load_stages()
    names = list(study.stages)
    missing = [s for s in names if s not in STAGES]
    if missing:
        raise ValueError(f"stage(s) {missing} have options but no flow module registered")
    done: list[str] = []
    pending = list(names)
    while pending:
        ready = [s for s in pending
                 if all(a in done or a not in names for a in STAGES[s].after)]
        if not ready:
            raise ValueError(f"stages {pending} depend on each other in a cycle")
        done.append(ready[0])
        pending.remove(ready[0])
    return [STAGES[s] for s in done]
