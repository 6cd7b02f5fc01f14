"""Throwaway moto S3 server for tests."""

from __future__ import annotations

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
