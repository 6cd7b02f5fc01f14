"""``prompt-transfer``: run a study, query its tables, check a study file or a storage root.

Storage for ``query``, ``tables`` and ``verify``: ``--storage URI`` if given, else
$PROMPT_TRANSFER_STORAGE, else ``./results``. S3 endpoints and credentials come from the
environment (PROMPT_TRANSFER_S3_ENDPOINT or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY).

Errors are one line on stderr, never a traceback (``--debug`` shows it): exit 2 for bad input
(study file, task data, prompt files, a storage root that is unusable or holds no tables), 1 for
a failed run or query.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from prompt_core.errors import InputError
from tasks.storage import Storage, StorageError, StorageTimeoutError, open_storage

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the ephemeral API starts in a subprocess; on a busy 2-core machine 20 s (the default) is short
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    help="Measure soft-prompt transfer between NLP tasks (Su et al., NAACL 2022) with Prefect "
    "flows that write Parquet tables.",
    no_args_is_help=True,
    add_completion=False,
)
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


@app.callback()
def _main(debug: DebugOpt = False) -> None:
    _global["debug"] = debug


# -- errors: one clear line, the traceback only with --debug ----------------------------------


def _error_line(msg: str) -> None:
    """Print ``error: msg`` on stderr. The line is never wrapped nor cropped by rich (a
    terminal may still wrap it visually), and ``msg`` is text, not rich markup."""
    console.print(Text.assemble(("error:", "bold red"), " ", msg), soft_wrap=True)


def _fail(msg: str, code: int = 1) -> None:
    _error_line(msg)
    raise typer.Exit(code)


@contextlib.contextmanager
def _reported(action: str, debug: bool) -> Iterator[None]:
    """Turn any exception into one line and an exit code: bad input (InputError) and unusable
    storage (StorageError) exit 2, anything else is ``<action> failed`` with exit 1."""
    try:
        yield
    except (typer.Exit, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
        raise
    except BaseException as e:
        if isinstance(e, SystemExit | GeneratorExit):
            raise
        if debug or _global["debug"]:
            sys.stderr.write(traceback.format_exc())
        if isinstance(e, InputError):
            _fail(f"invalid input: {e}", 2)
        if isinstance(e, StorageError):
            _fail(str(e), 2)
        if isinstance(e, KeyboardInterrupt):
            signum = getattr(e, "signum", signal.SIGINT)
            _fail(f"{action} stopped by {signal.Signals(signum).name}", 128 + signum)
        if isinstance(e, Exception):
            _fail(f"{action} failed: {type(e).__name__}: {e}", 1)
        # Prefect's TerminationSignal (SIGTERM) and other BaseExceptions
        _fail(f"{action} stopped: {type(e).__name__}", 1)


# Prefect reports a failed task or flow run at ERROR level with its traceback, through the
# loggers below, to the console handler of the root logger (and to its API handler, for the UI).
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine",
                       "prefect.flow_engine", "prefect.task_engine")


class _DropRunErrors(logging.Filter):
    """Drop Prefect's own reports of failed runs from the console: the CLI prints one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and record.name.startswith(PREFECT_RUN_LOGGERS))


