"""Error types shared by the library, the Prefect tasks and the CLI.

:class:`InputError` marks *bad input*: a study file, task data, prompt file or model path that
is wrong and will stay wrong on a retry. The CLI prints its message (no traceback) and exits 2;
Prefect tasks never retry it. Every other exception is a failure of the run (exit 1).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input found before (or instead of) compute; the message names the file/field/row."""


class MixedCellsError(ValueError):
    """The rows hold some cell more than once (several configurations mixed): averaging them
    would publish figures no run produced (:mod:`prompt_core.analysis`)."""
