"""Table specs and the registry: a row dataclass's Arrow schema, a table's layout (partition,
key, row id, model column, ``current_<table>`` view), and rows checked against the schema."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import pyarrow as pa

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
    """Schema (all columns, partition columns included) and layout of one result table.

    Everything about a table beyond its row type is here, and everything else (the
    ``current_<table>`` views, which tables ``run_keys`` covers, the Athena/Trino DDL) is
    derived from the registered specs:

    - ``key_column``: one unit of work's key (a part is named by it);
    - ``row_id``: the columns that, with the key, tell one row from another;
    - ``model_column``: the column naming the model a row belongs to (``model``,
      ``target_model``), as ``run_keys.model`` names it;
    - ``current_view``: the table gets a view ``current_<table>``: the rows whose key the
      latest completed run of their study covered (``run_keys``), the newest row of each
      (study, model, key, row id);
    - ``run_keys_table``: the ``run_keys.table_name`` its keys are recorded under when not its
      own name (``cross_task_predictions`` shares ``cross_task``'s cell keys).
    """

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    key_column: str | None
    description: str
    row_id: tuple[str, ...] = ()  # columns that, with the key, tell one row from another
    model_column: str | None = None
    current_view: bool = False
    run_keys_table: str | None = None

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
        for what, col in (("key", self.key_column), ("model", self.model_column)):
            if col is not None and col not in names:
                raise ValueError(f"table {self.name!r}: {what} column {col!r} not in schema")
        for col in self.row_id:
            if col not in names:
                raise ValueError(f"table {self.name!r}: row id column {col!r} not in schema")
        if self.run_keys_table is not None and not _SAFE_NAME.match(self.run_keys_table):
            raise ValueError(f"table {self.name!r}: run_keys_table {self.run_keys_table!r} "
                             f"must match {_SAFE_NAME.pattern}")
        if self.current_view:
            needs = {"a key column": self.key_column, "a model column": self.model_column}
            for what, col in needs.items():
                if col is None:
                    raise ValueError(f"table {self.name!r}: a current view needs {what}")
            for col in ("study", "created_at"):
                if col not in names:
                    raise ValueError(f"table {self.name!r}: a current view needs column {col!r}")

    @classmethod
    def from_row(cls, name: str, row: type, partition_by: tuple[str, ...],
                 key_column: str | None, description: str, row_id: tuple[str, ...] = (),
                 model_column: str | None = None, current_view: bool = False,
                 run_keys_table: str | None = None) -> TableSpec:
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
        return cls(name, pa.schema(fields), partition_by, key_column, description, row_id,
                   model_column, current_view, run_keys_table)

    @property
    def file_columns(self) -> list[str]:
        """Columns stored inside the Parquet files (everything except partition columns)."""
        return [n for n in self.schema.names if n not in self.partition_by]

    @property
    def run_keys_name(self) -> str:
        """The ``run_keys.table_name`` this table's keys are recorded under."""
        return self.run_keys_table or self.name

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


@contextlib.contextmanager
def registered(spec: TableSpec) -> Iterator[TableSpec]:
    """``spec`` registered for the duration of the block (tests, scratch tables), then
    removed again unless it was registered before."""
    was = spec.name in TABLES
    register_table(spec)
    try:
        yield spec
    finally:
        if not was:
            TABLES.pop(spec.name, None)


def get_table(table: str | TableSpec) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; registered: {sorted(TABLES)}") from None


def tables_with_run_keys() -> list[str]:
    """The tables a run's ``run_keys`` rows name (``table_name``), in registry order: those
    with a ``current_<table>`` view that record their own keys (a table sharing another's
    keys, such as ``cross_task_predictions``, is covered through that one)."""
    return [s.name for s in TABLES.values() if s.current_view and s.run_keys_name == s.name]


def check_partition_value(value: Any, what: str = "partition value") -> str:
    """Return ``value`` if it is a non-empty string of [A-Za-z0-9_.-], else ValueError."""
    if not isinstance(value, str) or not _SAFE_VALUE.match(value) or value in (".", ".."):
        raise ValueError(f"{what} {value!r} must be a non-empty string of [A-Za-z0-9_.-]")
    return value


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