@contextlib.contextmanager
def _quiet_prefect_errors(enabled: bool) -> Iterator[None]:
    """While the flow runs, keep Prefect's ERROR logs and tracebacks off the console handlers
    (the Prefect API and UI still get them)."""
    if not enabled:
        yield
        return
    filt = _DropRunErrors()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C: the flow marks the run failed and writes its runs row."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the flow runs, SIGTERM stops it as Ctrl-C does (by default it killed the process
    on the spot: no runs row, no clean exit). Only on the main thread, where handlers live."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the ephemeral Prefect API: a child that dies with the CLI --------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent_fn():
    """A ``preexec_fn`` for Popen that asks the kernel to SIGKILL the child when the thread that
    spawned it exits (so spawn from the main thread: that is when the process exits, even by
    SIGKILL). None where this cannot be done (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def start_ephemeral_api() -> None:
    """Start Prefect's ephemeral API server now, on this (the main) thread, tied to this process.

    Without PREFECT_API_URL, Prefect starts a uvicorn subprocess on first use (from whichever
    thread needs it) and stops it at exit; a CLI killed by SIGKILL left it running for good.
    Started here, the server is registered as Prefect's default instance (as Prefect's own test
    harness does), so Prefect reuses it, and on Linux the kernel kills it when this process
    dies. Nothing happens when an API URL is set, ephemeral mode is off or a server exists.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    preexec = _die_with_parent_fn()
    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return
    from prefect.server.api import server as prefect_server

    if None in prefect_server.SubprocessASGIServer._instances or preexec is None:
        return

    class _Subprocess:
        """The ``subprocess`` module as Prefect's server module sees it: Popen with preexec."""

        def __getattr__(self, name: str):
            return getattr(subprocess, name)

        @staticmethod
        def Popen(*args, **kwargs):  # noqa: N802 - the name Prefect calls
            return subprocess.Popen(*args, preexec_fn=preexec, **kwargs)

    class TiedServer(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            prefect_server.subprocess = _Subprocess()
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = subprocess

    TiedServer().start()


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


@app.command()
def run(
    study_file: Annotated[Path, typer.Argument(help="Study YAML file (name, storage, models, "
                                                    "tasks; everything else has defaults).")],
    storage: Annotated[str | None, typer.Option(
        "--storage", "-s", help="Storage root URI; overrides the study's `storage`. Without "
        "either: $PROMPT_TRANSFER_STORAGE, else ./results.")] = None,
    runner: Annotated[str | None, typer.Option(
        "--runner", help="Where units run: threads (one process), processes (a local "
        "process pool) or dask (a local Dask cluster, or --dask-address); default: the "
        "study's runner.task_runner (threads).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Concurrent units: threads, processes or local Dask workers; default: the study's "
        "runner.max_workers.")] = None,
    dask_address: Annotated[str | None, typer.Option(
        "--dask-address", help="Scheduler of an existing Dask cluster (tcp://host:8786); "
        "implies --runner dask.")] = None,
    device: Annotated[str | None, typer.Option(
        help="Torch device: cpu, cuda, cuda:N or auto; default: the study's runner.device.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Run a study: train prompts, evaluate the cross-task matrix, write tables.

    Reruns skip every unit whose result is already stored. Exit code 0 on success, 1 on a
    failed run, 2 on invalid input (study file, options, storage, task data or prompt files),
    which is checked before any training and before anything is written.
    """
    debug = debug or _global["debug"]
    if not (verbose or debug):
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with _reported("run", debug):
        _run(study_file, storage, dict(task_runner=runner, workers=workers,
                                       dask_address=dask_address, device=device),
             prefect_errors=verbose or debug)


def _run(study_file: Path, storage: str | None, overrides: dict, prefect_errors: bool) -> None:
    from pydantic import ValidationError

    from prompt_core.config import StudyFileError, format_error_line, load_study
    from prompt_core.preflight import check_study

    study = load_study(study_file)
    from flows.transfer_matrix import observe_progress, run_study, with_overrides
    from tasks.units import get_nlp_task

    try:
        study = with_overrides(study, storage, **overrides)
    except ValidationError as e:
        raise StudyFileError("options: " + "; ".join(
            format_error_line(err) for err in e.errors())) from None
    check_study(study, load_task=get_nlp_task)  # InputError listing every problem: exit 2
    root = open_storage(study.storage)
    root.check_writable()
    console.print(f"study [bold]{escape(study.name)}[/bold]: {len(study.models)} model(s) x "
                  f"{len(study.tasks)} task(s) x {len(study.seeds)} seed(s) -> "
                  f"{escape(root.root)} ({study.runner.task_runner}, "
                  f"{study.runner.max_workers} worker(s))", soft_wrap=True)
    start_ephemeral_api()
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)
    with (_sigterm_interrupts(), _quiet_prefect_errors(not prefect_errors), bars,
          observe_progress(StageBars(bars))):
        result = run_study(study, storage=root.root)
    t = Table(title=f"study {result.study} ({result.seconds:.0f}s)")
    for col in ("model", "own>none", "same-type rel", "diff-type rel", "random rel", "heatmap"):
        t.add_column(col)
    for model, s in result.summaries.items():
        t.add_row(model, f"{s['own_beats_none']}/{s['n_tasks']}", f"{s['same_type_rel']:.3f}",
                  f"{s['diff_type_rel']:.3f}", f"{s['random_rel']:.3f}", result.heatmaps[model])
    if result.summaries:  # the cross-task stage ran
        out.print(t)
    else:
        out.print(f"study {result.study} ({result.seconds:.0f}s)")
    out.print(f"prompts trained {result.n_prompts_trained}, reused {result.n_prompts_cached}; "
              f"cells evaluated {result.n_cells_evaluated}, reused {result.n_cells_cached}")
    for stage, c in result.stage_counts.items():  # the later stages: computed now vs stored
        out.print(f"{stage}: {c['computed']} computed, {c['stored']} stored before")
    out.print(f"tables: {result.storage}/tables/  (try: prompt-transfer query "
              f"\"select * from cross_task limit 5\" --storage {result.storage})",
              markup=False, highlight=False, soft_wrap=True)


def open_tables_root(uri: str | None) -> Storage:
    """The storage root of ``query``/``tables``; StorageError (exit 2) when it holds no tables,
    rather than an empty answer from a mistyped path or bucket."""
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


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL for DuckDB; every table is a view (runs, "
                                            "prompts, training_curves, cross_task, "
                                            "indicators, ... see `prompt-transfer tables`), "
                                            "plus latest_runs and the current_* views "
                                            "(current_cross_task, current_prompts, "
                                            "current_indicators, ...: the rows of each "
                                            "study's latest completed run).")],
    storage: StorageOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 100,
    debug: DebugOpt = False,
) -> None:
    """Query the result tables with DuckDB (local or s3 storage)."""
    if fmt not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, not {fmt!r}", 2)
    with _reported("query", debug):
        from tasks.tables import duckdb_connect

        df = duckdb_connect(open_tables_root(storage)).execute(sql).df()
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso") + "\n")
    else:
        t = Table(show_lines=False)
        for c in df.columns:
            t.add_column(str(c))
        for row in df.head(max_rows).itertuples(index=False):
            t.add_row(*[_fmt(v) for v in row])
        out.print(t)
        if len(df) > max_rows:
            out.print(f"... {len(df) - max_rows} more rows")


def _fmt(v) -> str:
    """Cell text: floats to 4 places, SQL NULL (None, or NaN after pandas) as empty."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


@app.command()
def tables(storage: StorageOpt = None, debug: DebugOpt = False) -> None:
    """List the tables with their row counts and partition columns.

    A table that cannot be read (a damaged part file) is listed as such, with its error below
    the listing, and the exit code is 1.
    """
    broken: list[str] = []
    with _reported("tables", debug):
        from tasks.tables import TABLES, duckdb_connect

        st = open_tables_root(storage)
        con = duckdb_connect(st)
        t = Table(title=f"tables under {escape(st.root)}/tables")
        for col in ("table", "rows", "partitions", "description"):
            t.add_column(col)
        for name, spec in TABLES.items():
            try:
                n = str(con.execute(f'select count(*) from "{name}"').fetchone()[0])
            except Exception as e:  # noqa: BLE001 - duckdb/arrow raise many types; reported
                if debug or _global["debug"]:
                    sys.stderr.write(traceback.format_exc())
                n = "unreadable"
                broken.append(f"table {name}: {type(e).__name__}: {e}")
            t.add_row(name, n, "/".join(spec.partition_by), escape(spec.description))
    out.print(t)
    for msg in broken:
        _error_line(msg)
    if broken:
        console.print("(`prompt-transfer verify` lists every damaged file)", markup=False,
                      soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def validate(study_file: Annotated[Path, typer.Argument(help="Study YAML file.")],
             debug: DebugOpt = False) -> None:
    """Check a study file, its models, prompt file and NLP tasks, without training anything.

    Everything `run` checks before compute is checked here; exit 2 lists every problem.
    """
    with _reported("validate", debug):
        from prompt_core.config import load_study
        from prompt_core.preflight import check_study

        study = load_study(study_file)
        checked = check_study(study)
    for td in checked.tasks:
        s = td.summary()
        out.print(f"{s['name']:<24} {s['type']:<12} labels={s['labels']} "
                  f"train={s['n_train']} validation={s['n_validation']} test={s['n_test']}",
                  markup=False, highlight=False)
    out.print(f"[green]ok[/green]: study {escape(repr(study.name))} is valid")


@app.command()
def verify(
    storage: StorageOpt = None,
    quarantine: Annotated[bool, typer.Option(
        "--quarantine", help="Move each damaged object aside (reruns then recompute it).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Check every stored table part and prompt file under a storage root.

    Exit 0 when nothing is damaged (or everything damaged was quarantined), 1 when damage was
    found and left in place, 2 when the root is unusable.
    """
    with _reported("verify", debug):
        from tasks import integrity

        st = open_storage(storage)
        try:
            st.check_readable()
        except StorageTimeoutError:
            raise
        except StorageError as exc:
            raise StorageError(f"{exc} (nothing to verify)") from exc
        damage = integrity.verify_root(st)
        n_files = sum(not k.startswith(integrity.QUARANTINE_PREFIX + "/") for k in st.list(""))
        moved = [integrity.quarantine(st, d) for d in damage] if quarantine else []
    if not damage:
        out.print(f"ok: nothing damaged among the {n_files} files under {st.root}",
                  markup=False, highlight=False, soft_wrap=True)
        return
    t = Table(title=f"damaged objects under {escape(st.root)}")
    for col in ("uri", "kind", "problem") + (("moved to",) if quarantine else ()):
        t.add_column(col, overflow="fold")
    for i, d in enumerate(damage):
        cells = [d.uri, d.kind, d.problem] + ([moved[i]] if quarantine else [])
        t.add_row(*[escape(str(c)) for c in cells])
    out.print(t)
    if quarantine:
        out.print(f"{len(damage)} damaged object(s) quarantined; a rerun recomputes them")
        return
    console.print(Text(f"{len(damage)} damaged object(s); rerun with --quarantine to move "
                       "them aside", style="red"), soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def status(
    study_file: Annotated[Path, typer.Argument(help="Study YAML file.")],
    storage: Annotated[str | None, typer.Option(
        "--storage", "-s", help="Storage root URI; overrides the study's `storage`. Without "
        "either: $PROMPT_TRANSFER_STORAGE, else ./results.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    max_missing: Annotated[int, typer.Option(help="Missing units listed (--json lists all).")
                           ] = 20,
    debug: DebugOpt = False,
) -> None:
    """How complete a study is, from its tables alone: units done / total per stage and model,
    the missing units, and the failed units of its latest run. Trains and writes nothing.

    Exit 0 whatever the completion; 2 for a bad study file or a storage root without tables.
    """
    with _reported("status", debug):
        import json

        from flows.status import study_status
        from prompt_core.config import load_study

        study = load_study(study_file)
        st = study_status(study, open_tables_root(storage or study.storage))
    if as_json:
        sys.stdout.write(json.dumps(st.to_dict(), indent=2) + "\n")
        return
    out.print(f"study {st.study} under {st.storage}", markup=False, highlight=False,
              soft_wrap=True)
    t = Table()
    for col in ("stage", "model", "done", "total"):
        t.add_column(col, justify="right" if col in ("done", "total") else "left")
    for s in st.stages:
        t.add_row(s.stage, escape(s.model or "-"), str(s.done), str(s.total),
                  style=None if s.done == s.total else "yellow")
    out.print(t)
    missing = st.missing()
    if missing:
        out.print(f"missing units ({len(missing)}):", highlight=False)
        for label in missing[:max_missing]:
            out.print(f"  {label}", markup=False, highlight=False, soft_wrap=True)
        if len(missing) > max_missing:
            out.print(f"  ... {len(missing) - max_missing} more (--json lists all)",
                      markup=False, highlight=False)
    else:
        out.print("[green]complete[/green]: every unit is stored")
    run = st.latest_run
    if run is None:
        out.print("no run of this study recorded", highlight=False)
    else:
        out.print(f"latest run {run.run_id}: {run.status}, finished "
                  f"{run.finished_at.isoformat(timespec='seconds')}",
                  markup=False, highlight=False, soft_wrap=True)
        if run.failures:
            out.print(f"failed units ({len(run.failures)}):", highlight=False)
        for f in run.failures:
            out.print(f"  {f.unit}: {f.error}", markup=False, highlight=False, soft_wrap=True)
    for p in st.problems:
        console.print(Text.assemble(("warning:", "bold yellow"), " ", p), soft_wrap=True)


@app.command()
def recommend(
    study_file: Annotated[Path, typer.Argument(help="Study YAML file of a finished study.")],
    task: Annotated[str, typer.Option(
        "--task", "-t", help="The new task: a task folder (task.json + train/validation/test "
        "files), or the name of a study task (its own prompt is then left out).")],
    model: Annotated[str | None, typer.Option(help="Model whose prompts are ranked; default: "
                                                    "the study's first.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the prompts; default: the "
                                                  "study's first.")] = None,
    examples: Annotated[int | None, typer.Option(
        help="Train examples of the new task each source prompt is scored on; default: the "
        "study's indicators.probe_examples, else 64.")] = None,
    top: Annotated[int, typer.Option(help="Sources shown.")] = 10,
    storage: Annotated[str | None, typer.Option(
        "--storage", "-s", help="Storage root URI; overrides the study's `storage`.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranking as JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Rank a finished study's source prompts for a new task, best first.

    Uses only the new task's data: each current prompt of the study (one model, one seed) is
    scored on a seeded sample of the new task's train split, the recommender the
    ``indicators`` stage evaluates leave-one-task-out (table ``recommendations``, method
    ``probe``). Trains and writes nothing.
    """
    if examples is not None and examples < 1:
        _fail("--examples must be at least 1", 2)
    with _reported("recommend", debug):
        from flows.recommend import recommend as rank
        from prompt_core.config import load_study

        study = load_study(study_file)
        name, ranking = rank(study, open_tables_root(storage or study.storage), task, model,
                             seed, examples, device)
    if as_json:
        import json

        sys.stdout.write(json.dumps({"task": name, "ranking": [r.__dict__ for r in ranking]},
                                    indent=2) + "\n")
        return
    t = Table(title=f"sources for {name} (accuracy on its train sample)")
    for col in ("rank", "source task", "type", "score"):
        t.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for r in ranking[:top]:
        t.add_row(str(r.rank), escape(r.source_task), escape(r.source_task_type),
                  f"{r.score:.3f}")
    out.print(t)


@app.command("export-peft")
def export_peft_cmd(
    prompt_file: Annotated[str, typer.Argument(
        help="A prompt file (.safetensors, as the flow stores them: a local path or any "
        "fsspec URI such as s3://bucket/prefix/prompts/minilm/sst2/<key>.safetensors).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Adapter folder to write.")],
    base_model: Annotated[str | None, typer.Option(
        help="base_model_name_or_path of the adapter; default: the model id in the prompt "
        "file's metadata.")] = None,
    kind: Annotated[str | None, typer.Option(
        help="Backbone kind (encoder, mlm, causal, seq2seq); default: from the metadata.")
                    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the adapter files of a "
                                                        "non-empty folder.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Export a stored prompt as a PEFT prompt-tuning adapter folder.

    Load it with ``PeftModel.from_pretrained(base_model, FOLDER)``. PEFT prepends the prompt
    to the input embeddings as prompt_core does; for BERT text pairs PEFT drops
    token_type_ids, so scores on pair tasks can differ slightly from the study's.
    """
    with _reported("export-peft", debug):
        from prompt_core.peft_io import export_peft
        from prompt_core.prompts import prompt_from_bytes
        from tasks.units import read_prompt_bytes

        prompt, meta = prompt_from_bytes(read_prompt_bytes(prompt_file), prompt_file)
        identity = meta.get("model_identity") or {}
        base = base_model or meta.get("model_id") or identity.get("model_id")
        kind = kind or identity.get("kind") or meta.get("backbone_kind")
        if not base or not kind:
            raise InputError(f"{prompt_file}: its metadata names no "
                             f"{'base model' if not base else 'backbone kind'}; give "
                             f"{'--base-model' if not base else '--kind'}")
        folder = export_peft(prompt, out_dir, base_model_name_or_path=base, backbone_kind=kind,
                             metadata=meta, overwrite=force)
    out.print(f"wrote {folder} (PEFT prompt tuning: {prompt.shape[0]} virtual tokens, "
              f"dimension {prompt.shape[1]}, base model {base})", markup=False,
              highlight=False, soft_wrap=True)


@app.command("import-peft")
def import_peft_cmd(
    folder: Annotated[Path, typer.Argument(help="A PEFT prompt-tuning adapter folder.")],
    out_file: Annotated[Path, typer.Option(
        "--out", "-o", help="Prompt file to write (.safetensors); use it as a study's "
        "training.init_prompt (init: prompt).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Import a PEFT prompt-tuning adapter as a prompt file."""
    if out_file.exists() and not force:
        _fail(f"{out_file} exists; --force replaces it", 2)
    with _reported("import-peft", debug):
        from prompt_core.peft_io import import_peft
        from prompt_core.prompts import save_prompt_file

        prompt, meta = import_peft(folder)
        save_prompt_file(out_file, prompt, {**meta, "imported_from": str(folder)})
    out.print(f"wrote {out_file}: prompt {tuple(prompt.shape)} from {folder} (base model "
              f"{meta.get('base_model_name_or_path')})", markup=False, highlight=False,
              soft_wrap=True)


@app.command()
def ddl(
    location: Annotated[str, typer.Option(
        "--location", "-l", help="Storage root the tables live under, e.g. "
        "s3://my-bucket/prompt-transfer.")],
    table: Annotated[list[str] | None, typer.Option(
        "--table", "-t", help="Only this table (repeatable); default: every table.")] = None,
    dialect: Annotated[str, typer.Option(help="athena (Hive DDL) or trino (Hive connector).")
                       ] = "athena",
    debug: DebugOpt = False,
) -> None:
    """Print CREATE TABLE statements for Athena or Trino, one per table, from the tables'
    schemas (partition columns as strings). Then load the partitions: Athena `MSCK REPAIR
    TABLE <table>`, Trino `CALL hive.system.sync_partition_metadata(...)`."""
    if dialect not in ("athena", "trino"):
        _fail(f"--dialect must be athena or trino, not {dialect!r}", 2)
    with _reported("ddl", debug):
        from tasks.tables import TABLES, athena_ddl, get_table, trino_ddl

        try:
            specs = [get_table(t) for t in (table or list(TABLES))]
            make = athena_ddl if dialect == "athena" else trino_ddl
            text = "\n\n".join(make(s, location) for s in specs)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    sys.stdout.write(text + "\n")


# -- derive-model: a second (third) real model, offline ---------------------------------------

derive_app = typer.Typer(
    help="Derive a model from the shipped all-MiniLM-L6-v2, offline and reproducibly; the "
    "output folder's derivation.json records how (and the command that recreates it). A study "
    "names the folder as an encoder model: {kind: encoder, model_id: models/minilm-l3}.",
    no_args_is_help=True,
)
app.add_typer(derive_app, name="derive-model")

OutOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Output folder, e.g. models/minilm-l3; refused when it exists and is "
    "not empty, unless --force.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace a non-empty output folder (swapped in only once the new model is "
    "complete).")]
SourceOpt = Annotated[str | None, typer.Option(
    "--source", help="Source model: a local BERT-family folder with model.safetensors; "
    "default: the shipped all-MiniLM-L6-v2.")]


def _derived(path: Path) -> None:
    """One summary line of a finished derivation, from its derivation.json."""
    import json

    rec = json.loads((path / "derivation.json").read_text())
    o, agree = rec["output"], rec["agreement"]["spearman_pairwise_cosine"]
    out.print(f"derived {path} ({rec['method']}: {o['num_hidden_layers']} layer(s), hidden "
              f"{o['hidden_size']}, {o['n_parameters'] / 1e6:.1f}M parameters) in "
              f"{rec['seconds']:.0f}s; agreement with the source on held-out texts "
              f"(Spearman of pairwise cosines) {agree:.3f}; see {path / 'derivation.json'}",
              markup=False, highlight=False, soft_wrap=True)


@derive_app.command("layer-drop")
def derive_layer_drop(
    out_dir: OutOpt,
    keep: Annotated[str, typer.Option(
        "--keep", help="Layers kept: a count N (N evenly spaced layers, always the first and "
        "the last: 3 -> 0,3,5 of MiniLM's 6) or comma-separated indices (0,4,5).")] = "3",
    force: ForceOpt = False,
    source: SourceOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Keep some encoder layers of the source: a shallower model, same hidden size.

    The tokenizer and every kept weight are unchanged (MiniLM: hidden 384). Deterministic; a
    few seconds.
    """
    with _reported("derive-model", debug):
        from prompt_core.derive import MINILM_ID, layer_drop

        path = layer_drop(out_dir, keep, source or MINILM_ID, force=force)
    _derived(path)


@derive_app.command("distill")
def derive_distill(  # defaults = prompt_core.derive.distill's (a test checks)
    out_dir: OutOpt,
    hidden: Annotated[int, typer.Option(help="Student hidden size (at most the source's).")
                      ] = 256,
    layers: Annotated[int, typer.Option(help="Student encoder layers.")] = 4,
    heads: Annotated[int, typer.Option(help="Attention heads (must divide --hidden).")] = 4,
    intermediate: Annotated[int, typer.Option(help="Feed-forward size.")] = 1024,
    steps: Annotated[int, typer.Option(help="AdamW steps.")] = 600,
    batch_size: Annotated[int, typer.Option(help="Texts per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, cosine decay).")
                  ] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the init and the batches.")] = 0,
    sim_weight: Annotated[float, typer.Option(
        help="Weight of the cosine-matrix loss against the alignment loss.")] = 10.0,
    texts: Annotated[list[Path] | None, typer.Option(
        "--texts", metavar="FILE", help="Extra training texts: a UTF-8 file, one text per "
        "line (repeatable); the built-in demo tasks' train texts are always used.")] = None,
    force: ForceOpt = False,
    source: SourceOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Distil the source into a narrower BERT student: a different hidden size.

    The student (hidden 256 by default, MiniLM's tokenizer) learns to reproduce the source's
    mean-pooled sentence-embedding geometry on the demo task texts. Same seed and thread
    count, same weights. About 3 minutes on 2 CPU cores.
    """
    with _reported("derive-model", debug):
        from prompt_core.derive import MINILM_ID, distill

        path = distill(out_dir, hidden=hidden, layers=layers, heads=heads,
                       intermediate=intermediate, steps=steps, batch_size=batch_size, lr=lr,
                       seed=seed, texts=texts, source=source or MINILM_ID,
                       sim_weight=sim_weight, force=force,
                       log=lambda msg: console.log(msg, markup=False, highlight=False))
    _derived(path)


if __name__ == "__main__":
    app()
