"""S3 settings of :class:`tasks.storage.Storage`: endpoint, credentials, timeouts, attempts and
the per-operation deadline, and how S3 failures are explained.

S3 roots go through s3fs. No S3 call can hang: botocore gets connect/read timeouts and a bounded
number of attempts, s3fs's own retry loop is bounded, and every operation of
:class:`~tasks.storage.Storage` runs under a wall-clock deadline (the async s3fs call is
cancelled when it expires). The defaults keep a silent endpoint's cost in bounds: 2 botocore
attempts x 2 s3fs tries x 10 s read timeout = 40 s (plus backoff), and the 45 s deadline holds
whatever the timeouts (a PUT waits for "100 Continue" with no socket timeout: only the
deadline bounds it). Settings, from the environment (positive numbers; explicit
``storage_options`` win):

=====================================  =======  ==============================================
``PROMPT_TRANSFER_S3_CONNECT_TIMEOUT``  5 s      botocore connect timeout, per attempt
``PROMPT_TRANSFER_S3_READ_TIMEOUT``     10 s     botocore read timeout (socket silent that long)
``PROMPT_TRANSFER_S3_MAX_ATTEMPTS``     2        botocore attempts per request (``standard``
                                                 retry mode); s3fs retries a failed call once
``PROMPT_TRANSFER_S3_DEADLINE``         45 s     wall-clock bound of one Storage operation
=====================================  =======  ==============================================

The probes a command makes before relying on a root (:mod:`tasks.storage_probe`) have their
own overall bound, 20 s.

Credentials come from the usual boto chain, or from a prefect-aws ``AwsCredentials`` block
named by ``$PROMPT_TRANSFER_AWS_CREDENTIALS_BLOCK``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from typing import Any

from tasks.storage_errors import DeadlineExceeded, StorageError

S3_ENDPOINT_ENVS = ("PROMPT_TRANSFER_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
S3_CONNECT_TIMEOUT_ENV = "PROMPT_TRANSFER_S3_CONNECT_TIMEOUT"
S3_READ_TIMEOUT_ENV = "PROMPT_TRANSFER_S3_READ_TIMEOUT"
S3_MAX_ATTEMPTS_ENV = "PROMPT_TRANSFER_S3_MAX_ATTEMPTS"
S3_DEADLINE_ENV = "PROMPT_TRANSFER_S3_DEADLINE"
DEFAULT_S3_CONNECT_TIMEOUT = 5.0
DEFAULT_S3_READ_TIMEOUT = 10.0
DEFAULT_S3_MAX_ATTEMPTS = 2
DEFAULT_S3_DEADLINE = 45.0
S3FS_RETRIES = 2  # s3fs's own loop (also retries a body read cut mid-transfer)
AWS_BLOCK_ENV = "PROMPT_TRANSFER_AWS_CREDENTIALS_BLOCK"
_HTTP_CODES = {"PreconditionFailed": 412, "ConditionalRequestConflict": 409}


def env_positive(env: Mapping[str, str], name: str, default: float, integer: bool = False):
    """The positive number (or integer) in ``env[name]``, ``default`` if unset or blank;
    StorageError naming the variable otherwise."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        what = "a positive integer" if integer else "a positive number of seconds"
        raise StorageError(f"environment variable {name} must be {what}, got {raw!r}")
    return value


