"""The probes of a storage root, run before a command relies on it: :func:`check_writable`
(``run``, before any compute) and :func:`check_readable` (``query``, ``tables``, ``verify``).
:class:`tasks.storage.Storage` exposes both as methods.

Each has one overall wall-clock bound, :data:`DEFAULT_PROBE_DEADLINE` (20 s) unless given,
never more than one storage operation may take (``Storage.deadline``); an S3 endpoint that
does not answer within it fails with ``S3 endpoint <url> did not answer within 20 s
(storage root <root>)``.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from tasks.storage_errors import DeadlineExceeded, StorageError, StorageTimeoutError

Storage = Any  # a tasks.storage.Storage (not imported: that module imports this one)

DEFAULT_PROBE_DEADLINE = 20.0
PROBE_PREFIX = ".prompt-transfer-probe-"  # probe object directly under the root, then removed
PROBE_SUFFIX = ".tmp"  # a temporary file's name: verify reports a probe left behind


def probe_deadline(storage: Storage, deadline: float | None = None) -> float:
    """The probe's overall bound: ``deadline``, else 20 s, but never more than one operation
    may take (``storage.deadline``, e.g. $PROMPT_TRANSFER_S3_DEADLINE)."""
    return min(DEFAULT_PROBE_DEADLINE if deadline is None else deadline, storage.deadline)


def _silent(storage: Storage, deadline: float) -> str:
    return (f"S3 endpoint {storage.endpoint} did not answer within {deadline:g} s "
            f"(storage root {storage.root})")


def check_writable(storage: Storage, deadline: float | None = None) -> None:
    """Write, read back and delete a probe object within ``deadline`` seconds (S3; default
    :func:`probe_deadline`).

    Leaves nothing behind: the probe is a temp-named object directly under the root, and on a
    local root the directories it had to create are removed again. StorageError explains any
    failure; StorageTimeoutError names the endpoint when S3 does not answer.
    """
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}{PROBE_SUFFIX}"
    payload = f"prompt-transfer write probe {uuid.uuid4().hex}\n".encode()
    deadline = probe_deadline(storage, deadline)
    stop = time.monotonic() + deadline

    def left() -> float:
        return max(stop - time.monotonic(), 0.01)

    created = _missing_dirs(storage.root) if storage.is_local else []
    written = False
    try:
        storage.write_bytes(key, payload, timeout=left())
        written = True
        if storage.read_bytes(key, timeout=left()) != payload:
            raise StorageError(f"probe object at {storage.uri(key)} read back different bytes")
        storage.delete(key, timeout=left())
        written = False
    except StorageTimeoutError as exc:
        raise StorageTimeoutError(_silent(storage, deadline)) from exc
    except StorageError as exc:
        raise StorageError(f"storage root {storage.root} is not usable: {exc}") from exc
    except Exception as exc:
        raise StorageError(
            f"storage root {storage.root} is not usable: {storage._explain(exc)}") from exc
    finally:
        if written:  # failed after the write: best effort to leave nothing
            try:
                storage.delete(key, timeout=min(left(), 5.0))
            except StorageError:
                pass
        for d in created:  # deepest first; only the ones still empty
            try:
                os.rmdir(d)
            except OSError:
                break


def check_readable(storage: Storage, deadline: float | None = None) -> None:
    """StorageError unless the root exists and answers within ``deadline`` seconds (default
    :func:`probe_deadline`).

    For readers (``query``, ``tables``, ``verify``): a root that does not exist (local
    directory missing, S3 prefix holding no object, missing bucket) is an error, not an empty
    result.
    """
    deadline = probe_deadline(storage, deadline)
    try:
        found = storage._call("exists", storage.path(""), timeout=deadline)
    except DeadlineExceeded as exc:
        raise StorageTimeoutError(_silent(storage, deadline)) from exc
    except Exception as exc:
        raise StorageError(
            f"storage root {storage.root} is not readable: {storage._explain(exc)}") from exc
    if not found:
        where = f" at {storage.endpoint}" if not storage.is_local else ""
        raise StorageError(f"storage root {storage.root} does not exist{where}")


def _missing_dirs(path: str) -> list[str]:
    """Ancestors of ``path`` (itself included) that do not exist yet, deepest first."""
    missing = []
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing
