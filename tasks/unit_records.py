"""The records passed between the transfer-matrix stages (plain, JSON-able): which run a unit
belongs to (:class:`RunContext`), an NLP task's identity (:class:`NlpTaskInfo`), the units'
results and the planned matrix cells. Units receive these, never models or tensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tasks.storage import Storage, open_storage
from tasks.tables import PromptRow


@dataclass(frozen=True)
class RunContext:
    """Where a run writes and which run it is: what every unit needs besides its inputs."""

    storage_root: str
    study: str
    run_id: str
    device: str = "cpu"  # as the study says (auto, cuda...): resolved where the unit runs
    bf16: bool = False
    trainings_per_gpu: int = 1
    torch_threads: int | None = None  # per unit, the same on every runner (identical scores)

    def storage(self) -> Storage:
        return open_storage(self.storage_root)

    def use_torch_threads(self) -> None:
        """Compute with the run's torch thread count wherever the unit runs (a thread, a
        process pool worker, a Dask worker): float reductions, hence scores, depend on it."""
        import torch

        if self.torch_threads and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)


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
    data_key: str | None = None  # the task's data in storage (set by the prepare unit)


@dataclass
class TrainOutcome:
    """A prompt unit's result: the ``prompts`` row (this study's) and how it was obtained."""

    row: PromptRow
    storage_key: str
    trained: bool  # False: found stored (by this study, or reused from another study's file)


@dataclass
class EvalOutcome:
    model: str
    target: str
    cell_keys: list[str]  # every cell this unit covers (evaluated now or stored before)
    n_cells_evaluated: int
    n_cells_cached: int
    part_uri: str | None
    quarantined: list[str] = dataclasses.field(default_factory=list)


@dataclass
class Cell:
    """One planned matrix cell: a source (prompt, random or none) on the unit's target."""

    key: str
    kind: str  # prompt | random | none
    seed: int
    source: PromptRow | None = None  # kind == prompt

    @property
    def source_id(self) -> tuple[str, int]:
        return (self.source.prompt_key if self.source else self.kind, self.seed)
