"""DuckDB over the tables: one view per registered table, plus the ready views derived from the
registry (``latest_runs``, and ``current_<table>`` for each spec with ``current_view``)."""

from __future__ import annotations

from collections.abc import Iterable

import duckdb

from tasks.storage import Storage
from tasks.tables.parquet import dataset
from tasks.tables.schema import TABLES, TableSpec, get_table

# A study's latest completed run; its *current* rows are those that run covered (``run_keys``).
LATEST_RUNS_SQL = """
        select * from runs where status = 'completed'
        qualify row_number() over (partition by study order by finished_at desc, run_id) = 1"""


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def current_view_sql(spec: TableSpec | str) -> str:
    """The ``current_<table>`` view of a spec with ``current_view``: the rows whose key the
    latest completed run of their study covered (a ``run_keys`` row with the table's
    ``run_keys_name``, the row's study, model and key), the newest row (``created_at``) of
    each (study, model, key, row id columns): changing a configuration and rerunning makes
    the new rows current without deleting the old ones, and duplicates of a key (a unit
    recomputed after damage) collapse to the newest row."""
    spec = get_table(spec)
    if not spec.current_view:
        raise ValueError(f"table {spec.name!r} has no current view")
    assert spec.key_column is not None and spec.model_column is not None  # __post_init__

    def col(c: str) -> str:
        return f"t.{_ident(c)}"

    partition = ", ".join(col(c) for c in ("study", spec.model_column, spec.key_column,
                                           *spec.row_id))
    return f"""
        select t.* from {_ident(spec.name)} t
        join run_keys k on k.table_name = '{spec.run_keys_name}' and k.key = {col(spec.key_column)}
            and k.study = t.study and k.model = {col(spec.model_column)}
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by {partition}
                                   order by t.created_at desc) = 1"""


def views() -> dict[str, str]:
    """Ready views (name: SQL) over the registered tables, in creation order: ``latest_runs``,
    then ``current_<table>`` for each spec with ``current_view`` (registry order)."""
    out = {"latest_runs": LATEST_RUNS_SQL}
    for spec in TABLES.values():
        if spec.current_view:
            out[f"current_{spec.name}"] = current_view_sql(spec)
    return out


def view_tables() -> dict[str, set[str]]:
    """The base tables each ready view reads (besides ``runs`` and ``run_keys``)."""
    out = {"latest_runs": {"runs"}}
    for spec in TABLES.values():
        if spec.current_view:
            out[f"current_{spec.name}"] = {spec.name}
    return out


def duckdb_connect(
    storage: Storage, tables: Iterable[str] | None = None, *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per table (hive partition columns are VARCHAR), plus the
    ready views (:func:`views`) when all their tables are present.

    Each table is a ``pyarrow.dataset`` of its part files (listed now, read when queried): a
    damaged part fails only the queries that read its table, with the file's path.

    ``read_only`` (what ``prompt-transfer query`` uses): once the views exist, DuckDB's
    external access is turned off and its configuration locked, so the connection reads the
    registered tables and views and nothing else: no file or URL (``read_parquet``,
    ``read_csv``, ``COPY ... TO``, ``ATTACH``, ``EXPORT DATABASE``), no extension install or
    load, no ``SET``. Such statements raise ``duckdb.PermissionException`` (or
    ``duckdb.InvalidInputException`` for a locked setting); in-memory ``CREATE``/``INSERT``
    still work (they touch no file; the CLI refuses every statement that is not a read,
    :func:`flows.cli_support.check_read_only_sql`). The views keep working on local
    and S3 roots: their datasets are read by pyarrow, not by DuckDB's file system. Without it
    (the default) the connection is an ordinary DuckDB one.
    """
    names = list(TABLES if tables is None else tables)
    specs = [get_table(n) for n in names]
    con = duckdb.connect(":memory:")
    for spec in specs:
        con.register(f"__ds_{spec.name}", dataset(storage, spec.name))
        select = ", ".join(_ident(c) for c in spec.schema.names)
        con.execute(f"CREATE VIEW {_ident(spec.name)} AS SELECT {select} FROM "
                    f"{_ident('__ds_' + spec.name)}")
    if {"runs", "run_keys"} <= set(names):
        needs = view_tables()
        for view, sql in views().items():
            if needs[view] <= set(names):
                con.execute(f"CREATE VIEW {_ident(view)} AS {sql}")
    if read_only:
        lock_down(con)
    return con


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """No more files, URLs or extensions for ``con``, and its settings frozen (for good:
    ``lock_configuration`` cannot be reset on the connection)."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
