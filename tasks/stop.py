"""A stop request for this process: set when SIGTERM (or Ctrl-C) stops a run
(:func:`flows.runtime.sigterm_interrupts`), so that waits in worker threads end at once
instead of sleeping on: a signal interrupts only the main thread, and a run's thread pool is
joined before the process can exit. Whatever waits for something outside (a unit claimed by
another run: :mod:`tasks.claims`) waits on :func:`wait` and gives up when it returns True."""

from __future__ import annotations

import threading

_STOP = threading.Event()


def request_stop() -> None:
    """Ask every wait of this process to end (called from the signal handler)."""
    _STOP.set()


def clear_stop() -> None:
    """Forget a stop request (once the stopped run is over: a later run waits normally)."""
    _STOP.clear()


def stop_requested() -> bool:
    return _STOP.is_set()


def wait(seconds: float) -> bool:
    """Sleep up to ``seconds``; True at once when a stop is (or gets) requested."""
    return _STOP.wait(max(seconds, 0.0))