def s3_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs options from the environment: endpoint, region, timeouts and attempts.

    Credentials come from the usual boto chain.
    """
    env = os.environ if env is None else env
    opts: dict[str, Any] = {}
    for name in S3_ENDPOINT_ENVS:
        if env.get(name):
            opts["endpoint_url"] = env[name]
            break
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    opts["client_kwargs"] = {"region_name": region}
    attempts = env_positive(env, S3_MAX_ATTEMPTS_ENV, DEFAULT_S3_MAX_ATTEMPTS, integer=True)
    opts["config_kwargs"] = {
        "connect_timeout": env_positive(env, S3_CONNECT_TIMEOUT_ENV, DEFAULT_S3_CONNECT_TIMEOUT),
        "read_timeout": env_positive(env, S3_READ_TIMEOUT_ENV, DEFAULT_S3_READ_TIMEOUT),
        "retries": {"max_attempts": attempts, "mode": "standard"},
    }
    return opts


@functools.lru_cache(maxsize=8)
def aws_block_options(block_name: str) -> tuple[tuple[str, Any], ...]:
    """s3fs options from a prefect-aws ``AwsCredentials`` block saved in the Prefect API
    (``$PROMPT_TRANSFER_AWS_CREDENTIALS_BLOCK`` names it): key, secret, session token,
    region and endpoint. Loaded once per process; the secret never enters a message."""
    try:
        from prefect_aws import AwsCredentials
    except ImportError:
        raise StorageError(f"{AWS_BLOCK_ENV}={block_name!r} needs prefect-aws "
                           "(pip install 'prompt-transfer[aws]')") from None
    try:
        creds = AwsCredentials.load(block_name, validate=False)
    except ValueError as exc:
        raise StorageError(f"{AWS_BLOCK_ENV}: no AwsCredentials block {block_name!r} in the "
                           f"Prefect API ({type(exc).__name__})") from None
    opts: dict[str, Any] = {}
    if creds.aws_access_key_id:
        opts["key"] = creds.aws_access_key_id
    if creds.aws_secret_access_key is not None:
        opts["secret"] = creds.aws_secret_access_key.get_secret_value()
    if creds.aws_session_token:
        opts["token"] = creds.aws_session_token
    if creds.region_name:
        opts["client_kwargs"] = {"region_name": creds.region_name}
    endpoint = creds.aws_client_parameters.endpoint_url
    if endpoint:
        opts["endpoint_url"] = endpoint
    return tuple(opts.items())


def merge_options(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``override``; nested dicts (client/config kwargs) are merged."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = value
    return merged


def s3_storage_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The s3fs options of an S3 root: the environment's, then the credentials block's (if
    ``$PROMPT_TRANSFER_AWS_CREDENTIALS_BLOCK`` names one), then ``storage_options``."""
    opts = s3_options_from_env()
    if os.environ.get(AWS_BLOCK_ENV):
        opts = merge_options(opts, dict(aws_block_options(os.environ[AWS_BLOCK_ENV])))
    opts = merge_options(opts, storage_options or {})
    # Fresh instance, no listing cache: never serve stale listings or a
    # cached client built with other credentials.
    opts.setdefault("skip_instance_cache", True)
    opts.setdefault("use_listings_cache", False)
    return opts


def s3_deadline() -> float:
    """One Storage operation's bound on S3: $PROMPT_TRANSFER_S3_DEADLINE, else 45 s."""
    return env_positive(os.environ, S3_DEADLINE_ENV, DEFAULT_S3_DEADLINE)


def explain_s3_error(exc: BaseException, endpoint: str, bucket: str | None,
                     storage_options: Mapping[str, Any]) -> str:
    """Human explanation of an exception an S3 filesystem raised (``endpoint`` as the
    message names it)."""
    name = type(exc).__name__
    if isinstance(exc, DeadlineExceeded):
        return f"S3 endpoint {endpoint} did not answer within {exc.seconds:g} s"
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
        if isinstance(exc, bexc.ReadTimeoutError):
            cfg = storage_options.get("config_kwargs", {})
            tries = cfg.get("retries", {}).get("max_attempts", 1) * S3FS_RETRIES
            return (
                f"S3 endpoint {endpoint} did not answer (read timeout "
                f"{cfg.get('read_timeout', '?')} s, {tries} attempts): {exc}"
            )
        if isinstance(
            exc,
            bexc.EndpointConnectionError | bexc.ConnectTimeoutError | bexc.ConnectionError,
        ):
            return f"S3 endpoint {endpoint} is unreachable: {exc}"
    if isinstance(exc, PermissionError):
        return (f"access denied at S3 endpoint {endpoint} (credentials refused "
                f"or permission denied): {exc}")
    if isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
        return f"bucket '{bucket}' does not exist at {endpoint}: {exc}"
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"S3 endpoint {endpoint} is unreachable: {name}: {exc}"
    return f"{name}: {exc}"


def s3_status(exc: BaseException) -> int | None:
    """HTTP status of the botocore error behind ``exc`` (s3fs translates them), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status or _HTTP_CODES.get(response.get("Error", {}).get("Code"))
        current = current.__cause__ or current.__context__
    return None
