"""Result tables: hive-partitioned Parquet under ``<root>/tables/<table>/``, plus DuckDB views.

Each table's row is defined once, as a dataclass (``PromptRow``, ``CellRow``...): the Arrow
schema is derived from its annotations, the pipeline builds rows as instances, and the same
instances travel between stages. One Parquet part per unit of work, named by the unit's key:
a unit checks its own part (or its own partition directory), never the whole table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.storage import Storage, StorageError

TABLES_PREFIX = "tables"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

STRING = pa.string()
INT64 = pa.int64()
FLOAT64 = pa.float64()
BOOL = pa.bool_()
TIMESTAMP = pa.timestamp("us", tz="UTC")
_ARROW_TYPES: dict[Any, pa.DataType] = {
    str: STRING, int: INT64, float: FLOAT64, bool: BOOL, dt.datetime: TIMESTAMP,
}
INT16_LIST = pa.list_(pa.int16())
# a row field annotated ``Int16List`` is a list<int16> column (label ids of every example);
# ``Annotated[<python type>, <pa.DataType>]`` names any other Arrow type the same way
Int16List = Annotated[list[int], INT16_LIST]


def now_utc() -> dt.datetime:
    """Current time as an aware UTC datetime (for ``*_at`` columns)."""
    return dt.datetime.now(dt.timezone.utc)


def _arrow_type(t: Any) -> pa.DataType:
    """The Arrow type of a row field's annotation (see :meth:`TableSpec.from_row`)."""
    if typing.get_origin(t) is Annotated:
        arrow = [a for a in t.__metadata__ if isinstance(a, pa.DataType)]
        if len(arrow) != 1:
            raise TypeError(f"{t}: Annotated needs exactly one pyarrow DataType")
        return arrow[0]
    return _ARROW_TYPES[t]


@dataclass(frozen=True)
class TableSpec:
    """Schema (all columns, partition columns included) and layout of one result table."""

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    key_column: str | None
    description: str
    row_id: tuple[str, ...] = ()  # columns that, with the key, tell one row from another

    def __post_init__(self) -> None:
        if not _SAFE_NAME.match(self.name):
            raise ValueError(f"table name {self.name!r} must match {_SAFE_NAME.pattern}")
        names = self.schema.names
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name!r}: duplicate column names in schema")
        for col in self.partition_by:
            if col not in names:
                raise ValueError(f"table {self.name!r}: partition column {col!r} not in schema")
            field = self.schema.field(col)
            if field.type != STRING or field.nullable:
                raise ValueError(
                    f"table {self.name!r}: partition column {col!r} must be a non-null string"
                )
        if self.key_column is not None and self.key_column not in names:
            raise ValueError(f"table {self.name!r}: key column {self.key_column!r} not in schema")
        for col in self.row_id:
            if col not in names:
                raise ValueError(f"table {self.name!r}: row id column {col!r} not in schema")

    @classmethod
    def from_row(cls, name: str, row: type, partition_by: tuple[str, ...],
                 key_column: str | None, description: str, row_id: tuple[str, ...] = ()
                 ) -> TableSpec:
        """A spec whose schema is ``row``'s dataclass fields in order: ``str``, ``int``,
        ``float``, ``bool``, ``datetime``, or ``Annotated[<type>, <pa.DataType>]`` for another
        Arrow type (``Int16List``: list<int16>); ``X | None`` makes the column nullable."""
        hints = typing.get_type_hints(row, include_extras=True)
        fields = []
        for f in dataclasses.fields(row):
            t, nullable = hints[f.name], False
            if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
                args = [a for a in typing.get_args(t) if a is not type(None)]
                t, nullable = args[0], len(args) < len(typing.get_args(t))
            fields.append(pa.field(f.name, _arrow_type(t), nullable=nullable))
        return cls(name, pa.schema(fields), partition_by, key_column, description, row_id)

    @property
    def file_columns(self) -> list[str]:
        """Columns stored inside the Parquet files (everything except partition columns)."""
        return [n for n in self.schema.names if n not in self.partition_by]

    def prefix(self) -> str:
        return f"{TABLES_PREFIX}/{self.name}"


TABLES: dict[str, TableSpec] = {}


def register_table(spec: TableSpec) -> TableSpec:
    """Add ``spec`` to TABLES; re-registering an identical spec is a no-op."""
    existing = TABLES.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"table {spec.name!r} is already registered with a different spec")
    TABLES[spec.name] = spec
    return spec


def get_table(table: str | TableSpec) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; registered: {sorted(TABLES)}") from None


def check_partition_value(value: Any, what: str = "partition value") -> str:
    """Return ``value`` if it is a non-empty string of [A-Za-z0-9_.-], else ValueError."""
    if not isinstance(value, str) or not _SAFE_VALUE.match(value) or value in (".", ".."):
        raise ValueError(f"{what} {value!r} must be a non-empty string of [A-Za-z0-9_.-]")
    return value


