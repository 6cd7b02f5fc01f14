"""How the flow runs planned units: stored ones are counted, only missing ones become task runs.

A stage plans its units (:class:`Planned`): each is either found stored at planning time (its
outcome built from the stored rows, no Prefect task run at all) or carries the call that submits
it. :func:`run_units` submits the missing ones on the flow's task runner with at most ``window``
in flight (a 1,000-task study never holds 40,000 pending futures), waits for them in
completion order and reports progress: one step for all the stored units of a part, one per
finished unit. Every submitted unit still checks its own key and claim before computing (the
plan is a read of the tables, not a lock), so concurrent runs and resumed runs keep their
guarantees.

:class:`RunProgress` is the run's one Prefect progress artifact plus the caller's observer
(the CLI's bars); the artifact is updated at most every :data:`ARTIFACT_EVERY_S` seconds (and
at each part's end), not once per unit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import tags
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from prompt_core.errors import InputError

ProgressObserver = Callable[[str, int, int, str | None], None]
"""Called in the flow's process as ``(part, done, total, finished unit label or None)``:
``None`` announces a part."""

ARTIFACT_EVERY_S = 2.0  # the progress artifact's update period (and at each part's end)
DEFAULT_WINDOW = 64  # task runs in flight at once, at least: 4x the runner's workers


class RunProgress:
    """Units done over all parts: one Prefect progress artifact (0-100) plus the observer."""

    def __init__(self, totals: dict[str, int], observer: ProgressObserver | None = None,
                 key: str = "transfer-matrix-progress"):
        self.observers = [observer] if observer is not None else []
        self.totals = dict(totals)
        self.done = dict.fromkeys(totals, 0)
        self.all = max(sum(totals.values()), 1)
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=key,
            description="units done / all units")
        self._pushed = 0.0  # when the artifact was last updated

    def set_total(self, part: str, total: int) -> None:
        """A part's unit count once it is known (after the tasks are prepared)."""
        self.totals[part] = total
        self.done.setdefault(part, 0)
        self.all = max(sum(self.totals.values()), 1)

    def stage(self, name: str) -> None:
        self.totals.setdefault(name, 0)
        self.done.setdefault(name, 0)
        for fn in self.observers:
            fn(name, self.done[name], self.totals[name], None)

    def units_done(self, part: str, n: int, label: str, force: bool = False) -> None:
        """``n`` more units of ``part`` done (``label``: the unit, or what the n were)."""
        self.done[part] += n
        now = time.monotonic()
        if self.artifact_id is not None and (force or now - self._pushed >= ARTIFACT_EVERY_S
                                             or self.done[part] >= self.totals[part]):
            self._pushed = now
            total = sum(self.done.values())
            update_progress_artifact(self.artifact_id, 100.0 * total / self.all,
                                     description=f"{total}/{self.all} units ({part}: "
                                                 f"{self.done[part]}/{self.totals[part]})")
        for fn in self.observers:
            fn(part, self.done[part], self.totals[part], label)

    def unit_done(self, part: str, label: str) -> None:
        self.units_done(part, 1, label)


class UnitFailed(RuntimeError):
    """Units failed for a reason other than bad input; the message names the first one."""


@dataclass
class Planned:
    """One unit of a part: ``stored`` is its outcome when the plan found it stored (then no
    task run is created); otherwise ``submit()`` creates its task run (called under ``tags``)
    and returns the future."""

    label: str
    model: str | None
    submit: Callable[[], Any] | None = None
    stored: Any = None
    tags: tuple[str, ...] = ()

    @property
    def is_stored(self) -> bool:
        return self.submit is None


@dataclass
class UnitLedger:
    """Every outcome of the run so far, per part (a failed run writes the keys of what
    finished), and the failures (the ``runs.failures`` column)."""

    outcomes: dict[str, list] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)


def run_units(part: str, units: list[Planned], progress: RunProgress, ledger: UnitLedger,
              window: int = DEFAULT_WINDOW, tagged: bool = False) -> list:
    """The outcomes of ``units`` in their order: stored ones as planned, the rest from task
    runs submitted with at most ``window`` in flight (under their ``tags`` when ``tagged``:
    ``runner.task_tags``, see :func:`unit_tags`). Every failure is recorded, the others are
    waited for, then the first failure is raised, naming its unit (bad input as is)."""
    results: list = [None] * len(units)
    done = ledger.outcomes.setdefault(part, [])
    stored = [i for i, u in enumerate(units) if u.is_stored]
    for i in stored:
        results[i] = units[i].stored
    done.extend(results[i] for i in stored)
    if stored:
        progress.units_done(part, len(stored), f"{len(stored)} found stored")
    todo = [i for i, u in enumerate(units) if not u.is_stored]
    errors: list[tuple[int, BaseException]] = []
    in_flight: dict[Any, int] = {}
    nxt = 0
    while nxt < len(todo) or in_flight:
        while nxt < len(todo) and len(in_flight) < window:
            i = todo[nxt]
            nxt += 1
            with tags(*units[i].tags) if tagged else contextlib.nullcontext():
                in_flight[units[i].submit()] = i
        for f in as_completed(list(in_flight)):  # the first to finish; then refill the window
            i = in_flight.pop(f)
            try:
                results[i] = f.result()
                done.append(results[i])
            except Exception as exc:  # noqa: BLE001 - recorded, then the first is raised
                errors.append((i, exc))
                ledger.failures.append({"unit": units[i].label, "stage": part,
                                        "model": units[i].model,
                                        "error": f"{type(exc).__name__}: {exc}"})
            progress.unit_done(part, units[i].label)
            break
    if errors:
        i, exc = min(errors, key=lambda e: e[0])
        if isinstance(exc, InputError):
            raise exc
        more = f" (and {len(errors) - 1} more unit(s))" if len(errors) > 1 else ""
        raise UnitFailed(f"{units[i].label}: {type(exc).__name__}: {exc}{more}") from exc
    return results


def unit_tags(stage: str, model: str | None, **more: str) -> tuple[str, ...]:
    """The tags a unit's task run gets with ``runner.task_tags``: the stage and the model, never
    the NLP task (it is in the task run's name). Off by default: Prefect acquires tag
    concurrency slots through the API whenever a task run with tags starts, and caches a "no
    limit" answer for a tag set for 5 s only, so every unit longer than that paid a round trip:
    1.8 s per task run on 2 CPU cores (a 12-unit tiny study: 11.7 s of 43 s)."""
    return (f"stage:{stage}", *([f"model:{model}"] if model else []),
            *(f"{k}:{v}" for k, v in more.items()))
