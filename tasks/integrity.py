"""Integrity of a storage root: find damaged files and move them aside.

:func:`verify_root` checks every file the pipeline reads back:

* ``tables/<table>/<p>=<v>/.../*.parquet``: footer, schema and rows readable with pyarrow,
  the location matches the table's partition columns, and the file's columns match the
  registered spec (``tasks.tables.TABLES``): required columns present and non-null, types of
  the same kind and castable to the spec's types;
* ``prompts/**/*.safetensors``: loads with ``prompt_from_bytes``, and its ``.json`` metadata
  sidecar exists and holds a JSON object;
* ``projectors/<src>/<tgt>/<key>.safetensors``: loads with ``projector_from_bytes``, and its
  ``.json`` sidecar exists and holds a JSON object;
* ``probes/<model>/<task>/<key>.json``: a JSON object whose ``scores`` map prompt keys to
  finite numbers (:func:`parse_probe`);
* ``task_data/<name>/<fingerprint>.parquet``: loads with ``task_from_parquet`` (whose rows
  still hash to the fingerprint written in it), and holds the task its key names;
* ``artifacts/**.png``: a whole PNG (signature, every chunk's CRC, the closing ``IEND``);
  ``artifacts/published/**.json``: a publish record (a JSON object with ``lines``, ``uris``
  and ``summaries``) whose images under the root are there and sound (else a rerun would
  reuse the record and never draw them again);
* anywhere: no leftover temporary file of an interrupted write (``.<name>.<id>.tmp``).

Every kind of file is checked the same way by the units that read it back (a damaged file
counts as absent: quarantined, then recomputed). Nothing under ``_quarantine/`` is checked.
:func:`quarantine` moves a damaged file (a prompt or a projector together with its sidecar)
to ``_quarantine/<original key>``: copied, read back, then deleted, so no byte is lost. Run
both while no run writes to the root: a write in flight shows up as a temporary file. Storage
failures (unreachable endpoint, denied access) raise StorageError; they are not damage.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from prompt_core.data import task_from_parquet
from prompt_core.projectors import projector_from_bytes
from prompt_core.prompts import prompt_from_bytes
from tasks.storage import Storage, StorageError, is_temp_name
from tasks.tables import TABLES, TABLES_PREFIX, TableSpec, castable, check_partition_value

QUARANTINE_PREFIX = "_quarantine"
PROMPTS_PREFIX = "prompts"
PROJECTORS_PREFIX = "projectors"
PROBES_PREFIX = "probes"
TASK_DATA_PREFIX = "task_data"
ARTIFACTS_PREFIX = "artifacts"
PUBLISHED_PREFIX = "artifacts/published"
PROMPT_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
PAIRED_PREFIXES = (PROMPTS_PREFIX, PROJECTORS_PREFIX)  # <stem>.safetensors + <stem>.json
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_COPIES = 100  # _quarantine/<key>, <key>.1, ... <key>.99 before giving up


@dataclass(frozen=True)
class Damage:
    """One damaged file: relative ``key``, full ``uri``, ``kind`` and a readable ``problem``.

    kind: ``unreadable`` (cannot be opened or parsed), ``schema`` (columns or types differ from
    the table spec), ``location`` (not where its table's partitioning puts it, or task data
    under another task's key), ``sidecar`` (a prompt's or projector's ``.json`` metadata
    missing or invalid), ``reference`` (a publish record naming a missing or damaged image),
    ``temp`` (leftover temporary file).
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


# -- prompts and projectors: <stem>.safetensors + <stem>.json -------------------------------


def sidecar_key(prompt_key: str) -> str:
    """Key of the ``.json`` metadata written beside ``<stem>.safetensors``."""
    return prompt_key.removesuffix(PROMPT_SUFFIX) + SIDECAR_SUFFIX


def _check_sidecar(storage: Storage, key: str) -> Damage | None:
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


def _check_with_sidecar(storage: Storage, key: str, load: Callable[[bytes, str], object]
                        ) -> Damage | None:
    try:
        load(storage.read_bytes(key), storage.uri(key))
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load is damage
        return _damage(storage, key, "unreadable", str(exc))
    return _check_sidecar(storage, key)


def check_prompt(storage: Storage, key: str) -> Damage | None:
    """Damage of one stored prompt (``.safetensors`` + ``.json`` sidecar), or None."""
    return _check_with_sidecar(storage, key, prompt_from_bytes)


def check_projector(storage: Storage, key: str) -> Damage | None:
    """Damage of one stored projector (``.safetensors`` + ``.json`` sidecar), or None."""
    return _check_with_sidecar(storage, key, projector_from_bytes)


# -- probes, task data, images ---------------------------------------------------------------


class DamagedFile(ValueError):
    """A stored file's bytes are not what its kind must hold (the message says why)."""


def parse_probe(raw: bytes) -> dict[str, float]:
    """The scores of a stored probe (``probes/<model>/<task>/<key>.json``): prompt key ->
    accuracy. DamagedFile when the bytes are not a whole probe record."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise DamagedFile(f"not valid JSON ({exc})") from None
    scores = record.get("scores") if isinstance(record, dict) else None
    if not isinstance(scores, dict):
        raise DamagedFile("holds no 'scores' object")
    out = {}
    for k, v in scores.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise DamagedFile(f"score of {k!r} is not a finite number: {v!r}")
        out[k] = float(v)
    return out


def check_probe(storage: Storage, key: str) -> Damage | None:
    """Damage of one stored probe record, or None."""
    try:
        parse_probe(storage.read_bytes(key))
    except DamagedFile as exc:
        return _damage(storage, key, "unreadable", str(exc))
    return None


def check_task_data(storage: Storage, key: str) -> Damage | None:
    """Damage of one stored copy of an NLP task (``task_data/<name>/<fingerprint>.parquet``),
    or None."""
    try:
        td = task_from_parquet(storage.read_bytes(key), storage.uri(key))
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load is damage
        return _damage(storage, key, "unreadable", str(exc))
    expected = f"{TASK_DATA_PREFIX}/{td.name}/{td.fingerprint}.parquet"
    if key != expected:
        return _damage(storage, key, "location", f"holds task {td.name!r} with fingerprint "
                       f"{td.fingerprint}, whose key is {expected}")
    return None


def png_problem(data: bytes) -> str | None:
    """Why ``data`` is not a whole PNG file (signature, each chunk complete with a matching
    CRC, ending with ``IEND``), or None."""
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG file (no PNG signature)"
    pos, n = len(PNG_SIGNATURE), len(data)
    while pos + 12 <= n:
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 12 + length
        if end > n:
            break
        kind = data[pos + 4:pos + 8]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            return f"chunk {kind!r} at byte {pos}: CRC mismatch"
        if kind == b"IEND":
            return None
        pos = end
    return f"truncated: no IEND chunk (file ends at byte {n})"


def check_image(storage: Storage, key: str) -> Damage | None:
    """Damage of one stored PNG figure, or None."""
    problem = png_problem(storage.read_bytes(key))
    return _damage(storage, key, "unreadable", problem) if problem else None


def record_images(storage: Storage, record: dict) -> list[str]:
    """Keys of the PNG images under this root that a publish record names (it holds the URIs
    :meth:`Storage.write_bytes` returned)."""
    uris = record.get("uris")
    base = storage.uri(ARTIFACTS_PREFIX)
    keys = []
    for uri in (uris.values() if isinstance(uris, dict) else []):
        if isinstance(uri, str) and uri.endswith(".png") and uri.startswith(base):
            rel = uri[len(base):].replace(os.sep, "/")
            if rel.startswith("/"):
                keys.append(ARTIFACTS_PREFIX + rel)
    return keys


def check_published(storage: Storage, key: str, damaged: set[str]) -> Damage | None:
    """Damage of one publish record (``artifacts/published/**.json``): not a record, or it
    names an image under the root that is missing or in ``damaged`` (a rerun would reuse the
    record and never draw the image again)."""
    raw = storage.read_bytes(key)
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        return _damage(storage, key, "unreadable", f"not valid JSON ({exc})")
    if not isinstance(record, dict) or not {"lines", "uris", "summaries"} <= record.keys():
        return _damage(storage, key, "unreadable", "not a publish record (lines, uris, "
                       "summaries)")
    for image in record_images(storage, record):
        if image in damaged or not storage.exists(image):
            what = "damaged" if image in damaged else "missing"
            return _damage(storage, key, "reference",
                           f"names the {what} image {storage.uri(image)}")
    return None


# -- the whole root -------------------------------------------------------------------------


def _checker(key: str) -> Callable[[Storage, str], Damage | None] | None:
    """The check of the file at ``key`` by where it lies, None for files not checked."""
    top = key.split("/", 1)[0]
    if top == TABLES_PREFIX and key.endswith(".parquet"):
        return check_part
    if top == PROMPTS_PREFIX and key.endswith(PROMPT_SUFFIX):
        return check_prompt
    if top == PROJECTORS_PREFIX and key.endswith(PROMPT_SUFFIX):
        return check_projector
    if top == PROBES_PREFIX and key.endswith(".json"):
        return check_probe
    if top == TASK_DATA_PREFIX and key.endswith(".parquet"):
        return check_task_data
    if top == ARTIFACTS_PREFIX and key.endswith(".png"):
        return check_image
    return None


def verify_root(storage: Storage) -> list[Damage]:
    """Every damaged file under the root, sorted by key; [] when the root is sound."""
    found: list[Damage | None] = []
    records = []
    for key in storage.list("", include_temp=True):
        top = key.split("/", 1)[0]
        if top == QUARANTINE_PREFIX:
            continue
        if is_temp_name(key.rsplit("/", 1)[-1]):
            found.append(_damage(storage, key, "temp", "temporary file of an interrupted write"))
        elif key.startswith(PUBLISHED_PREFIX + "/") and key.endswith(".json"):
            records.append(key)  # after the images: they name them
        elif (check := _checker(key)) is not None:
            found.append(check(storage, key))
    damaged = {d.key for d in found if d is not None}
    found += [check_published(storage, key, damaged) for key in records]
    return sorted((d for d in found if d is not None), key=lambda d: d.key)


def _files_of(storage: Storage, key: str) -> list[str]:
    """The files that move together: a prompt or projector and its sidecar, else the file."""
    if (key.split("/", 1)[0] in PAIRED_PREFIXES
            and not is_temp_name(key.rsplit("/", 1)[-1])):
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
    """Move the damaged file (a prompt or projector with its sidecar) under ``_quarantine/``;
    its new URI.

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