def partition_prefix(spec: TableSpec | str, values: Mapping[str, str]) -> str:
    """Key prefix ``tables/<t>/<p1>=<v1>/...`` for the leading partition columns in ``values``."""
    spec = get_table(spec)
    parts = [spec.prefix()]
    for col in spec.partition_by:
        if col not in values:
            break
        parts.append(f"{col}={check_partition_value(values[col], f'{spec.name}.{col}')}")
    return "/".join(parts)


def part_path(spec: TableSpec | str, values: Mapping[str, str], part_key: str) -> str:
    """Relative key of one part file."""
    spec = get_table(spec)
    missing = [c for c in spec.partition_by if c not in values]
    if missing:
        raise ValueError(f"table {spec.name!r}: missing partition values for {missing}")
    check_partition_value(part_key, "part_key")
    return f"{partition_prefix(spec, values)}/part-{part_key}.parquet"


# -- schema conformance ---------------------------------------------------------------------


def _python_column(spec: TableSpec, field: pa.Field, values: list[Any]) -> pa.Array:
    where = f"table {spec.name!r} column {field.name!r}"
    t = field.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        for v in values:
            if isinstance(v, bool):
                raise ValueError(f"{where}: expected {t}, got bool {v!r}")
            if pa.types.is_integer(t) and isinstance(v, float) and not v.is_integer():
                raise ValueError(f"{where}: expected {t}, got non-integral float {v!r}")
    if pa.types.is_timestamp(t):
        values = [dt.datetime.fromisoformat(v) if isinstance(v, str) else v for v in values]
    try:
        return pa.array(values, type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{where}: cannot convert values to {t}: {exc}") from exc


def castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """True when a reader may cast ``src`` to ``dst`` (same kind: strings, numbers, booleans,
    timestamps; dictionaries by value type; nulls to anything)."""
    if src == dst or pa.types.is_null(src):
        return True
    num = pa.types.is_integer, pa.types.is_floating
    for group in (
        (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view),
        num,
        (pa.types.is_boolean,),
        (pa.types.is_timestamp,),
    ):
        if any(f(dst) for f in group) and any(f(src) for f in group):
            return True
    if pa.types.is_dictionary(src):
        return castable(src.value_type, dst)
    lists = (pa.types.is_list, pa.types.is_large_list)
    if any(f(dst) for f in lists) and any(f(src) for f in lists):
        return castable(src.value_type, dst.value_type)
    return False


def _arrow_column(spec: TableSpec, field: pa.Field, col: pa.ChunkedArray) -> pa.ChunkedArray:
    where = f"table {spec.name!r} column {field.name!r}"
    if not castable(col.type, field.type):
        raise ValueError(f"{where}: expected {field.type}, got {col.type}")
    try:
        return col.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{where}: cannot cast {col.type} to {field.type}: {exc}") from exc


def conform(spec: TableSpec | str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> pa.Table:
    """Validate ``rows`` against the spec and return a table with exactly its schema."""
    spec = get_table(spec)
    names = set(spec.schema.names)
    arrays: list[pa.Array | pa.ChunkedArray] = []
    if isinstance(rows, pa.Table):
        extra = [c for c in rows.column_names if c not in names]
        if extra:
            raise ValueError(f"table {spec.name!r}: unknown columns {extra}")
        n = rows.num_rows
        for field in spec.schema:
            if field.name in rows.column_names:
                arrays.append(_arrow_column(spec, field, rows.column(field.name)))
            elif field.nullable:
                arrays.append(pa.nulls(n, type=field.type))
            else:
                raise ValueError(f"table {spec.name!r}: missing required column {field.name!r}")
    else:
        rows = list(rows)
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"table {spec.name!r}: row {i} is not a mapping")
            extra = [c for c in row if c not in names]
            if extra:
                raise ValueError(f"table {spec.name!r}: row {i} has unknown columns {extra}")
        n = len(rows)
        for field in spec.schema:
            if not field.nullable:
                for i, row in enumerate(rows):
                    if field.name not in row:
                        raise ValueError(
                            f"table {spec.name!r}: row {i} is missing required column "
                            f"{field.name!r}"
                        )
            arrays.append(_python_column(spec, field, [row.get(field.name) for row in rows]))
    for field, arr in zip(spec.schema, arrays, strict=True):
        if not field.nullable and arr.null_count:
            raise ValueError(
                f"table {spec.name!r}: column {field.name!r} is required but has "
                f"{arr.null_count} null value(s)"
            )
    table = pa.Table.from_arrays(arrays, schema=spec.schema)
    assert table.num_rows == n
    return table


# -- writing --------------------------------------------------------------------------------


def serialize_parquet(table: pa.Table) -> bytes:
    """Deterministic zstd Parquet bytes for ``table``."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def to_arrow(spec: TableSpec | str, rows: Iterable[Any] | pa.Table) -> pa.Table:
    """Rows (dataclass instances, mappings or an Arrow table) as a table with the spec's schema.

    Dataclass rows are typed by construction and go through ``pa.Table.from_pylist`` in one
    call (a value that does not fit, e.g. a label id past int16, is then re-checked column by
    column for the error); mappings and Arrow tables are checked column by column (ValueError
    naming the column). Either way required columns may not be null.
    """
    spec = get_table(spec)
    if isinstance(rows, pa.Table):
        return conform(spec, rows)
    rows = list(rows)
    if rows and all(dataclasses.is_dataclass(r) for r in rows):
        dicts = [dataclasses.asdict(r) for r in rows]
        names = set(spec.schema.names)
        if any(d.keys() != names for d in dicts):
            return conform(spec, dicts)
        try:
            table = pa.Table.from_pylist(dicts, schema=spec.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            return conform(spec, dicts)  # the same failure, with the column's name
        for field in spec.schema:
            if not field.nullable and table.column(field.name).null_count:
                raise ValueError(f"table {spec.name!r}: column {field.name!r} is required but "
                                 f"has {table.column(field.name).null_count} null value(s)")
        return table
    return conform(spec, rows)


def write_part(
    storage: Storage,
    table: str,
    rows: Iterable[Any] | pa.Table,
    part_key: str,
) -> str:
    """Write rows (one partition) to ``tables/<table>/<p>=<v>/.../part-<part_key>.parquet``.

    Rows are validated and cast to the table schema (ValueError naming the column otherwise);
    partition columns live only in the path. Replaces an existing part atomically; returns the
    file URI.
    """
    spec = get_table(table)
    check_partition_value(part_key, "part_key")
    data = to_arrow(spec, rows)
    if data.num_rows == 0:
        raise ValueError(f"table {spec.name!r}: refusing to write an empty part")
    values: dict[str, str] = {}
    for col in spec.partition_by:
        distinct = data.column(col).unique().to_pylist()
        if len(distinct) != 1:
            raise ValueError(
                f"table {spec.name!r}: rows of one part must share partition column {col!r}, "
                f"got {sorted(map(str, distinct))}"
            )
        values[col] = check_partition_value(distinct[0], f"{spec.name}.{col}")
    key = part_path(spec, values, part_key)
    body = data.select(spec.file_columns)
    return storage.write_bytes(key, serialize_parquet(body))


# -- reading --------------------------------------------------------------------------------


def _check_filters(spec: TableSpec, filters: Mapping[str, str] | None) -> dict[str, str]:
    filters = dict(filters or {})
    for col, value in filters.items():
        if col not in spec.partition_by:
            raise ValueError(
                f"table {spec.name!r}: filters apply to partition columns {spec.partition_by} "
                f"only, got {col!r}"
            )
        check_partition_value(value, f"filter {spec.name}.{col}")
    return filters


def _parse_partitions(spec: TableSpec, key: str) -> dict[str, str] | None:
    """Partition values of a part key, or None when the key is not laid out like the spec."""
    dirs = key.split("/")[2:-1]
    if len(dirs) != len(spec.partition_by):
        return None
    values = {}
    for col, part in zip(spec.partition_by, dirs, strict=True):
        name, sep, value = part.partition("=")
        if not sep or name != col:
            return None
        values[col] = value
    return values


def list_parts(
    storage: Storage, table: str, filters: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, str]]]:
    """Sorted (key, partition values) of the table's part files matching ``filters``.

    Only the directory of the leading filtered partition columns is listed. Files laid out
    otherwise (not ``<col>=<value>/`` per partition column) are not parts and are skipped.
    """
    spec = get_table(table)
    filters = _check_filters(spec, filters)
    out = []
    for key in storage.list(partition_prefix(spec, filters), suffix=".parquet"):
        values = _parse_partitions(spec, key)
        if values is not None and all(values[c] == v for c, v in filters.items()):
            out.append((key, values))
    return out


def _partitioning(spec: TableSpec) -> ds.Partitioning:
    return ds.partitioning(pa.schema([spec.schema.field(c) for c in spec.partition_by]),
                           flavor="hive")


def dataset(storage: Storage, table: str, filters: Mapping[str, str] | None = None
            ) -> ds.Dataset:
    """The table's parts as one ``pyarrow.dataset`` with the spec schema (partition columns
    from the hive paths, columns a file lacks read as null). Opening lists files only; a
    damaged file fails when scanned, with its path in the error."""
    spec = get_table(table)
    paths = [storage.path(k) for k, _ in list_parts(storage, spec.name, filters)]
    return ds.dataset(paths, schema=spec.schema, format="parquet", filesystem=storage.fs,
                      partitioning=_partitioning(spec),
                      partition_base_dir=storage.path(spec.prefix()))


def read_table(
    storage: Storage,
    table: str,
    filters: Mapping[str, str] | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """All parts as one table with the spec schema (partition columns restored from paths).

    ``filters`` are equalities on partition columns; ``columns`` selects columns (in the given
    order). No parts gives an empty table with the schema. A damaged part raises
    StorageError naming it (``prompt-transfer verify`` lists them all).
    """
    spec = get_table(table)
    cols = list(spec.schema.names if columns is None else columns)
    unknown = [c for c in cols if c not in spec.schema.names]
    if unknown:
        raise ValueError(f"table {spec.name!r}: unknown columns {unknown}")
    try:
        return dataset(storage, spec.name, filters).to_table(columns=cols)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise StorageError(f"table {spec.name!r} under {storage.root} has an unreadable "
                           f"part: {exc} (run `prompt-transfer verify`)") from exc


def read_part(storage: Storage, table: str, key: str) -> pa.Table:
    """One part file (by its storage key) with the spec schema; StorageError when it is
    missing or damaged (0 bytes, truncated, not Parquet, wrong columns)."""
    spec = get_table(table)
    values = _parse_partitions(spec, key)
    if values is None:
        raise StorageError(f"{storage.uri(key)} is not a part of table {spec.name!r}")
    data = storage.read_bytes(key)
    try:
        body = pq.read_table(pa.BufferReader(data))
        body = _with_partitions(spec, body, values)  # partition columns from the path
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OSError) as exc:
        raise StorageError(f"damaged part {storage.uri(key)}: {exc}") from exc
    return body


def _with_partitions(spec: TableSpec, body: pa.Table, values: dict[str, str]) -> pa.Table:
    for col in spec.partition_by:
        if col in body.column_names:
            body = body.drop_columns(col)
        body = body.append_column(col, pa.array([values[col]] * body.num_rows, STRING))
    return conform(spec, body)


def read_parts(storage: Storage, table: str, filters: Mapping[str, str]
               ) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Every readable part of one partition, and (key, problem) of each damaged part.

    For a unit deciding what is left to do: it reads only its own partition directory, and a
    damaged part counts as absent (its rows are recomputed) instead of failing the run.
    """
    spec = get_table(table)
    parts, damaged = [], []
    for key, _ in list_parts(storage, spec.name, filters):
        try:
            parts.append(read_part(storage, spec.name, key))
        except StorageError as exc:
            damaged.append((key, str(exc)))
    return (pa.concat_tables(parts) if parts else spec.schema.empty_table()), damaged


