"""Storage root (local directory or ``s3://bucket/prefix``) addressed by relative keys.

Local roots write atomically (temp file, then rename or hard link) and have no deadlines. S3
roots go through s3fs; their settings (endpoint, credentials, connect/read timeouts, attempts,
the wall-clock deadline of every operation, from ``PROMPT_TRANSFER_S3_*``) are in
:mod:`tasks.storage_s3`, the errors in :mod:`tasks.storage_errors`; both are re-exported here.

:meth:`Storage.check_writable` (the probe run before any compute) has its own overall deadline
(20 s by default, :mod:`tasks.storage_probe`) and fails with "S3 endpoint ... did not answer
within 20 s (storage root ...)".
A PUT waits for "100 Continue" with no socket timeout (aiohttp), so for writes the deadline is
the bound that holds.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import posixpath
import time
import uuid
from typing import Any

import fsspec
from fsspec.asyn import sync
from fsspec.core import split_protocol
from fsspec.exceptions import FSTimeoutError

from tasks import storage_probe
from tasks.storage_errors import (
    DeadlineExceeded,
    StorageError,
    StorageNotFoundError,
    StorageTimeoutError,
)
from tasks.storage_probe import DEFAULT_PROBE_DEADLINE, PROBE_PREFIX, PROBE_SUFFIX
from tasks.storage_s3 import (
    AWS_BLOCK_ENV,
    DEFAULT_S3_CONNECT_TIMEOUT,
    DEFAULT_S3_DEADLINE,
    DEFAULT_S3_MAX_ATTEMPTS,
    DEFAULT_S3_READ_TIMEOUT,
    S3_CONNECT_TIMEOUT_ENV,
    S3_DEADLINE_ENV,
    S3_ENDPOINT_ENVS,
    S3_MAX_ATTEMPTS_ENV,
    S3_READ_TIMEOUT_ENV,
    S3FS_RETRIES,
    aws_block_options,
    explain_s3_error,
    s3_deadline,
    s3_options_from_env,
    s3_status,
    s3_storage_options,
)

__all__ = [  # what other modules import from here (the S3 settings re-exported)
    "AWS_BLOCK_ENV", "DEFAULT_LOCAL_ROOT", "DEFAULT_PROBE_DEADLINE", "DEFAULT_S3_CONNECT_TIMEOUT",
    "DEFAULT_S3_DEADLINE", "DEFAULT_S3_MAX_ATTEMPTS", "DEFAULT_S3_READ_TIMEOUT",
    "DEFAULT_STORAGE_ENV", "PROBE_PREFIX", "S3FS_RETRIES", "S3_CONNECT_TIMEOUT_ENV",
    "S3_DEADLINE_ENV", "S3_ENDPOINT_ENVS", "S3_MAX_ATTEMPTS_ENV", "S3_READ_TIMEOUT_ENV",
    "Storage", "StorageError", "StorageNotFoundError", "StorageTimeoutError",
    "aws_block_options", "default_root", "is_temp_name", "open_storage", "s3_options_from_env",
]

DEFAULT_STORAGE_ENV = "PROMPT_TRANSFER_STORAGE"
DEFAULT_LOCAL_ROOT = "./results"
_TMP_SUFFIX = PROBE_SUFFIX
_CREATE_CONFLICT_RETRIES = 6  # 409 ConditionalRequestConflict: retry, backing off


def is_temp_name(name: str) -> bool:
    """True for the in-flight temporary files of atomic writes (``.<name>.<uuid>.tmp``)."""
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def _normalise_root(root: str) -> tuple[str, str | None]:
    """Return (normalised root URI, protocol or None for local)."""
    if not isinstance(root, str) or not root.strip():
        raise StorageError(f"storage root must be a non-empty string, got {root!r}")
    root = root.strip()
    protocol, rest = split_protocol(root)
    if protocol in (None, "file", "local"):
        path = os.path.abspath(os.path.expanduser(rest))
        return (path.rstrip(os.sep) or os.sep), None
    if protocol == "s3a":
        protocol = "s3"
    rest = rest.strip("/")
    if not rest:
        raise StorageError(f"storage root {root!r} names no bucket/path")
    return f"{protocol}://{rest}", protocol


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise StorageError(f"storage key must be a string, got {key!r}")
    if key.startswith("/") or "\\" in key:
        raise StorageError(f"storage key must be relative with '/' separators, got {key!r}")
    key = key.rstrip("/")
    if key and any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"storage key has an empty, '.' or '..' component: {key!r}")
    return key


class Storage:
    """One storage root (local path or s3://bucket/prefix) addressed by relative keys.

    ``deadline`` bounds each S3 operation in seconds (default: $PROMPT_TRANSFER_S3_DEADLINE or
    45 s); the methods that talk to S3 also take a ``timeout`` for one call.
    """

    def __init__(
        self,
        root: str,
        storage_options: dict[str, Any] | None = None,
        deadline: float | None = None,
    ):
        self.root, self.protocol = _normalise_root(root)
        self.is_local = self.protocol is None
        if self.protocol == "s3":
            opts = s3_storage_options(storage_options)
        else:
            opts = dict(storage_options or {})
        self.storage_options = opts
        if deadline is None and self.protocol == "s3":
            deadline = s3_deadline()
        self.deadline = float(deadline or DEFAULT_S3_DEADLINE)
        try:
            # A copy: botocore pops keys from the retries dict it is given.
            self.fs, base = fsspec.core.url_to_fs(self.root, **copy.deepcopy(opts))
        except Exception as exc:
            raise StorageError(f"cannot open storage root {self.root}: {exc}") from exc
        if self.protocol == "s3":
            self.fs.retries = S3FS_RETRIES  # s3fs multiplies botocore's attempts by this
        self._base = base.rstrip("/") if base != "/" else base

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    @property
    def bucket(self) -> str | None:
        """Bucket name for s3 roots, else None."""
        if self.protocol != "s3":
            return None
        return self.root[len("s3://") :].split("/", 1)[0]

    @property
    def endpoint(self) -> str:
        return self.storage_options.get("endpoint_url") or "the default AWS endpoint"

    # -- addressing -------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        """Full URI of a relative key (absolute path for local roots)."""
        key = _check_key(key)
        if not key:
            return self.root
        if self.is_local:
            return os.path.join(self.root, *key.split("/"))
        return f"{self.root}/{key}"

    def path(self, key: str) -> str:
        """Path as ``self.fs`` understands it (``bucket/prefix/key`` for s3)."""
        key = _check_key(key)
        if self.is_local:
            return self.uri(key)
        if not key:
            return self._base
        return posixpath.join(self._base, key)

    def _rel(self, fs_path: str) -> str | None:
        fs_path = fs_path.replace(os.sep, "/") if self.is_local else fs_path
        base = self._base.replace(os.sep, "/") if self.is_local else self._base
        base = base.rstrip("/")
        if not fs_path.startswith(base + "/"):
            return None
        return fs_path[len(base) + 1 :]

    # -- calls with a deadline -------------------------------------------------------------
    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``self.fs.<method>(*args)``; on S3 the async variant, cancelled after the deadline."""
        if not getattr(self.fs, "async_impl", False):  # local disk: no deadline
            return getattr(self.fs, method)(*args)
        limit = self.deadline if timeout is None else timeout
        coro_fn = getattr(self.fs, f"_{method}")
        try:
            # fsspec's sync() wraps the coroutine in asyncio.wait_for on its IO loop thread.
            return sync(self.fs.loop, coro_fn, *args, timeout=max(limit, 0.01))
        except FSTimeoutError as exc:
            raise DeadlineExceeded(limit) from exc

    # -- error reporting -------------------------------------------------------------------
    def _explain(self, exc: BaseException) -> str:
        """Human explanation of an exception raised by the filesystem."""
        if not self.is_local or isinstance(exc, DeadlineExceeded):
            return explain_s3_error(exc, self.endpoint, self.bucket, self.storage_options)
        name = type(exc).__name__
        if isinstance(exc, PermissionError):
            return f"permission denied: {exc}"
        if isinstance(exc, NotADirectoryError | FileExistsError):
            return f"a path component is not a directory: {exc}"
        return f"{name}: {exc}"

    def _fail(self, action: str, key: str, exc: BaseException) -> StorageError:
        cls = StorageTimeoutError if isinstance(exc, DeadlineExceeded) else StorageError
        return cls(f"cannot {action} {self.uri(key)}: {self._explain(exc)}")

    # -- operations ------------------------------------------------------------------------
    def exists(self, key: str, *, timeout: float | None = None) -> bool:
        try:
            return bool(self._call("exists", self.path(key), timeout=timeout))
        except Exception as exc:
            raise self._fail("check existence of", key, exc) from exc

    def read_bytes(self, key: str, *, timeout: float | None = None) -> bytes:
        """Contents of ``key``; StorageError if it is missing."""
        path = self.path(key)
        try:
            return self._call("cat_file", path, timeout=timeout)
        except (FileNotFoundError, IsADirectoryError) as exc:
            if self.protocol == "s3" and "bucket" in str(exc).lower():
                raise self._fail("read", key, exc) from exc
            raise StorageNotFoundError(f"object not found at {self.uri(key)}") from exc
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def stamp(self, key: str, *, timeout: float | None = None) -> tuple[int, str]:
        """(size, change token) of the object at ``key``: the token is the S3 ETag or the local
        modification time, so a rewritten or truncated object gets another stamp.
        StorageNotFoundError if it is missing."""
        try:
            info = self._call("info", self.path(key), timeout=timeout)
        except FileNotFoundError as exc:
            raise StorageNotFoundError(f"object not found at {self.uri(key)}") from exc
        except Exception as exc:
            raise self._fail("stat", key, exc) from exc
        token = info.get("ETag") or f"{info.get('mtime')}/{info.get('ino')}"
        return int(info.get("size") or 0), str(token)

    def _object_key(self, key: str) -> str:
        """``key`` checked as the name of an object to write (never the root itself)."""
        key = _check_key(key)
        if not key:
            raise StorageError(f"cannot write to the storage root itself ({self.root})")
        return key

    def write_bytes(self, key: str, data: bytes, *, timeout: float | None = None) -> str:
        """Atomically write ``data`` at ``key`` (replacing it); return its URI."""
        key = self._object_key(key)
        data = bytes(data)
        try:
            if self.is_local:
                self._write_local(self.path(key), data)
            else:  # one PUT: atomic on S3
                self._call("pipe_file", self.path(key), data, timeout=timeout)
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail("write", key, exc) from exc
        return self.uri(key)

    def create_bytes(self, key: str, data: bytes, *, timeout: float | None = None) -> bool:
        """Write ``data`` at ``key`` only if no object is there: True if written, False if one was.

        Local roots: the bytes go to a temp file that is then hard-linked to ``key``
        (``os.link`` fails when ``key`` exists), so the create is atomic and nobody ever reads
        a partial file; the file system must support hard links.

        S3 roots: a HEAD, then one conditional PUT with ``If-None-Match: *`` (s3fs
        ``mode="create"``); a 412 Precondition Failed means the object exists, a 409
        ConditionalRequestConflict (a concurrent conditional write) is retried. AWS S3, moto
        and SeaweedFS honour the header, so there the create is atomic: of racing writers
        exactly one gets True. A store that ignores the header degrades to check-then-write
        (best effort: two writers whose HEADs both come before either PUT both get True, the
        later PUT wins); callers that must know can read back a token they wrote
        (``tasks.claims`` does). If a PUT that landed is retried after its answer was lost,
        the retry gets 412 and this returns False although ``data`` was written: again, a
        token read back tells. ``timeout`` bounds the whole call (default: the deadline).
        """
        key = self._object_key(key)
        data = bytes(data)
        try:
            if self.is_local:
                return self._create_local(self.path(key), data)
            return self._create_s3(self.path(key), data, timeout)
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail("create", key, exc) from exc

    @staticmethod
    def _temp_beside(path: str, data: bytes) -> str:
        """``data`` written and synced to a fresh temp file in ``path``'s folder (made if
        missing); its path. The caller moves or links it into place and removes it."""
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    @classmethod
    def _create_local(cls, path: str, data: bytes) -> bool:
        tmp = cls._temp_beside(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails when the name exists
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def _create_s3(self, path: str, data: bytes, timeout: float | None) -> bool:
        limit = self.deadline if timeout is None else timeout
        stop = time.monotonic() + limit

        def left() -> float:
            remaining = stop - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(limit)
            return remaining

        if self._call("exists", path, timeout=left()):
            return False
        attempt = 0
        while True:
            try:  # s3fs _pipe_file(path, data, chunksize, max_concurrency, mode)
                self._call("pipe_file", path, data, 50 * 2**20, None, "create", timeout=left())
                return True
            except OSError as exc:
                status = s3_status(exc)
                if isinstance(exc, FileExistsError) or status == 412:
                    return False  # PreconditionFailed: the object exists
                if status != 409 or attempt >= _CREATE_CONFLICT_RETRIES:
                    raise  # 409 ConditionalRequestConflict: a concurrent create, retried
            time.sleep(min(0.05 * 2**attempt, left() / 2))
            attempt += 1

    @classmethod
    def _write_local(cls, path: str, data: bytes) -> None:
        tmp = cls._temp_beside(path, data)
        try:
            os.replace(tmp, path)  # atomic: readers see the old file or the new, never half
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_json(self, key: str) -> Any:
        raw = self.read_bytes(key)
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise StorageError(f"invalid JSON at {self.uri(key)}: {exc}") from exc

    def write_json(self, key: str, obj: Any) -> str:
        """Write ``obj`` as JSON (sorted keys, indent 2); return its URI."""
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        return self.write_bytes(key, text.encode("utf-8"))

    def delete(self, key: str, *, timeout: float | None = None) -> None:
        """Remove one object; missing objects are ignored."""
        key = _check_key(key)
        try:
            self._call("rm_file", self.path(key), timeout=timeout)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def list(
        self,
        prefix: str = "",
        suffix: str = "",
        *,
        include_temp: bool = False,
        timeout: float | None = None,
    ) -> list[str]:
        """Sorted relative keys of files under ``prefix`` (recursive); [] if it is absent.

        In-flight temporary files of atomic writes are left out unless ``include_temp``.
        """
        path = self.path(prefix)
        try:
            found = self._call("find", path, timeout=timeout)
        except FileNotFoundError as exc:
            if self.is_local:
                return []
            raise self._fail("list", prefix, exc) from exc
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        keys = []
        for item in found:
            rel = self._rel(item)
            if rel is None:
                continue
            if not include_temp and is_temp_name(rel.rsplit("/", 1)[-1]):
                continue
            if rel.endswith(suffix):
                keys.append(rel)
        return sorted(keys)

    # -- the probes (tasks.storage_probe) ----------------------------------------------------
    def probe_deadline(self, deadline: float | None = None) -> float:
        """The probes' overall bound (:func:`tasks.storage_probe.probe_deadline`)."""
        return storage_probe.probe_deadline(self, deadline)

    def check_writable(self, deadline: float | None = None) -> None:
        """Write, read back and delete a probe object within ``deadline`` seconds
        (:func:`tasks.storage_probe.check_writable`)."""
        storage_probe.check_writable(self, deadline)

    def check_readable(self, deadline: float | None = None) -> None:
        """StorageError unless the root exists and answers within ``deadline`` seconds
        (:func:`tasks.storage_probe.check_readable`)."""
        storage_probe.check_readable(self, deadline)


def default_root() -> str:
    """Root from $PROMPT_TRANSFER_STORAGE, else ./results."""
    return os.environ.get(DEFAULT_STORAGE_ENV) or DEFAULT_LOCAL_ROOT


def open_storage(root: str | None = None, storage_options: dict[str, Any] | None = None) -> Storage:
    """Storage for ``root``; None means $PROMPT_TRANSFER_STORAGE or ./results."""
    return Storage(root if root else default_root(), storage_options)
