"""Result tables: hive-partitioned Parquet under ``<root>/tables/<table>/``, plus DuckDB views."""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.storage import Storage

TABLES_PREFIX = "tables"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

STRING = pa.string()
INT64 = pa.int64()
FLOAT64 = pa.float64()
BOOL = pa.bool_()
TIMESTAMP = pa.timestamp("us", tz="UTC")


def now_utc() -> dt.datetime:
    """Current time as an aware UTC datetime (for ``*_at`` columns)."""
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class TableSpec:
    """Schema (all columns, partition columns included) and layout of one result table."""

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    key_column: str | None
    description: str

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


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
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
        return _castable(src.value_type, dst)
    return False


def _arrow_column(spec: TableSpec, field: pa.Field, col: pa.ChunkedArray) -> pa.ChunkedArray:
    where = f"table {spec.name!r} column {field.name!r}"
    if not _castable(col.type, field.type):
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


def write_part(
    storage: Storage,
    table: str,
    rows: Iterable[Mapping[str, Any]] | pa.Table,
    part_key: str,
) -> str:
    """Write rows (one partition) to ``tables/<table>/<p>=<v>/.../part-<part_key>.parquet``.

    Rows are validated and cast to the table schema (ValueError naming the column otherwise);
    partition columns live only in the path. Replaces an existing part atomically; returns the
    file URI.
    """
    spec = get_table(table)
    check_partition_value(part_key, "part_key")
    data = conform(spec, rows)
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


def _parse_partitions(spec: TableSpec, key: str) -> dict[str, str]:
    dirs = key.split("/")[2:-1]
    if len(dirs) != len(spec.partition_by):
        raise ValueError(f"table {spec.name!r}: unexpected file location {key!r}")
    values = {}
    for col, part in zip(spec.partition_by, dirs, strict=True):
        name, sep, value = part.partition("=")
        if not sep or name != col:
            raise ValueError(
                f"table {spec.name!r}: expected partition directory '{col}=...' in {key!r}"
            )
        values[col] = value
    return values


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


def list_parts(
    storage: Storage, table: str, filters: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, str]]]:
    """Sorted (key, partition values) of the table's part files matching ``filters``."""
    spec = get_table(table)
    filters = _check_filters(spec, filters)
    out = []
    for key in storage.list(partition_prefix(spec, filters), suffix=".parquet"):
        values = _parse_partitions(spec, key)
        if all(values[c] == v for c, v in filters.items()):
            out.append((key, values))
    return out


def _read_one(
    storage: Storage, spec: TableSpec, key: str, values: dict[str, str], columns: list[str]
) -> pa.Table:
    with storage.fs.open(storage.path(key), "rb") as fh:
        pf = pq.ParquetFile(fh)
        present = set(pf.schema_arrow.names)
        wanted = [c for c in columns if c not in spec.partition_by and c in present]
        data = pf.read(columns=wanted)
    n = data.num_rows
    arrays = []
    for name in columns:
        field = spec.schema.field(name)
        if name in spec.partition_by:
            arrays.append(pa.array([values[name]] * n, type=field.type))
        elif name in present:
            arrays.append(_arrow_column(spec, field, data.column(name)))
        elif field.nullable:
            arrays.append(pa.nulls(n, type=field.type))
        else:
            raise ValueError(
                f"table {spec.name!r}: {storage.uri(key)} lacks required column {name!r}"
            )
    return pa.Table.from_arrays(arrays, schema=pa.schema([spec.schema.field(c) for c in columns]))