def existing_keys(
    storage: Storage, table: str, filters: Mapping[str, str] | None = None
) -> set[str]:
    """Distinct non-null values of the table's key column."""
    spec = get_table(table)
    if spec.key_column is None:
        raise ValueError(f"table {spec.name!r} has no key column")
    col = read_table(storage, spec.name, filters, columns=[spec.key_column]).column(0)
    return {v for v in col.to_pylist() if v is not None}


# -- DuckDB ---------------------------------------------------------------------------------


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Ready views over the base tables. A study's *current* cells are those its latest completed
# run covered (``run_keys``): changing a configuration and rerunning makes the new cells
# current without deleting the old ones, and duplicates of a key (a unit recomputed after
# damage) collapse to the newest row.
VIEWS: dict[str, str] = {
    "latest_runs": """
        select * from runs where status = 'completed'
        qualify row_number() over (partition by study order by finished_at desc, run_id) = 1""",
    "current_cross_task": """
        select c.* from cross_task c
        join run_keys k on k.table_name = 'cross_task' and k.key = c.cell_key
            and k.study = c.study and k.model = c.model
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by c.study, c.model, c.cell_key, c.metric
                                   order by c.created_at desc) = 1""",
    "current_cross_task_predictions": """
        select p.* from cross_task_predictions p
        join run_keys k on k.table_name = 'cross_task' and k.key = p.cell_key
            and k.study = p.study and k.model = p.model
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by p.study, p.model, p.cell_key
                                   order by p.created_at desc) = 1""",
    "current_prompts": """
        select p.* from prompts p
        join run_keys k on k.table_name = 'prompts' and k.key = p.prompt_key
            and k.study = p.study and k.model = p.model
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by p.study, p.model, p.prompt_key
                                   order by p.created_at desc) = 1""",
}
# the later stages' tables: (view, table, its model column, its key column, partition of a row)
for _view, _table, _model, _key, _part in (
    ("current_projectors", "projectors", "target_model", "projector_key", "t.projector_key"),
    ("current_cross_model", "cross_model", "target_model", "cell_key", "t.cell_key, t.metric"),
    ("current_tpt", "tpt", "model", "tpt_key", "t.tpt_key"),
    ("current_tpt_rankings", "tpt_rankings", "model", "rank_key",
     "t.rank_key, t.seed, t.source_prompt_key"),
    ("current_indicators", "indicators", "model", "pair_key", "t.pair_key, t.indicator"),
    ("current_ablations", "ablations", "model", "ablation_key", "t.ablation_key, t.fraction"),
    ("current_correlations", "correlations", "model", "correlation_key",
     "t.correlation_key, t.scope, t.indicator, t.measure, t.method"),
    ("current_recommendations", "recommendations", "model", "recommend_key",
     "t.recommend_key, t.seed, t.target_task, t.method, t.source_prompt_key"),
):
    VIEWS[_view] = f"""
        select t.* from {_table} t
        join run_keys k on k.table_name = '{_table}' and k.key = t.{_key}
            and k.study = t.study and k.model = t.{_model}
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by t.study, t.{_model}, {_part}
                                   order by t.created_at desc) = 1"""
