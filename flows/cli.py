"""``prompt-transfer``: run a study, query its tables, check a study file.

Storage for ``query`` and ``tables``: ``--storage URI`` if given, else $PROMPT_TRANSFER_STORAGE,
else ``./results``. S3 endpoints and credentials come from the environment
(PROMPT_TRANSFER_S3_ENDPOINT or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the ephemeral API starts in a subprocess; on a busy 2-core machine 20 s (the default) is short
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    help="Measure soft-prompt transfer between NLP tasks (Su et al., NAACL 2022) with Prefect "
    "flows that write Parquet tables.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", "-s", help="Storage root URI (local path or s3://bucket/prefix). "
                 "Default: $PROMPT_TRANSFER_STORAGE, else ./results."),
]


class RichReporter:
    """Progress bars: one per stage, plus a bar per running unit. Off a terminal (CI, nohup)
    bars do not redraw, so each finished unit is also logged as a line."""

    def __init__(self, progress: Progress):
        self.p = progress
        self.stages: dict[str, tuple[TaskID, int]] = {}  # name -> (bar, total)
        self.done: dict[str, int] = {}
        self.units: dict[str, TaskID] = {}
        self.lines = not progress.console.is_terminal

    def stage(self, name: str, total: int) -> None:
        self.stages[name] = (self.p.add_task(f"[bold]{name}", total=total), total)
        self.done[name] = 0

    def advance(self, name: str, n: int = 1) -> None:
        if name in self.stages:
            bar, total = self.stages[name]
            self.p.advance(bar, n)
            self.done[name] += n
            if self.lines:
                self.p.console.log(f"{name}: {self.done[name]}/{total} done")

    def steps(self, label: str, done: int, total: int) -> None:
        if label not in self.units:
            self.units[label] = self.p.add_task(f"  {label}", total=total)
        self.p.update(self.units[label], completed=done)

    def finish(self, label: str) -> None:
        tid = self.units.pop(label, None)
        if tid is not None:
            self.p.remove_task(tid)


def _fail(msg: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


@app.command()
def run(
    study_file: Annotated[Path, typer.Argument(help="Study YAML file (name, storage, models, "
                                                    "tasks; everything else has defaults).")],
    storage: Annotated[str | None, typer.Option(
        "--storage", "-s", help="Storage root URI; overrides the study's `storage`. Without "
        "either: $PROMPT_TRANSFER_STORAGE, else ./results.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Concurrent Prefect task runs (threads); default: the study's runner.max_workers."
    )] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Run a study: train prompts, evaluate the cross-task matrix, write tables.

    Reruns skip every unit whose result is already stored. Exit code 0 on success, 1 on a
    failed run, 2 on invalid input (study file, storage, task data or prompt files), which is
    checked before any training.
    """
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prompt_core.config import StudyFileError, load_study

    try:
        study = load_study(study_file)
    except StudyFileError as e:
        _fail(str(e), 2)
    from flows.transfer_matrix import run_study
    from tasks import progress as prog
    from tasks.storage import StorageError, open_storage

    try:
        root = open_storage(storage or study.storage)
        root.check_writable()
    except StorageError as e:
        _fail(str(e), 2)
    console.print(f"study [bold]{study.name}[/bold]: {len(study.models)} model(s) x "
                  f"{len(study.tasks)} task(s) x {len(study.seeds)} seed(s) -> {root.root}")
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)
    prog.set_reporter(RichReporter(bars))
    from prompt_core.data import TaskDataError
    from prompt_core.prompts import PromptFileError

    try:
        with bars:
            result = run_study(study, storage=root.root, max_workers=workers)
    except (TaskDataError, PromptFileError) as e:  # bad input, found before any training
        _fail(f"invalid input: {e}", 2)
    except Exception as e:  # noqa: BLE001 - the CLI reports and exits non-zero
        _fail(f"run failed: {type(e).__name__}: {e}")
    finally:
        prog.set_reporter(None)
    t = Table(title=f"study {result.study} ({result.seconds:.0f}s)")
    for col in ("model", "own>none", "same-type rel", "diff-type rel", "random rel", "heatmap"):
        t.add_column(col)
    for model, s in result.summaries.items():
        t.add_row(model, f"{s['own_beats_none']}/{s['n_tasks']}", f"{s['same_type_rel']:.3f}",
                  f"{s['diff_type_rel']:.3f}", f"{s['random_rel']:.3f}", result.heatmaps[model])
    out.print(t)
    out.print(f"prompts trained {result.n_prompts_trained}, reused {result.n_prompts_cached}; "
              f"cells evaluated {result.n_cells_evaluated}, reused {result.n_cells_cached}")
    out.print(f"tables: {result.storage}/tables/  (try: prompt-transfer query "
              f"\"select * from cross_task limit 5\" --storage {result.storage})")


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL for DuckDB; every table is a view "
                                            "(runs, prompts, training_curves, cross_task).")],
    storage: StorageOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 100,
) -> None:
    """Query the result tables with DuckDB (local or s3 storage)."""
    from tasks.storage import StorageError, open_storage
    from tasks.tables import duckdb_connect

    if fmt not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, not {fmt!r}", 2)
    try:
        con = duckdb_connect(open_storage(storage))
        df = con.execute(sql).df()
    except StorageError as e:
        _fail(str(e), 2)
    except Exception as e:  # noqa: BLE001 - duckdb raises many error types
        _fail(f"query failed: {e}", 1)
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
    return str(v)


@app.command()
def tables(storage: StorageOpt = None) -> None:
    """List the tables with their row counts and partition columns."""
    from tasks.storage import open_storage
    from tasks.tables import TABLES, duckdb_connect

    st = open_storage(storage)
    con = duckdb_connect(st)
    t = Table(title=f"tables under {st.root}/tables")
    for col in ("table", "rows", "partitions", "description"):
        t.add_column(col)
    for name, spec in TABLES.items():
        n = con.execute(f'select count(*) from "{name}"').fetchone()[0]
        t.add_row(name, str(n), "/".join(spec.partition_by), spec.description)
    out.print(t)


@app.command()
def validate(study_file: Annotated[Path, typer.Argument(help="Study YAML file.")]) -> None:
    """Check a study file and load its NLP tasks, without training anything."""
    from prompt_core.config import StudyFileError, load_nlp_task, load_study
    from prompt_core.data import TaskDataError

    try:
        study = load_study(study_file)
        for cfg in study.tasks:
            td = load_nlp_task(cfg)
            s = td.summary()
            out.print(f"{s['name']:<24} {s['type']:<12} labels={s['labels']} "
                      f"train={s['n_train']} validation={s['n_validation']} test={s['n_test']}")
    except (StudyFileError, TaskDataError) as e:
        _fail(str(e), 2)
    out.print(f"[green]ok[/green]: study {study.name!r} is valid")


if __name__ == "__main__":
    app()