def read_table(
    storage: Storage,
    table: str,
    filters: Mapping[str, str] | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """All parts as one table with the spec schema (partition columns restored from paths).

    ``filters`` are equalities on partition columns; ``columns`` selects columns (in the given
    order). No parts gives an empty table with the schema.
    """
    spec = get_table(table)
    cols = list(spec.schema.names if columns is None else columns)
    unknown = [c for c in cols if c not in spec.schema.names]
    if unknown:
        raise ValueError(f"table {spec.name!r}: unknown columns {unknown}")
    schema = pa.schema([spec.schema.field(c) for c in cols])
    parts = [
        _read_one(storage, spec, key, values, cols)
        for key, values in list_parts(storage, spec.name, filters)
    ]
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts)


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


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def duckdb_connect(
    storage: Storage, tables: Iterable[str] | None = None
) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per table (hive partition columns are VARCHAR).

    Tables with no files at connect time become empty views with the schema's column types.
    """
    names = list(TABLES if tables is None else tables)
    specs = [get_table(n) for n in names]
    con = duckdb.connect(":memory:")
    if not storage.is_local:
        con.register_filesystem(storage.fs)
    for spec in specs:
        select = ", ".join(_ident(c) for c in spec.schema.names)
        if storage.list(spec.prefix(), suffix=".parquet"):
            glob = storage.uri(spec.prefix()) + "/**/*.parquet"
            source = (
                f"read_parquet({_sql_str(glob)}, hive_partitioning = true, "
                "union_by_name = true, hive_types_autocast = false)"
            )
        else:
            source = _ident(f"__empty_{spec.name}")
            con.register(f"__empty_{spec.name}", spec.schema.empty_table())
        con.execute(f"CREATE VIEW {_ident(spec.name)} AS SELECT {select} FROM {source}")
    return con


# -- table registry -------------------------------------------------------------------------


def _f(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


RUNS = register_table(
    TableSpec(
        name="runs",
        schema=pa.schema(
            [
                _f("run_id", STRING),
                _f("study", STRING),
                _f("flow_run_id", STRING, nullable=True),
                _f("status", STRING),
                _f("started_at", TIMESTAMP),
                _f("finished_at", TIMESTAMP),
                _f("storage", STRING),
                _f("study_config", STRING),
                _f("n_prompts_trained", INT64),
                _f("n_prompts_cached", INT64),
                _f("n_cells_evaluated", INT64),
                _f("n_cells_cached", INT64),
                _f("prefect_version", STRING),
                _f("package_version", STRING),
            ]
        ),
        partition_by=("study",),
        key_column="run_id",
        description="One row per study run (status completed/failed; study_config is JSON).",
    )
)

PROMPTS = register_table(
    TableSpec(
        name="prompts",
        schema=pa.schema(
            [
                _f("prompt_key", STRING),
                _f("model", STRING),
                _f("model_id", STRING),
                _f("backbone_kind", STRING),
                _f("task", STRING),
                _f("task_type", STRING),
                _f("task_fingerprint", STRING),
                _f("seed", INT64),
                _f("n_tokens", INT64),
                _f("init", STRING),
                _f("steps", INT64),
                _f("lr", FLOAT64),
                _f("batch_size", INT64),
                _f("best_step", INT64),
                _f("dev_accuracy", FLOAT64),
                _f("dev_macro_f1", FLOAT64),
                _f("train_seconds", FLOAT64),
                _f("prompt_uri", STRING),
                _f("config_hash", STRING),
                _f("study", STRING),
                _f("run_id", STRING),
                _f("created_at", TIMESTAMP),
            ]
        ),
        partition_by=("study", "model"),
        key_column="prompt_key",
        description="One row per trained soft prompt (model x task x seed).",
    )
)

TRAINING_CURVES = register_table(
    TableSpec(
        name="training_curves",
        schema=pa.schema(
            [
                _f("prompt_key", STRING),
                _f("model", STRING),
                _f("task", STRING),
                _f("seed", INT64),
                _f("step", INT64),
                _f("train_loss", FLOAT64, nullable=True),
                _f("dev_accuracy", FLOAT64, nullable=True),
                _f("dev_macro_f1", FLOAT64, nullable=True),
                _f("elapsed_s", FLOAT64),
                _f("study", STRING),
                _f("run_id", STRING),
                _f("created_at", TIMESTAMP),
            ]
        ),
        partition_by=("study", "model"),
        key_column="prompt_key",
        description="Per-step training loss (and dev metrics where evaluated) of each prompt.",
    )
)

CROSS_TASK = register_table(
    TableSpec(
        name="cross_task",
        schema=pa.schema(
            [
                _f("cell_key", STRING),
                _f("model", STRING),
                _f("source_task", STRING, nullable=True),
                _f("source_kind", STRING),
                _f("source_prompt_key", STRING, nullable=True),
                _f("source_task_type", STRING, nullable=True),
                _f("target_task", STRING),
                _f("target_task_type", STRING),
                _f("same_type", BOOL, nullable=True),
                _f("metric", STRING),
                _f("score", FLOAT64),
                _f("relative_score", FLOAT64, nullable=True),
                _f("n_examples", INT64),
                _f("seed", INT64),
                _f("eval_split", STRING),
                _f("study", STRING),
                _f("run_id", STRING),
                _f("created_at", TIMESTAMP),
            ]
        ),
        partition_by=("study", "model"),
        key_column="cell_key",
        description=(
            "Cross-task transfer matrix: score of a source prompt (or random/none baseline) "
            "on a target task; source_kind is prompt|random|none, metric accuracy|macro_f1."
        ),
    )
)
