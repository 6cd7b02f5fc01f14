"""What the ``prompt-transfer`` commands share: the two consoles, the options every command
takes, errors as one line with an exit code, progress bars, table cells.

Errors are one line on stderr, never a traceback (``--debug`` shows it): exit 2 for bad input
(InputError: study file, task data, prompt files; StorageError: a storage root that is unusable
or holds no tables), 1 for anything else, 128 + N for a run stopped by signal N.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.text import Text

from prompt_core.errors import InputError
from tasks.storage import Storage, StorageError, StorageTimeoutError, open_storage

if TYPE_CHECKING:
    import pandas as pd

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
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Prefect's logs (`run`).")]
_global = {"debug": False, "verbose": False}  # `prompt-transfer --debug/--verbose <command>`


def set_global_options(debug: bool, verbose: bool = False) -> None:
    """``prompt-transfer --debug <command>``: every command shows tracebacks;
    ``prompt-transfer --verbose run ...``: as ``run --verbose``."""
    _global["debug"] = debug
    _global["verbose"] = verbose


def debugging(debug: bool = False) -> bool:
    """Whether a command shows tracebacks: its own ``--debug``, or the global one."""
    return debug or _global["debug"]


def verbosity(verbose: bool = False) -> bool:
    """Whether ``run`` shows Prefect's logs: its own ``--verbose``, or the global one."""
    return verbose or _global["verbose"]


# Output nobody asked for, before the progress bars: Prefect's first-run SDK telemetry notice
# (printed when Prefect is imported in a terminal, unless DO_NOT_TRACK is set: Prefect's server
# analytics setting, which the project turns off, does not cover it), and the warnings that
# setuptools' distutils shim (``_distutils_hack``, installed by a .pth file) or pkg_resources
# issue when a library imports distutils or pkg_resources.
_FOREIGN_WARNINGS = r".*(setuptools|distutils|pkg_resources)"  # matched case-insensitively
_CHILD_WARNINGS = "ignore::UserWarning:_distutils_hack"


def quiet_startup() -> None:
    """Before Prefect is imported: no telemetry notice nor events (``DO_NOT_TRACK=1`` unless
    set), and no setuptools/distutils/pkg_resources warnings, in this process and (through
    ``PYTHONWARNINGS``) in those it starts: the ephemeral Prefect server, process pools."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    warnings.filterwarnings("ignore", message=_FOREIGN_WARNINGS)
    current = os.environ.get("PYTHONWARNINGS", "")
    if _CHILD_WARNINGS not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, _CHILD_WARNINGS]))


def exit_fast(code: int | str | None) -> None:
    """End the process now: wait for non-daemon threads, flush the log handlers (Prefect's
    sends what is queued to the API, which is still up), run the ``atexit`` handlers (they stop
    the ephemeral API), flush the streams, then ``os._exit``. Skips the interpreter's teardown
    of torch, transformers and Prefect (1.5-2 s on 2 cores), which frees nothing a finished
    process needs. A string code is printed to stderr and exits 1, as ``SystemExit`` does."""
    import atexit
    import logging
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    logging.shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


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
        if isinstance(e, QueryRefused):
            fail(str(e), 2)
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
    """A table cell: a float as Python's shortest round-trip repr (``round(x, 3)`` shows
    ``0.45``, as DuckDB prints it), SQL NULL (None, or NaN after pandas) as empty."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):  # also numpy.float64
        return repr(float(v))
    return escape(str(v))


def print_run_summary(result) -> None:
    """What ``run`` prints at the end (a :class:`flows.stage_api.StudyResult`): the
    cross-task figures per model, the counts, then every path in full on its own line (a
    table cell would cut a long URI with "…": two heatmaps would look the same)."""
    from rich.table import Table

    head = f"study {result.study} ({result.seconds:.0f}s)"
    if result.summaries:  # the cross-task stage ran
        t = Table(title=head)
        for col in ("model", "own>none", "same-type rel", "diff-type rel", "random rel"):
            t.add_column(col, overflow="fold")
        for model, s in result.summaries.items():
            t.add_row(escape(model), f"{s['own_beats_none']}/{s['n_tasks']}",
                      f"{s['same_type_rel']:.3f}", f"{s['diff_type_rel']:.3f}",
                      f"{s['random_rel']:.3f}")
        out.print(t)
    else:
        out.print(head, markup=False, highlight=False)

    def line(text: str) -> None:
        out.print(text, markup=False, highlight=False, soft_wrap=True)

    line(f"prompts trained {result.n_prompts_trained}, reused {result.n_prompts_cached}; "
         f"cells evaluated {result.n_cells_evaluated}, reused {result.n_cells_cached}")
    for stage, c in result.stage_counts.items():  # the later stages: computed now vs stored
        line(f"{stage}: {c['computed']} computed, {c['stored']} stored before")
    line(f"run id: {result.run_id}")
    for model, uri in result.heatmaps.items():
        line(f"heatmap {model}: {uri}")
    line(f"tables: {result.storage}/tables/")
    line(f"try: prompt-transfer query \"select * from cross_task limit 5\" --storage "
         f"{result.storage}")


