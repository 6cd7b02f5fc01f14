"""``prompt-transfer``: run a study, query its tables, check a study file or a storage root.

Storage for ``query``, ``tables`` and ``verify``: ``--storage URI`` if given, else
$PROMPT_TRANSFER_STORAGE, else ``./results``. S3 endpoints and credentials come from the
environment (PROMPT_TRANSFER_S3_ENDPOINT or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY).

``query`` is read-only: a DuckDB connection locked to the tables and views of the root (no
file, URL, extension or setting can be reached; see ``flows.cli_support.run_query``).

Errors are one line on stderr, never a traceback (``--debug`` shows it): exit 2 for bad input
(study file, task data, prompt files, a storage root that is unusable or holds no tables, SQL
that is empty or not a read, an ``--out`` that cannot be written), 1 for a failed run or a
query DuckDB rejects. ``--debug`` and ``--verbose`` also work before the command.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from flows.cli_derive import derive_app
from flows.cli_support import (
    DebugOpt,
    StageBars,
    StorageOpt,
    VerboseOpt,
    cell_text,
    check_out_path,
    console,
    debugging,
    error_line,
    exit_fast,
    fail,
    live_claims,
    open_tables_root,
    out,
    print_run_summary,
    print_status,
    quiet_startup,
    read_uri_bytes,
    reported,
    run_query,
    set_global_options,
    verbosity,
    write_out_file,
    writing_out,
)
from flows.runtime import (
    prefect_defaults,
    quiet_prefect_errors,
    sigterm_interrupts,
    spawn_ephemeral_api,
    start_ephemeral_api,
    start_local_dask_early,
)
from prompt_core.errors import InputError
from tasks.storage import StorageError, StorageTimeoutError, open_storage

app = typer.Typer(
    help="Measure soft-prompt transfer between NLP tasks (Su et al., NAACL 2022) with Prefect "
    "flows that write Parquet tables.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(derive_app, name="derive-model")


def main() -> None:
    """The ``prompt-transfer`` console script: the Typer app, then :func:`exit_fast`."""
    try:
        app()
    except SystemExit as exc:
        exit_fast(exc.code)
    exit_fast(0)


@app.callback()
def _main(debug: DebugOpt = False, verbose: VerboseOpt = False) -> None:
    quiet_startup()
    set_global_options(debug, verbose)
    prefect_defaults()


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
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run a study: train prompts, evaluate the cross-task matrix, write tables.

    Reruns skip every unit whose result is already stored. Exit code 0 on success, 1 on a
    failed run, 2 on invalid input (study file, options, storage, task data or prompt files),
    which is checked before any training and before anything is written.
    """
    debug, verbose = debugging(debug), verbosity(verbose)
    # the run's logs (dev scores, stages, waits) go to the API and the UI in any case; the
    # terminal shows Prefect's INFO lines only with --verbose
    prefect_defaults(console_level=None if verbose or debug else "WARNING")
    if not (verbose or debug):  # Dask's own INFO lines (cluster start, workers) off the bars too
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    api = spawn_ephemeral_api()  # starts while the study is read and checked
    with reported("run", debug):
        _run(study_file, storage, dict(task_runner=runner, workers=workers,
                                       dask_address=dask_address, device=device),
             prefect_errors=verbose or debug, api=api)


def _run(study_file: Path, storage: str | None, overrides: dict, prefect_errors: bool,
         api=None) -> None:
    from pydantic import ValidationError

    from prompt_core.config import StudyFileError, format_error_line, load_study, with_overrides

    study = load_study(study_file)
    try:
        study = with_overrides(study, storage, **overrides)
    except ValidationError as e:
        raise StudyFileError("options: " + "; ".join(
            format_error_line(err) for err in e.errors())) from None
    # local Dask: its workers' imports overlap this process's own (the flow, the study check)
    start_local_dask_early(study.runner)
    from flows.transfer_matrix import run_study
    from prompt_core.preflight import check_study
    from tasks.units import get_nlp_task

    check_study(study, load_task=get_nlp_task)  # InputError listing every problem: exit 2
    root = open_storage(study.storage)
    root.check_writable()
    console.print(f"study [bold]{escape(study.name)}[/bold]: {len(study.models)} model(s) x "
                  f"{len(study.tasks)} task(s) x {len(study.seeds)} seed(s) -> "
                  f"{escape(root.root)} ({study.runner.task_runner}, "
                  f"{study.runner.max_workers} worker(s))", soft_wrap=True)
    if api is not None:
        api.wait_ready()
    else:
        start_ephemeral_api()
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)
    with sigterm_interrupts(), quiet_prefect_errors(not prefect_errors), bars:
        result = run_study(study, storage=root.root, observer=StageBars(bars), checked=True)
    print_run_summary(result)


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
    """Query the result tables with DuckDB (local or s3 storage), read-only.

    Only reads of the tables and views run (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN,
    PRAGMA, CALL): no file, URL, extension or setting can be reached (COPY, ATTACH, EXPORT,
    INSTALL, SET, read_csv('/path')...: exit 2). Exit 1 when DuckDB rejects the query.
    """
    if fmt not in ("table", "csv", "json"):
        fail(f"--format must be table, csv or json, not {fmt!r}", 2)
    with reported("query", debug):
        df = run_query(sql, storage)
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso") + "\n")
    else:
        t = Table(show_lines=False)
        for c in df.columns:
            t.add_column(str(c))
        for row in df.head(max_rows).itertuples(index=False):
            t.add_row(*[cell_text(v) for v in row])
        out.print(t)
        if len(df) > max_rows:
            out.print(f"... {len(df) - max_rows} more rows")


@app.command()
def tables(storage: StorageOpt = None, debug: DebugOpt = False) -> None:
    """List the tables with their row counts and partition columns.

    A table that cannot be read (a damaged part file) is listed as such, with its error below
    the listing, and the exit code is 1.
    """
    broken: list[str] = []
    with reported("tables", debug):
        from tasks.tables import TABLES, duckdb_connect

        st = open_tables_root(storage)
        con = duckdb_connect(st, read_only=True)
        t = Table(title=f"tables under {escape(st.root)}/tables")
        for col in ("table", "rows", "partitions", "description"):
            t.add_column(col)
        for name, spec in TABLES.items():
            try:
                n = str(con.execute(f'select count(*) from "{name}"').fetchone()[0])
            except Exception as e:  # noqa: BLE001 - duckdb/arrow raise many types; reported
                if debugging(debug):
                    sys.stderr.write(traceback.format_exc())
                n = "unreadable"
                broken.append(f"table {name}: {type(e).__name__}: {e}")
            t.add_row(name, n, "/".join(spec.partition_by), escape(spec.description))
    out.print(t)
    for msg in broken:
        error_line(msg)
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
    with reported("validate", debug):
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
    """Check every stored file under a storage root: table parts, prompts, projectors, probes,
    task data and figures.

    Exit 0 when nothing is damaged (or everything damaged was quarantined), 1 when damage was
    found and left in place, 2 when the root is unusable.
    """
    with reported("verify", debug):
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
    with reported("status", debug):
        import json

        from flows.status import study_status
        from prompt_core.config import load_study

        study = load_study(study_file)
        root = open_tables_root(storage or study.storage)
        st = study_status(study, root)
        claims = live_claims(root)  # units a run is computing now (under this root)
    in_flight = {"live_claims": len(claims),
                 "run_ids": sorted({c.owner.split("/")[0] for c in claims})}
    if as_json:
        sys.stdout.write(json.dumps({**st.to_dict(), "in_flight": in_flight}, indent=2) + "\n")
        return
    print_status(st, claims, in_flight["run_ids"], max_missing)


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
        fail("--examples must be at least 1", 2)
    with reported("recommend", debug):
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
    with reported("export-peft", debug):
        from prompt_core.peft_io import export_peft
        from prompt_core.prompts import prompt_from_bytes

        check_out_path(out_dir, folder=True)
        prompt, meta = prompt_from_bytes(read_uri_bytes(prompt_file), prompt_file)
        identity = meta.get("model_identity") or {}
        base = base_model or meta.get("model_id") or identity.get("model_id")
        kind = kind or identity.get("kind") or meta.get("backbone_kind")
        if not base or not kind:
            raise InputError(f"{prompt_file}: its metadata names no "
                             f"{'base model' if not base else 'backbone kind'}; give "
                             f"{'--base-model' if not base else '--kind'}")
        with writing_out(out_dir):
            folder = export_peft(prompt, out_dir, base_model_name_or_path=base,
                                 backbone_kind=kind, metadata=meta, overwrite=force)
    out.print(f"wrote {folder} (PEFT prompt tuning: {prompt.shape[0]} virtual tokens, "
              f"dimension {prompt.shape[1]}, base model {base})", markup=False,
              highlight=False, soft_wrap=True)


@app.command("import-peft")
def import_peft_cmd(
    folder: Annotated[Path, typer.Argument(help="A PEFT prompt-tuning adapter folder.")],
    out_file: Annotated[Path, typer.Option(
        "--out", "-o", help="Prompt file to write (.safetensors; missing folders are "
        "created); use it as a study's training.init_prompt (init: prompt).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Import a PEFT prompt-tuning adapter as a prompt file."""
    if out_file.exists() and not out_file.is_dir() and not force:
        fail(f"{out_file} exists; --force replaces it", 2)
    with reported("import-peft", debug):
        from prompt_core.peft_io import import_peft
        from prompt_core.prompts import save_prompt_file

        check_out_path(out_file, folder=False)
        prompt, meta = import_peft(folder)
        write_out_file(out_file, lambda: save_prompt_file(
            out_file, prompt, {**meta, "imported_from": str(folder)}))
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
        fail(f"--dialect must be athena or trino, not {dialect!r}", 2)
    with reported("ddl", debug):
        from tasks.tables import TABLES, athena_ddl, get_table, trino_ddl

        try:
            specs = [get_table(t) for t in (table or list(TABLES))]
            make = athena_ddl if dialect == "athena" else trino_ddl
            text = "\n\n".join(make(s, location) for s in specs)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    app()