VIEW_TABLES = {"latest_runs": {"runs"}, "current_cross_task": {"cross_task"},
               "current_cross_task_predictions": {"cross_task_predictions"},
               "current_prompts": {"prompts"}, "current_projectors": {"projectors"},
               "current_cross_model": {"cross_model"}, "current_tpt": {"tpt"},
               "current_tpt_rankings": {"tpt_rankings"},
               "current_indicators": {"indicators"}, "current_ablations": {"ablations"},
               "current_correlations": {"correlations"},
               "current_recommendations": {"recommendations"}}


def duckdb_connect(
    storage: Storage, tables: Iterable[str] | None = None
) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per table (hive partition columns are VARCHAR), plus the
    ready views in ``VIEWS`` when all their tables are present.

    Each table is a ``pyarrow.dataset`` of its part files (listed now, read when queried): a
    damaged part fails only the queries that read its table, with the file's path.
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
        for view, sql in VIEWS.items():
            if VIEW_TABLES[view] <= set(names):
                con.execute(f"CREATE VIEW {_ident(view)} AS {sql}")
    return con


# -- table registry -------------------------------------------------------------------------
# One dataclass per table row; the schema is derived from it (see TableSpec.from_row).


@dataclass
class RunRow:
    """One study run: its status, configuration and how much work it did vs reused."""

    run_id: str
    study: str
    flow_run_id: str | None
    status: str  # completed | failed
    started_at: dt.datetime
    finished_at: dt.datetime
    storage: str
    study_config: str  # the StudyConfig as JSON
    n_prompts_trained: int
    n_prompts_cached: int
    n_cells_evaluated: int
    n_cells_cached: int
    prefect_version: str
    package_version: str
    # JSON list of {"unit": "train minilm/sst2 seed=0", "stage": "train", "model": ...,
    # "error": "..."}: the units that failed in this run (empty list when none)
    failures: str | None = None
    # JSON {stage: {"computed": n, "stored": m}} of the stages after the cross-task matrix
    # (project, cross_model, tpt; indicators (prompt pairs), ablate, probe, correlate,
    # recommend); "{}" when the study has none
    stage_counts: str | None = None


