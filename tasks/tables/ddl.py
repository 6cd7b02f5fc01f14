"""Athena (Hive DDL) and Trino ``CREATE TABLE`` statements over the stored Parquet, derived
from the registered specs."""

from __future__ import annotations

import pyarrow as pa

from tasks.tables.schema import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, TableSpec, get_table

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
