"""Parquet I/O: one part file per unit of work under
``<root>/tables/<table>/<p1>=<v1>/.../part-<key>.parquet`` (hive layout, partition columns only
in the path), read back as one table, one partition or one part."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.storage import Storage, StorageError
from tasks.tables.schema import (
    STRING,
    TableSpec,
    check_partition_value,
    conform,
    get_table,
    to_arrow,
)


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



# -- writing ---------------------------------------------------------------------------------


def serialize_parquet(table: pa.Table) -> bytes:
    """Deterministic zstd Parquet bytes for ``table``."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


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


# -- reading ---------------------------------------------------------------------------------


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


def run_rows(storage, table: str, study: str, parts: list[tuple[str, list[str]]]
             ) -> pd.DataFrame:
    """Exactly the rows of ``table`` whose key the run covered (``parts``: (model partition
    value, keys)), the newest of a key written twice; an error if any is missing."""
    spec = get_table(table)
    if spec.key_column is None or spec.model_column not in spec.partition_by:
        raise ValueError(f"table {spec.name!r}: run_rows needs a key column and a model "
                         f"partition column")
    frames = []
    for model, keys in parts:
        if not keys:
            continue
        df = read_table(storage, table, filters={"study": study, spec.model_column: model}
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


def read_partition(storage: Storage, table: str, filters: Mapping[str, str], columns: list[str],
                   problems: list[str]) -> pa.Table:
    """Rows of one partition (``columns`` only) for planning: a damaged part counts as absent
    (what it held is planned again; the unit that recomputes it quarantines the part) and is
    listed in ``problems``. Writes nothing."""
    try:
        return read_table(storage, table, filters, columns=columns)
    except StorageError:
        pass
    parts = []
    for key, _ in list_parts(storage, table, filters):
        try:
            parts.append(read_part(storage, table, key).select(columns))
        except StorageError as exc:
            problems.append(f"{exc} (counted as absent; `prompt-transfer verify` lists it)")
    if parts:
        return pa.concat_tables(parts)
    return get_table(table).schema.empty_table().select(columns)


def stored_rows(storage: Storage, table: str, where: Mapping[str, str], row_cls: type,
                problems: list[str]) -> list[Any]:
    """Every readable row of one partition as ``row_cls`` records (``where``: its partition
    values, which the rows carry too)."""
    import dataclasses

    cols = [f.name for f in dataclasses.fields(row_cls) if f.name not in where]
    rows = read_partition(storage, table, dict(where), cols, problems).to_pylist()
    return [row_cls(**{**r, **where}) for r in rows]
