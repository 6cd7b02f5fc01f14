"""Progress you can see: a process-wide reporter the Prefect tasks and the flow call into.

The flow reports stage totals and completed units; tasks report steps inside a unit (training
steps, prompts scored). The default reporter does nothing; the CLI installs one that drives
rich progress bars, and the flow mirrors stage progress into a Prefect progress artifact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


class Reporter(Protocol):
    def stage(self, name: str, total: int) -> None: ...
    def advance(self, name: str, n: int = 1) -> None: ...
    def steps(self, label: str, done: int, total: int) -> None: ...
    def finish(self, label: str) -> None: ...


class NullReporter:
    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, name: str, n: int = 1) -> None:
        pass

    def steps(self, label: str, done: int, total: int) -> None:
        pass

    def finish(self, label: str) -> None:
        pass


_reporter: Reporter = NullReporter()
_listeners: list[Callable[[str], None]] = []
_lock = threading.Lock()


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter or NullReporter()


def add_listener(fn: Callable[[str], None]) -> None:
    """Called with the stage name after every completed unit (the flow's artifact updater)."""
    with _lock:
        _listeners.append(fn)


def clear_listeners() -> None:
    with _lock:
        _listeners.clear()


def start_stage(name: str, total: int) -> None:
    _reporter.stage(name, total)


def report(stage: str, advance: int = 1) -> None:
    _reporter.advance(stage, advance)
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        fn(stage)


def report_steps(label: str, done: int, total: int) -> None:
    _reporter.steps(label, done, total)


def step_callback(label: str) -> Callable[[int, int], None]:
    return lambda done, total: _reporter.steps(label, done, total)


def finish_steps(label: str) -> None:
    _reporter.finish(label)