def print_status(st, claims: list, run_ids: list[str], max_missing: int) -> None:
    """What ``status`` prints (a :class:`flows.status.StudyStatus`), and a line when units
    are claimed now (``claims``: a run is in flight under the root)."""
    from rich.table import Table

    def line(text: str) -> None:
        out.print(text, markup=False, highlight=False, soft_wrap=True)

    line(f"study {st.study} under {st.storage}")
    t = Table()
    for col in ("stage", "model", "done", "total"):
        t.add_column(col, justify="right" if col in ("done", "total") else "left")
    for s in st.stages:
        t.add_row(s.stage, escape(s.model or "-"), str(s.done), str(s.total),
                  style=None if s.done == s.total else "yellow")
    out.print(t)
    missing = st.missing()
    if missing:
        line(f"missing units ({len(missing)}):")
        for label in missing[:max_missing]:
            line(f"  {label}")
        if len(missing) > max_missing:
            line(f"  ... {len(missing) - max_missing} more (--json lists all)")
    else:
        out.print("[green]complete[/green]: every unit is stored")
    if claims:
        line(f"a run is in flight under {st.storage}: {len(claims)} unit(s) claimed now "
             f"(run {', '.join(run_ids)})")
    run = st.latest_run
    if run is None:
        line("no finished run of this study recorded")
    else:
        line(f"latest run {run.run_id}: {run.status}, finished "
             f"{run.finished_at.isoformat(timespec='seconds')}")
        if run.failures:
            line(f"failed units ({len(run.failures)}):")
        for f in run.failures:
            line(f"  {f.unit}: {f.error}")
    for p in st.problems:
        warning_line(p)


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


# -- query: read-only SQL over the tables of one root -------------------------------------------

# statements that only read (duckdb.StatementType names): SELECT also covers WITH, VALUES,
# FROM-first, DESCRIBE, SHOW and SUMMARIZE; MULTI is PIVOT
READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL", "MULTI"})
_WHY = {"COPY": "it writes or reads files", "EXPORT": "it writes files",
        "IMPORT": "it reads files", "ATTACH": "it opens a database file",
        "DETACH": "it changes the attached databases",
        "LOAD": "it loads DuckDB extensions from files",
        "INSTALL": "it installs DuckDB extensions from the network",
        "FORCE": "it installs DuckDB extensions from the network",
        "UPDATE": "it changes rows",
        "SET": "it changes DuckDB's settings", "RESET": "it changes DuckDB's settings",
        "USE": "it changes DuckDB's settings"}
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
READ_ONLY_HINT = ("query is read-only: it runs SELECT (WITH, DESCRIBE, SHOW, SUMMARIZE), "
                  "EXPLAIN, PRAGMA or CALL over the tables and views under")


class QueryRefused(InputError):
    """SQL that ``prompt-transfer query`` does not run: it would write, or reach outside the
    tables and views of the storage root. Exit 2, the message as is."""


def statement_kind(text: str, fallback: str) -> str:
    """The first keyword of a statement (``COPY``, ``INSTALL``...), else ``fallback``."""
    m = re.match(r"[A-Za-z]+", text[_LEADING.match(text).end():])
    return m.group(0).upper() if m else fallback


def check_read_only_sql(sql: str, root: str) -> None:
    """InputError for empty SQL; QueryRefused for a statement that is not a read. SQL that does
    not parse is left to DuckDB (exit 1 with its error)."""
    import duckdb

    if not sql.strip():
        raise InputError("the SQL is empty; give a statement, e.g. prompt-transfer query "
                         "\"select * from latest_runs\"")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.ParserException:
        return  # reported by execute, as any query error
    except ValueError:  # a statement type this duckdb module cannot name: the lock decides
        return
    if not statements:
        raise InputError("the SQL holds no statement (only comments or semicolons)")
    for st in statements:
        if st.type.name not in READ_STATEMENTS:
            kind = statement_kind(st.query, st.type.name)
            why = (_WHY.get(kind) or _WHY.get(st.type.name)
                   or "it would change tables, views or the connection's state")
            raise QueryRefused(f"{kind} refused ({why}); {READ_ONLY_HINT} {root}")


def refusal(exc: Exception, sql: str, root: str) -> QueryRefused | None:
    """A DuckDB error of the locked connection (a file, URL or setting reached) as a
    QueryRefused naming the statement kind; None for any other error."""
    import duckdb

    locked = isinstance(exc, duckdb.InvalidInputException) and "locked" in str(exc)
    if not (isinstance(exc, duckdb.PermissionException) or locked):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = re.sub(r"^(Permission|Invalid Input) Error: ", "", first)
    return QueryRefused(f"{statement_kind(sql, 'the statement')} refused ({first}); "
                        f"{READ_ONLY_HINT} {root}")