@dataclass
class PromptRow:
    """One trained soft prompt (model x NLP task x seed x training config)."""

    prompt_key: str
    config_key: str  # model identity + training config (content hashes, never paths)
    model: str
    model_id: str
    backbone_kind: str
    hidden_size: int
    task: str
    task_type: str
    task_fingerprint: str
    seed: int
    n_tokens: int
    init: str
    init_prompt_sha: str | None
    steps: int
    lr: float
    batch_size: int
    best_step: int
    dev_accuracy: float
    dev_macro_f1: float
    train_seconds: float
    prompt_uri: str
    study: str
    run_id: str  # the run that trained it
    created_at: dt.datetime


@dataclass
class CurveRow:
    """Training loss at one step (and dev metrics where evaluated) of one prompt."""

    prompt_key: str
    model: str
    task: str
    seed: int
    step: int
    train_loss: float | None
    dev_accuracy: float | None
    dev_macro_f1: float | None
    elapsed_s: float
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class CellRow:
    """One cell of the cross-task matrix: a source prompt (or the random / no-prompt
    baseline) scored on a target task; ``relative_score`` = score / the score of the target's
    own prompt (``target_prompt_key``) of the same seed and metric."""

    cell_key: str
    config_key: str  # model identity + training config + evaluation config
    model: str
    source_task: str | None
    source_kind: str  # prompt | random | none
    source_prompt_key: str | None
    source_task_type: str | None
    target_task: str
    target_task_type: str
    target_prompt_key: str
    same_type: bool | None
    metric: str  # accuracy | macro_f1
    score: float
    relative_score: float | None
    n_examples: int
    seed: int
    eval_split: str
    study: str
    run_id: str
    created_at: dt.datetime
    # 95% percentile bootstrap over the target's test examples (None in rows written before)
    score_low: float | None = None
    score_high: float | None = None
    # (score - no-prompt score) / (own score - no-prompt score), same seed and metric; None
    # when the target's own prompt does not clearly beat no prompt: the no-prompt score is not
    # below the own score's 95% interval (prompt_core.analysis.transfer_gain)
    transfer_gain: float | None = None


@dataclass
class PredictionRow:
    """The per-example predictions behind one ``cross_task`` cell (same ``cell_key``; one row
    for both metrics): ``predicted`` and ``gold`` label ids of every evaluated example, in the
    split's fixed order, so intervals that resample examples (paired across the sources
    scored on a target) can be computed from the tables alone."""

    cell_key: str
    config_key: str
    model: str
    source_kind: str  # prompt | random | none
    source_task: str | None
    source_prompt_key: str | None
    target_task: str
    target_prompt_key: str
    seed: int
    eval_split: str
    n_examples: int
    n_labels: int
    predicted: Int16List
    gold: Int16List
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class ProjectorRow:
    """One trained cross-model projector: source model -> target model, one objective, one
    seed, trained on ``train_tasks`` (JSON list of names); the curve summary is its loss."""

    projector_key: str
    source_model: str
    target_model: str
    objective: str  # distance | task
    seed: int
    train_tasks: str  # JSON list of task names
    source_prompt_keys: str  # JSON list, train_tasks order
    target_prompt_keys: str | None  # JSON list (distance), train_tasks order
    source_hidden: int
    target_hidden: int
    n_tokens: int
    hidden: int
    activation: str
    layer_norm: bool
    steps: int
    lr: float
    n_parameters: int
    initial_loss: float
    final_loss: float
    best_loss: float
    train_seconds: float
    projector_uri: str
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class CrossModelRow:
    """A source model's prompt for ``source_task``, projected into the target model (or as is:
    ``objective`` none), scored zero-shot on ``target_task``; ``relative_score`` = score / the
    target model's own prompt's score (``target_prompt_key``), same seed and metric. The
    interval is a 95% bootstrap over test examples."""

    cell_key: str
    source_model: str
    target_model: str
    objective: str  # distance | task | none (unprojected)
    projector_key: str | None
    source_task: str
    source_task_type: str
    source_prompt_key: str
    target_task: str
    target_task_type: str
    target_prompt_key: str
    held_out: bool  # neither task was among the projector's training tasks
    metric: str
    score: float
    score_low: float
    score_high: float
    relative_score: float | None
    own_score: float | None
    n_examples: int
    seed: int
    eval_split: str
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class TptRow:
    """Transferable prompt tuning of one target prompt from one source, against random init
    with the same budget (``baseline_prompt_key``); dev accuracy throughout. ``steps_to_target``
    is the first evaluated step whose dev accuracy reaches ``fraction`` x the baseline's best
    (None: never); speed-ups are baseline / TPT (None when either never reaches it)."""

    tpt_key: str
    model: str
    target_task: str
    target_task_type: str
    source_kind: str  # task (same model) | model (projected from another model)
    source_model: str
    source_task: str
    source_task_type: str
    source_prompt_key: str
    projector_key: str | None
    tpt_prompt_key: str
    baseline_prompt_key: str
    same_type: bool
    seed: int
    steps: int
    eval_every: int
    fraction: float
    target_score: float  # fraction x baseline_best
    score_at_step: int
    score_at_k: float
    baseline_score_at_k: float
    init_score: float
    baseline_init_score: float
    best_score: float
    baseline_best: float
    steps_to_target: int | None
    seconds_to_target: float | None
    baseline_steps_to_target: int | None
    baseline_seconds_to_target: float | None
    speedup_steps: float | None
    speedup_seconds: float | None
    train_seconds: float
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class TptRankRow:
    """One candidate TPT source prompt scored on the target task's VALIDATION split, beside
    the target's own prompt: how ``tpt.top_k`` ranks sources (model selection never reads a
    test label). ``rank_key`` is shared by every row of one (model, target) ranking unit."""

    rank_key: str
    model: str
    target_task: str
    target_task_type: str
    target_prompt_key: str  # the target's own prompt (the denominator), same seed
    source_task: str
    source_task_type: str
    source_prompt_key: str
    seed: int
    split: str  # validation
    n_examples: int
    score: float  # accuracy of the source prompt on the target's validation examples
    own_score: float  # accuracy of the target's own prompt on the same examples
    relative_score: float | None  # score / own_score (None when own_score is 0)
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class IndicatorRow:
    """One transferability indicator between two prompts of one model (an unordered pair,
    ``prompt_a`` < ``prompt_b`` by key); ``pair_key`` is shared by the pair's indicators."""

    pair_key: str
    model: str
    seed: int
    prompt_a: str
    prompt_b: str
    task_a: str
    task_b: str
    task_type_a: str
    task_type_b: str
    same_type: bool
    indicator: str  # es_<...> (prompt_core.indicators.ES_INDICATORS) | on | on_layers_<i>-<j>
    value: float
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class AblationRow:
    """Neuron masking: a prompt's own-task accuracy with the top ``fraction`` of the FFN
    neurons it activates zeroed, against the same number of random neurons zeroed."""

    ablation_key: str
    model: str
    seed: int
    prompt_key: str
    task: str
    fraction: float
    n_masked: int  # neurons masked, of n_total (all FFN neurons of all layers)
    n_total: int
    metric: str  # accuracy
    split: str
    n_examples: int
    score: float  # accuracy unmasked
    top_masked_score: float
    random_masked_score: float
    top_drop: float  # score - top_masked_score
    random_drop: float
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class CorrelationRow:
    """Rank correlation of one indicator with one transfer measure over the prompt pairs of a
    scope (``all``: every pair of the model pooled, rho descriptive and no p-value;
    ``mean_over_targets``: the mean of the per-target rhos, with a bootstrap interval over
    targets and a within-target permutation p-value; else one target task).
    :func:`prompt_core.correlations.correlate` says how each is computed."""

    correlation_key: str
    model: str
    scope: str
    indicator: str
    measure: str  # relative_score | transfer_gain
    method: str  # spearman | kendall
    rho: float | None
    p_value: float | None  # None for scope all (pooled pairs are not independent)
    n_pairs: int
    low: float | None  # 95% bootstrap interval over targets (scope mean_over_targets only)
    high: float | None
    n_targets: int | None  # targets behind rho (None in rows written before this column)
    p_method: str | None  # scipy | none | permutation_within_target
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class RecommendationRow:
    """One source prompt as ranked for one target task by one method (``probe``: the
    recommender, from the target's train data only; baselines ``same_type``, ``random`` and the
    indicators), with the true transfer score it had in the matrix (evaluation only)."""

    recommend_key: str
    model: str
    seed: int
    target_task: str
    target_task_type: str
    method: str
    source_task: str
    source_task_type: str
    source_prompt_key: str
    score: float  # the method's score (higher = recommended first)
    rank: float  # 1 = first; ties share their mean rank
    true_score: float  # accuracy of the source prompt on the target's test split (matrix)
    true_rank: float
    study: str
    run_id: str
    created_at: dt.datetime


@dataclass
class RunKeyRow:
    """A key (prompt, cell, ...) that a run covered, trained or reused: the run's exact
    membership, behind the ``current_*`` views."""

    run_id: str
    study: str
    model: str
    table_name: str
    key: str
    created_at: dt.datetime


RUNS = register_table(TableSpec.from_row(
    "runs", RunRow, partition_by=("study",), key_column="run_id",
    description="One row per study run (status completed/failed; study_config is JSON)."))

PROMPTS = register_table(TableSpec.from_row(
    "prompts", PromptRow, partition_by=("study", "model"), key_column="prompt_key",
    description="One row per trained soft prompt (model x task x seed)."))

TRAINING_CURVES = register_table(TableSpec.from_row(
    "training_curves", CurveRow, partition_by=("study", "model"), key_column="prompt_key",
    description="Per-step training loss (and dev metrics where evaluated) of each prompt."))

CROSS_TASK = register_table(TableSpec.from_row(
    "cross_task", CellRow, partition_by=("study", "model", "target_task"),
    key_column="cell_key", row_id=("metric",),
    description="Cross-task transfer matrix: score of a source prompt (or random/none "
                "baseline) on a target task; source_kind is prompt|random|none, metric "
                "accuracy|macro_f1. View current_cross_task: the cells of each study's "
                "latest completed run."))

CROSS_TASK_PREDICTIONS = register_table(TableSpec.from_row(
    "cross_task_predictions", PredictionRow, partition_by=("study", "model", "target_task"),
    key_column="cell_key",
    description="Per-example predicted and gold label ids (list<int16>, split order) of each "
                "cross_task cell, one row per cell_key. View current_cross_task_predictions: "
                "those of each study's latest completed run."))

PROJECTORS = register_table(TableSpec.from_row(
    "projectors", ProjectorRow, partition_by=("study", "target_model"),
    key_column="projector_key",
    description="One row per cross-model projector (source -> target model, objective "
                "distance|task, training tasks, loss curve summary)."))

CROSS_MODEL = register_table(TableSpec.from_row(
    "cross_model", CrossModelRow, partition_by=("study", "target_model", "target_task"),
    key_column="cell_key", row_id=("metric",),
    description="Zero-shot score of a projected (or, objective none, unprojected) source "
                "prompt on a target model and task, with a 95% bootstrap interval."))

TPT = register_table(TableSpec.from_row(
    "tpt", TptRow, partition_by=("study", "model", "target_task"), key_column="tpt_key",
    description="Transferable prompt tuning: a target prompt trained from a source prompt vs "
                "random init (same budget): score after k steps, steps/seconds to a fraction "
                "of the baseline's best, best score, speed-up."))

TPT_RANKINGS = register_table(TableSpec.from_row(
    "tpt_rankings", TptRankRow, partition_by=("study", "model", "target_task"),
    key_column="rank_key", row_id=("seed", "source_prompt_key"),
    description="How tpt.top_k chose its sources: each candidate source prompt's accuracy on "
                "the target's validation split, beside the target's own prompt (relative "
                "score). Never the test split."))

INDICATORS = register_table(TableSpec.from_row(
    "indicators", IndicatorRow, partition_by=("study", "model"), key_column="pair_key",
    row_id=("indicator",),
    description="Transferability indicators between two prompts of one model: ES (cosine, "
                "per-token cosine, 1/(1+euclidean) of the prompts) and ON (overlap of the FFN "
                "neurons each activates, all layers and per window of layers)."))

ABLATIONS = register_table(TableSpec.from_row(
    "ablations", AblationRow, partition_by=("study", "model"), key_column="ablation_key",
    row_id=("fraction",),
    description="Neuron masking ablation: own-task accuracy with a prompt's top-k% activated "
                "FFN neurons zeroed vs k% random neurons zeroed."))

CORRELATIONS = register_table(TableSpec.from_row(
    "correlations", CorrelationRow, partition_by=("study", "model"),
    key_column="correlation_key", row_id=("scope", "indicator", "measure", "method"),
    description="Spearman and Kendall correlation of each indicator with relative_score "
                "and transfer_gain per target task (scipy p-value), as the mean over targets "
                "(bootstrap interval over targets, within-target permutation p-value) and "
                "over all pairs of a model pooled (descriptive: no p-value)."))

