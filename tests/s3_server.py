"""Throwaway S3 servers for tests: moto, and a silent endpoint that never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run a moto server on a free 127.0.0.1 port; yield its endpoint URL; stop it afterwards.

    Creates no buckets and sets no environment variables.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def silent_server(max_connections: int = 64) -> Iterator[str]:
    """A 127.0.0.1 TCP server that accepts connections and never sends a byte.

    Yields its ``http://127.0.0.1:PORT`` URL. Accepted connections are held open (and what
    the client sends is never read) until the context exits; at most ``max_connections`` are
    accepted, later ones wait in the backlog, which looks the same to a client.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept_loop() -> None:
        while not stop.is_set() and len(held) < max_connections:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept_loop, name="silent-s3", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def clean_s3_env(monkeypatch, key: str = "test", secret: str = "test",
                 also_unset: tuple[str, ...] = ()):
    """Credentials ``key``/``secret`` and region us-east-1 in the environment, and nothing from
    outside that would change where or how S3 is reached: endpoint, profile, session token,
    and ``also_unset`` (timeouts, deadlines, claim settings...). Returns ``monkeypatch``."""
    from tasks import storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in (*storage.S3_ENDPOINT_ENVS, storage.AWS_BLOCK_ENV, "AWS_PROFILE",
                 "AWS_SESSION_TOKEN", *also_unset):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
