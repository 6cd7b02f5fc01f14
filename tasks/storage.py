"""Storage root (local directory or ``s3://bucket/prefix``) addressed by relative keys."""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.core import split_protocol

DEFAULT_STORAGE_ENV = "PROMPT_TRANSFER_STORAGE"
DEFAULT_LOCAL_ROOT = "./results"
S3_ENDPOINT_ENVS = ("PROMPT_TRANSFER_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
PROBE_PREFIX = "_probe"
_TMP_SUFFIX = ".tmp"


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the problem."""


def s3_options_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """s3fs options taken from the environment: endpoint and region (credentials via boto chain)."""
    env = os.environ if env is None else env
    opts: dict[str, Any] = {}
    for name in S3_ENDPOINT_ENVS:
        if env.get(name):
            opts["endpoint_url"] = env[name]
            break
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    opts["client_kwargs"] = {"region_name": region}
    return opts


def _merge_options(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key in ("client_kwargs", "config_kwargs") and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


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
    """One storage root (local path or s3://bucket/prefix) addressed by relative keys."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.root, self.protocol = _normalise_root(root)
        self.is_local = self.protocol is None
        if self.protocol == "s3":
            opts = _merge_options(s3_options_from_env(), storage_options or {})
            # Fresh instance, no listing cache: never serve stale listings or a
            # cached client built with other credentials.
            opts.setdefault("skip_instance_cache", True)
            opts.setdefault("use_listings_cache", False)
        else:
            opts = dict(storage_options or {})
        self.storage_options = opts
        try:
            self.fs, base = fsspec.core.url_to_fs(self.root, **opts)
        except Exception as exc:
            raise StorageError(f"cannot open storage root {self.root}: {exc}") from exc
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

    # -- error reporting -------------------------------------------------------------------
    def _explain(self, exc: BaseException) -> str:
        """Human explanation of an exception raised by the filesystem."""
        name = type(exc).__name__
        if not self.is_local:
            try:
                from botocore import exceptions as bexc
            except ImportError:  # pragma: no cover - s3fs depends on botocore
                bexc = None
            if bexc is not None:
                if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
                    return (
                        "no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                        f"or an AWS profile): {exc}"
                    )
                if isinstance(
                    exc,
                    bexc.EndpointConnectionError | bexc.ConnectTimeoutError | bexc.ConnectionError,
                ):
                    return f"S3 endpoint {self.endpoint} is unreachable: {exc}"
            if isinstance(exc, PermissionError):
                return f"access denied (credentials refused or permission denied): {exc}"
            if isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
                return f"bucket '{self.bucket}' does not exist at {self.endpoint}: {exc}"
            if isinstance(exc, ConnectionError | TimeoutError):
                return f"S3 endpoint {self.endpoint} is unreachable: {name}: {exc}"
            return f"{name}: {exc}"
        if isinstance(exc, PermissionError):
            return f"permission denied: {exc}"
        if isinstance(exc, NotADirectoryError | FileExistsError):
            return f"a path component is not a directory: {exc}"
        return f"{name}: {exc}"

    def _fail(self, action: str, key: str, exc: BaseException) -> StorageError:
        return StorageError(f"cannot {action} {self.uri(key)}: {self._explain(exc)}")

    # -- operations ------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self.path(key)))
        except Exception as exc:
            raise self._fail("check existence of", key, exc) from exc

    def read_bytes(self, key: str) -> bytes:
        """Contents of ``key``; StorageError if it is missing."""
        path = self.path(key)
        try:
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError) as exc:
            if self.protocol == "s3" and "bucket" in str(exc).lower():
                raise self._fail("read", key, exc) from exc
            raise StorageError(f"object not found at {self.uri(key)}") from exc
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def write_bytes(self, key: str, data: bytes) -> str:
        """Atomically write ``data`` at ``key`` (replacing it); return its URI."""
        key = _check_key(key)
        if not key:
            raise StorageError(f"cannot write to the storage root itself ({self.root})")
        data = bytes(data)
        try:
            if self.is_local:
                self._write_local(self.path(key), data)
            else:
                self.fs.pipe_file(self.path(key), data)  # one PUT: atomic on S3
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail("write", key, exc) from exc
        return self.uri(key)

    @staticmethod
    def _write_local(path: str, data: bytes) -> None:
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
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

    def delete(self, key: str) -> None:
        """Remove one object; missing objects are ignored."""
        key = _check_key(key)
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def list(self, prefix: str = "", suffix: str = "") -> list[str]:
        """Sorted relative keys of files under ``prefix`` (recursive); [] if it is absent."""
        path = self.path(prefix)
        try:
            found = self.fs.find(path)
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
            name = rel.rsplit("/", 1)[-1]
            if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                continue  # in-flight atomic local write
            if rel.endswith(suffix):
                keys.append(rel)
        return sorted(keys)

    def check_writable(self) -> None:
        """Write, read back and delete a probe object; StorageError explains any failure."""
        key = f"{PROBE_PREFIX}/probe-{uuid.uuid4().hex}.txt"
        payload = f"prompt-transfer write probe {uuid.uuid4().hex}\n".encode()
        try:
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
            self.write_bytes(key, payload)
            if self.read_bytes(key) != payload:
                raise StorageError(f"probe object at {self.uri(key)} read back different bytes")
            self.delete(key)
        except StorageError as exc:
            raise StorageError(f"storage root {self.root} is not usable: {exc}") from exc
        except Exception as exc:
            raise StorageError(
                f"storage root {self.root} is not usable: {self._explain(exc)}"
            ) from exc


def default_root() -> str:
    """Root from $PROMPT_TRANSFER_STORAGE, else ./results."""
    return os.environ.get(DEFAULT_STORAGE_ENV) or DEFAULT_LOCAL_ROOT


def open_storage(root: str | None = None, storage_options: dict[str, Any] | None = None) -> Storage:
    """Storage for ``root``; None means $PROMPT_TRANSFER_STORAGE or ./results."""
    return Storage(root if root else default_root(), storage_options)