RECOMMENDATIONS = register_table(TableSpec.from_row(
    "recommendations", RecommendationRow, partition_by=("study", "model"),
    key_column="recommend_key", row_id=("seed", "target_task", "method", "source_prompt_key"),
    description="Leave-one-task-out source rankings: per target task and method (probe, the "
                "recommender; same_type, random, indicators: baselines) each source's score "
                "and rank, with its true transfer score."))

RUN_KEYS = register_table(TableSpec.from_row(
    "run_keys", RunKeyRow, partition_by=("study", "model"), key_column="key",
    description="Which keys (table_name, key) each run covered, trained or reused."))


def run_rows(storage, table: str, study: str, parts: list[tuple[str, list[str]]]
             ) -> pd.DataFrame:
    """Exactly the rows of ``table`` whose key the run covered (``parts``: (model partition
    value, keys)), the newest of a key written twice; an error if any is missing."""
    spec = get_table(table)
    frames = []
    for model, keys in parts:
        if not keys:
            continue
        df = read_table(storage, table, filters={"study": study, spec.partition_by[1]: model}
                        ).to_pandas()
        df = df[df[spec.key_column].isin(set(keys))]
        dedup = [spec.key_column, *spec.row_id]
        df = df.sort_values("created_at").drop_duplicates(dedup, keep="last")
        missing = set(keys) - set(df[spec.key_column])
        if missing:
            raise RuntimeError(f"{len(missing)} key(s) of this run are not in {table} (study "
                               f"{study}, {model}), e.g. {sorted(missing)[:3]}")
        frames.append(df)
    return (pd.concat(frames, ignore_index=True) if frames
            else spec.schema.empty_table().to_pandas())


# -- Athena / Trino DDL ---------------------------------------------------------------------

_ATHENA_TYPES = {STRING: "string", INT64: "bigint", FLOAT64: "double", BOOL: "boolean",
                 TIMESTAMP: "timestamp", pa.int16(): "smallint"}
_TRINO_TYPES = {STRING: "varchar", INT64: "bigint", FLOAT64: "double", BOOL: "boolean",
                TIMESTAMP: "timestamp",  # the connector's precision (milliseconds by default)
                pa.int16(): "smallint"}


def _sql_type(t: pa.DataType, dialect: str) -> str:
    """A column type in Athena (``array<smallint>``) or Trino (``array(smallint)``) DDL."""
    if pa.types.is_list(t):
        inner = _sql_type(t.value_type, dialect)
        return f"array<{inner}>" if dialect == "athena" else f"array({inner})"
    return (_ATHENA_TYPES if dialect == "athena" else _TRINO_TYPES)[t]


def _table_location(spec: TableSpec, location: str) -> str:
    """``<root>/tables/<table>/`` for a storage root URI such as ``s3://bucket/prefix``."""
    if not isinstance(location, str) or "://" not in location or "'" in location:
        raise ValueError(f"location must be a storage root URI such as s3://bucket/prefix "
                         f"(no quotes), got {location!r}")
    return f"{location.rstrip('/')}/{spec.prefix()}/"


def athena_ddl(table: str | TableSpec, location: str) -> str:
    """Athena (Hive DDL) ``CREATE EXTERNAL TABLE`` for a table stored under the root
    ``location`` (``s3://bucket/prefix``): the file columns with their types from the Arrow
    schema, the partition columns as strings in ``PARTITIONED BY``, Parquet at
    ``<location>/tables/<table>/``. Load the partitions with ``MSCK REPAIR TABLE <table>``
    (again after runs add partitions)."""
    spec = get_table(table)
    cols = ",\n".join(f"  `{c}` {_sql_type(spec.schema.field(c).type, 'athena')}"
                      for c in spec.file_columns)
    parts = ", ".join(f"`{c}` string" for c in spec.partition_by)
    return (f"CREATE EXTERNAL TABLE IF NOT EXISTS `{spec.name}` (\n{cols}\n)\n"
            f"PARTITIONED BY ({parts})\n"
            f"STORED AS PARQUET\n"
            f"LOCATION '{_table_location(spec, location)}';")


def trino_ddl(table: str | TableSpec, location: str, schema: str = "hive.prompt_transfer"
              ) -> str:
    """Trino (Hive connector) ``CREATE TABLE`` over the same files as :func:`athena_ddl`:
    partition columns last, ``external_location`` and ``partitioned_by``. Load the partitions
    with ``CALL hive.system.sync_partition_metadata('prompt_transfer', '<table>', 'ADD')``
    (the schema name without the catalog)."""
    spec = get_table(table)
    cols = [c for c in spec.schema.names if c not in spec.partition_by] + list(spec.partition_by)
    body = ",\n".join(f'  "{c}" {_sql_type(spec.schema.field(c).type, "trino")}'
                     for c in cols)
    parts = ", ".join(f"'{c}'" for c in spec.partition_by)
    return (f"CREATE TABLE IF NOT EXISTS {schema}.{spec.name} (\n{body}\n)\n"
            f"WITH (\n  external_location = '{_table_location(spec, location)}',\n"
            f"  format = 'PARQUET',\n  partitioned_by = ARRAY[{parts}]\n);")
