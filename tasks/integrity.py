"""Integrity of a storage root: find damaged files and move them aside.

:func:`verify_root` checks every file the pipeline reads back:

* ``tables/<table>/<p>=<v>/.../*.parquet``: footer, schema and rows readable with pyarrow,
  the location matches the table's partition columns, and the file's columns match the
  registered spec (``tasks.tables.TABLES``): required columns present and non-null, types of
  the same kind and castable to the spec's types;
* ``prompts/**/*.safetensors``: loads with ``prompt_from_bytes``, and its ``.json`` metadata
  sidecar exists and holds a JSON object;
* anywhere: no leftover temporary file of an interrupted write (``.<name>.<id>.tmp``).

Nothing under ``_quarantine/`` is checked. :func:`quarantine` moves a damaged file (a prompt
together with its sidecar) to ``_quarantine/<original key>``: copied, read back, then deleted,
so no byte is lost. Run both while no run writes to the root: a write in flight shows up as a
temporary file. Storage failures (unreachable endpoint, denied access) raise StorageError; they
are not damage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from prompt_core.prompts import prompt_from_bytes
from tasks.storage import Storage, StorageError, is_temp_name
from tasks.tables import TABLES, TABLES_PREFIX, TableSpec, castable, check_partition_value

QUARANTINE_PREFIX = "_quarantine"
PROMPTS_PREFIX = "prompts"
PROMPT_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
_MAX_COPIES = 100  # _quarantine/<key>, <key>.1, ... <key>.99 before giving up


@dataclass(frozen=True)
class Damage:
    """One damaged file: relative ``key``, full ``uri``, ``kind`` and a readable ``problem``.

    kind: ``unreadable`` (cannot be opened or parsed), ``schema`` (columns or types differ from
    the table spec), ``location`` (not where its table's partitioning puts it), ``sidecar``
    (a prompt's ``.json`` metadata missing or invalid), ``temp`` (leftover temporary file).
    """

    key: str
    uri: str
    kind: str
    problem: str

    def __str__(self) -> str:
        return f"{self.uri}: {self.kind}: {self.problem}"


def _damage(storage: Storage, key: str, kind: str, problem: str) -> Damage:
    return Damage(key=key, uri=storage.uri(key), kind=kind, problem=problem)


# -- Parquet parts --------------------------------------------------------------------------


def _location_problem(spec: TableSpec, key: str) -> str | None:
    dirs = key.split("/")[2:-1]
    expected = "/".join(f"{col}=<value>" for col in spec.partition_by)
    if len(dirs) != len(spec.partition_by):
        return f"expected {spec.prefix()}/{expected}/<file>.parquet"
    for col, part in zip(spec.partition_by, dirs, strict=True):
        name, sep, value = part.partition("=")
        if not sep or name != col:
            return f"expected partition directory '{col}=...', found {part!r}"
        try:
            check_partition_value(value, f"{spec.name}.{col}")
        except ValueError as exc:
            return str(exc)
    return None


def _schema_problem(spec: TableSpec, data: pa.Table) -> str | None:
    """First way the file's columns differ from the spec (extra columns are ignored)."""
    for name in spec.file_columns:
        field = spec.schema.field(name)
        if name not in data.column_names:
            if field.nullable:
                continue
            return f"lacks required column {name!r} of table {spec.name!r}"
        col = data.column(name)
        if not castable(col.type, field.type):
            return f"column {name!r} is {col.type}, table {spec.name!r} expects {field.type}"
        try:
            col.cast(field.type, safe=True)
        except (pa.ArrowException, ValueError) as exc:
            return f"column {name!r}: cannot cast {col.type} to {field.type}: {exc}"
        if not field.nullable and col.null_count:
            return f"required column {name!r} has {col.null_count} null value(s)"
    return None


def check_part(storage: Storage, key: str) -> Damage | None:
    """Damage of one Parquet part under ``tables/``, or None when it is complete and valid.

    A part of a table that is not registered is only checked for readability.
    """
    data = storage.read_bytes(key)
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        return _damage(storage, key, "unreadable", f"not a readable Parquet file ({exc})")
    spec = TABLES.get(key.split("/")[1]) if key.count("/") >= 2 else None
    if spec is None:
        return None
    problem = _location_problem(spec, key)
    if problem:
        return _damage(storage, key, "location", problem)
    problem = _schema_problem(spec, table)
    if problem:
        return _damage(storage, key, "schema", problem)
    return None


# -- prompts --------------------------------------------------------------------------------


def sidecar_key(prompt_key: str) -> str:
    """Key of the ``.json`` metadata written beside ``<stem>.safetensors``."""
    return prompt_key.removesuffix(PROMPT_SUFFIX) + SIDECAR_SUFFIX


def check_prompt(storage: Storage, key: str) -> Damage | None:
    """Damage of one stored prompt (``.safetensors`` + ``.json`` sidecar), or None."""
    try:
        prompt_from_bytes(storage.read_bytes(key), where="prompt file")
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load is damage
        return _damage(storage, key, "unreadable", str(exc))
    meta_key = sidecar_key(key)
    if not storage.exists(meta_key):
        return _damage(storage, key, "sidecar", f"metadata {storage.uri(meta_key)} is missing")
    raw = storage.read_bytes(meta_key)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        return _damage(storage, meta_key, "sidecar", f"not valid JSON ({exc})")
    if not isinstance(meta, dict):
        return _damage(storage, meta_key, "sidecar", "holds no JSON object")
    return None


# -- the whole root -------------------------------------------------------------------------


def verify_root(storage: Storage) -> list[Damage]:
    """Every damaged file under the root, sorted by key; [] when the root is sound."""
    found = []
    for key in storage.list("", include_temp=True):
        top = key.split("/", 1)[0]
        if top == QUARANTINE_PREFIX:
            continue
        if is_temp_name(key.rsplit("/", 1)[-1]):
            found.append(_damage(storage, key, "temp", "temporary file of an interrupted write"))
        elif top == TABLES_PREFIX and key.endswith(".parquet"):
            found.append(check_part(storage, key))
        elif top == PROMPTS_PREFIX and key.endswith(PROMPT_SUFFIX):
            found.append(check_prompt(storage, key))
    return sorted((d for d in found if d is not None), key=lambda d: d.key)


def _files_of(storage: Storage, key: str) -> list[str]:
    """The files that move together: a prompt and its sidecar, else the one file."""
    if key.split("/", 1)[0] == PROMPTS_PREFIX and not is_temp_name(key.rsplit("/", 1)[-1]):
        for suffix in (PROMPT_SUFFIX, SIDECAR_SUFFIX):
            if key.endswith(suffix):
                stem = key.removesuffix(suffix)
                pair = [stem + PROMPT_SUFFIX, stem + SIDECAR_SUFFIX]
                return [k for k in pair if k == key or storage.exists(k)]
    return [key]


def _free_key(storage: Storage, key: str) -> str:
    """``_quarantine/<key>``, numbered when an earlier copy is already there."""
    base = f"{QUARANTINE_PREFIX}/{key}"
    for n in range(_MAX_COPIES):
        dest = base if n == 0 else f"{base}.{n}"
        if not storage.exists(dest):
            return dest
    raise StorageError(f"{storage.uri(base)} already holds {_MAX_COPIES} quarantined copies")


def quarantine(storage: Storage, damage: Damage) -> str:
    """Move the damaged file (a prompt with its sidecar) under ``_quarantine/``; its new URI.

    Each file is copied, read back and compared, and only then deleted.
    """
    moved = {}
    for key in _files_of(storage, damage.key):
        data = storage.read_bytes(key)
        dest = _free_key(storage, key)
        storage.write_bytes(dest, data)
        if storage.read_bytes(dest) != data:
            raise StorageError(f"copy of {storage.uri(key)} at {storage.uri(dest)} differs")
        storage.delete(key)
        moved[key] = storage.uri(dest)
    return moved[damage.key]


def quarantine_key(storage: Storage, key: str, why: str) -> str:
    """Move the unreadable object at ``key`` aside (:func:`quarantine`) and log it as a warning
    of the current Prefect run; its new URI. A unit calls this on a stored result it cannot
    read, then recomputes the result."""
    from prefect import get_run_logger

    uri = quarantine(storage, Damage(key, storage.uri(key), "unreadable", why))
    get_run_logger().warning("damaged %s (%s): moved to %s, recomputing", storage.uri(key),
                             why, uri)
    return uri