def one_line(exc: Exception) -> Exception:
    """A DuckDB error with its message on one line (the error's lines joined, without the
    ``LINE 1: ...`` excerpt and its carets), same type; other errors as they are."""
    import duckdb

    if not isinstance(exc, duckdb.Error):
        return exc
    lines = [ln.strip() for ln in str(exc).splitlines()]
    kept = [ln for ln in lines if ln and not re.match(r"LINE \d+:", ln) and set(ln) != {"^"}]
    try:
        return type(exc)(" ".join(kept))
    except Exception:  # noqa: BLE001 - a type that cannot be built from a message
        return exc


def run_query(sql: str, storage: str | None) -> pd.DataFrame:
    """``prompt-transfer query``: SQL over the tables and views of one root, read-only
    (:func:`tasks.tables.duckdb_connect` with ``read_only``)."""
    import pandas as pd

    from tasks.tables import duckdb_connect

    if not sql.strip():
        check_read_only_sql(sql, "")
    st = open_tables_root(storage)
    check_read_only_sql(sql, st.root)
    con = duckdb_connect(st, read_only=True)
    try:
        res = con.execute(sql)
    except Exception as exc:
        refused = refusal(exc, sql, st.root)
        if refused is not None:
            raise refused from exc
        raise one_line(exc) from exc
    if res.description is None:
        return pd.DataFrame()
    return res.df()


# -- files a command writes (--out) and reads (a prompt file URI) ------------------------------


def check_out_path(path: Path, *, folder: bool) -> None:
    """InputError naming ``--out PATH`` when it cannot be written: an existing path of the
    wrong kind, or a nearest existing ancestor that is not a writable folder. Checked before
    any work, so a refused command writes nothing."""
    what = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise InputError(f"--out {path}: exists and is not a {what}")
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"--out {path}: cannot write there, {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--out {path}: cannot write there, {ancestor} is not writable "
                         "(permission denied)")


@contextlib.contextmanager
def writing_out(path: Path) -> Iterator[None]:
    """An OSError while writing ``--out PATH`` (full disk, a read-only file system) as one
    InputError line naming the path and the reason, not a raw errno."""
    try:
        yield
    except OSError as e:
        if e.filename is not None and not _within(Path(os.fsdecode(e.filename)), path.parent):
            raise  # not the output (a source file, say): reported as it is
        reason = e.strerror or type(e).__name__
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise InputError(f"--out {path}: cannot write there: {reason}{where}") from e


def write_out_file(path: Path, write) -> None:
    """``write()`` the file ``--out PATH``, creating its missing folders first; on an error
    the folders made here are removed again (nothing is left behind) and an OSError is one
    InputError line (:func:`writing_out`)."""
    made = [d for d in reversed(path.parents) if not d.exists()]  # outermost first
    with writing_out(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write()
        except BaseException:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise


def _within(p: Path, folder: Path) -> bool:
    """Whether ``p`` is ``folder`` or lies under it (both made absolute)."""
    p, folder = p.absolute(), folder.absolute()
    return p == folder or folder in p.parents


def read_uri_bytes(uri: str) -> bytes:
    """The bytes of a local file or of an object at an fsspec URI. Object stores are reached
    as the storage root is (:func:`tasks.storage.open_storage`: the S3 endpoint from
    PROMPT_TRANSFER_S3_ENDPOINT / AWS_ENDPOINT_URL*, the credentials block, timeouts and the
    deadline), so a prompt file on S3 is read where the study's tables are."""
    from fsspec.utils import get_protocol

    if get_protocol(uri) in ("file", "local"):
        path = Path(uri.removeprefix("file://")).expanduser()
        try:
            return path.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read {uri}: {e.strerror or type(e).__name__}") from e
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or parent.endswith(":/") or parent.endswith(":"):
        raise InputError(f"{uri}: not a file URI (expected scheme://bucket/path/file)")
    return open_storage(parent).read_bytes(name)


# -- status: runs in flight --------------------------------------------------------------------


def live_claims(storage: Storage) -> list:
    """The unexpired unit claims under a root (:mod:`tasks.claims`): a run is computing
    those units now. Read only; an unreadable claim is skipped."""
    from tasks.claims import CLAIMS_PREFIX, Lease, claim_ttl

    live = []
    try:
        keys = storage.list(CLAIMS_PREFIX)
    except StorageError:
        return []
    for key in keys:
        try:
            lease = Lease.from_bytes(storage.read_bytes(key))
        except (StorageError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue
        if lease.live(claim_ttl()):
            live.append(lease)
    return live
