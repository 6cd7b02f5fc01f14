"""What the ``prompt-transfer`` commands share: the two consoles, the options every command
takes, errors as one line with an exit code, progress bars, table cells.

Errors are one line on stderr, never a traceback (``--debug`` shows it): exit 2 for bad input
(InputError: study file, task data, prompt files; StorageError: a storage root that is unusable
or holds no tables), 1 for anything else, 128 + N for a run stopped by signal N.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import traceback
from collections.abc import Iterator
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.text import Text

from prompt_core.errors import InputError
from tasks.storage import Storage, StorageError, StorageTimeoutError, open_storage

console = Console(stderr=True, log_path=False)  # progress lines: time + text, no source path
out = Console()

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", "-s", help="Storage root URI (local path or s3://bucket/prefix). "
                 "Default: $PROMPT_TRANSFER_STORAGE, else ./results."),
]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", envvar="PROMPT_TRANSFER_DEBUG",
                 help="On an error, show the traceback and Prefect's own error logs."),
]
_global = {"debug": False}  # set by `prompt-transfer --debug <command>`


def set_global_debug(on: bool) -> None:
    """``prompt-transfer --debug <command>``: every command shows tracebacks."""
    _global["debug"] = on


def debugging(debug: bool = False) -> bool:
    """Whether a command shows tracebacks: its own ``--debug``, or the global one."""
    return debug or _global["debug"]


def error_line(msg: str) -> None:
    """Print ``error: msg`` on stderr. The line is never wrapped nor cropped by rich (a
    terminal may still wrap it visually), and ``msg`` is text, not rich markup."""
    console.print(Text.assemble(("error:", "bold red"), " ", msg), soft_wrap=True)


def warning_line(msg: str) -> None:
    """Print ``warning: msg`` on stderr, as :func:`error_line` does."""
    console.print(Text.assemble(("warning:", "bold yellow"), " ", msg), soft_wrap=True)


def fail(msg: str, code: int = 1) -> None:
    """Print the error line and exit with ``code``."""
    error_line(msg)
    raise typer.Exit(code)


@contextlib.contextmanager
def reported(action: str, debug: bool) -> Iterator[None]:
    """Turn any exception into one line and an exit code: bad input (InputError) and unusable
    storage (StorageError) exit 2, anything else is ``<action> failed`` with exit 1."""
    try:
        yield
    except (typer.Exit, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
        raise
    except BaseException as e:
        if isinstance(e, SystemExit | GeneratorExit):
            raise
        if debugging(debug):
            sys.stderr.write(traceback.format_exc())
        if isinstance(e, InputError):
            fail(f"invalid input: {e}", 2)
        if isinstance(e, StorageError):
            fail(str(e), 2)
        if isinstance(e, KeyboardInterrupt):
            signum = getattr(e, "signum", signal.SIGINT)
            fail(f"{action} stopped by {signal.Signals(signum).name}", 128 + signum)
        if isinstance(e, Exception):
            fail(f"{action} failed: {type(e).__name__}: {e}", 1)
        # Prefect's TerminationSignal (SIGTERM) and other BaseExceptions
        fail(f"{action} stopped: {type(e).__name__}", 1)


class StageBars:
    """Progress bars, one per stage, fed by the flow from its futures (so they move whether
    the units run in threads, processes or on Dask). Off a terminal (CI, nohup) bars do not
    redraw, so each finished unit is also logged as a line."""

    def __init__(self, progress: Progress):
        self.p = progress
        self.bars: dict[str, TaskID] = {}
        self.lines = not progress.console.is_terminal

    def __call__(self, stage: str, done: int, total: int, label: str | None) -> None:
        if stage not in self.bars:
            self.bars[stage] = self.p.add_task(f"[bold]{stage}", total=total)
        self.p.update(self.bars[stage], completed=done, total=total)
        if label is not None and self.lines:
            self.p.console.log(f"{stage}: {done}/{total} done ({escape(label)})")


def cell_text(v) -> str:
    """A table cell: floats to 4 places, SQL NULL (None, or NaN after pandas) as empty."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def open_tables_root(uri: str | None) -> Storage:
    """The storage root of ``query``/``tables``/``status``/``recommend``; StorageError (exit 2)
    when it holds no tables, rather than an empty answer from a mistyped path or bucket."""
    st = open_storage(uri)
    try:  # a silent endpoint fails within the probe deadline, naming the endpoint
        st.check_readable()  # local: no folder; s3: no bucket, or nothing under the prefix
    except StorageTimeoutError:
        raise
    except StorageError as exc:
        raise StorageError(f"{exc} (no tables there)") from exc
    if not st.exists("tables"):
        raise StorageError(f"storage root {st.root} has no tables/ (no study has run there)")
    return st
