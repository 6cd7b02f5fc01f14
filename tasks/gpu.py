"""One training per GPU (or ``trainings_per_gpu``): a Prefect global concurrency limit per card.

Every task run that trains on a CUDA device holds one slot of the limit named after the card
(:func:`gpu_limit_name`: ``gpu-<hostname>-<index>``) for as long as it trains, so task runs in
threads, processes, Dask workers or other flow runs on the same machine queue for the card
instead of sharing it. The limit is created on first use with ``per_gpu`` slots (and its slot
count updated when a run asks for another number); it shows in the Prefect UI under
Concurrency. On the CPU nothing is limited.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from prompt_core.backbones import resolve_device


def gpu_index(device: str) -> int:
    """The CUDA index of ``device`` (``cuda:N`` -> N; ``cuda`` -> the current device)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"{device!r} is not a CUDA device")
    return dev.index if dev.index is not None else torch.cuda.current_device()


def gpu_limit_name(device: str, host: str | None = None) -> str:
    """The global concurrency limit of one card: ``gpu-<hostname>-<index>`` (characters Prefect
    does not allow in names, ``/ % & > <``, become ``_``)."""
    host = re.sub(r"[/%&<>\s]", "_", host or socket.gethostname()) or "localhost"
    return f"gpu-{host}-{gpu_index(device)}"


def ensure_gpu_limit(name: str, slots: int) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` slots, or set its slot count
    when it exists with another one. Safe when several runs do it at once."""
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, slots)
        except ObjectAlreadyExists:  # another run created it between our read and create
            client.upsert_global_concurrency_limit_by_name(name, slots)


@contextmanager
def gpu_slot(device: str, per_gpu: int = 1, timeout_s: float | None = None) -> Iterator[str | None]:
    """Hold one slot of the card's concurrency limit while the block runs (CUDA devices only).

    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. ``per_gpu``: slots of the limit, i.e.
    trainings that may share the card. ``timeout_s``: give up waiting with a ``TimeoutError``
    (None: wait as long as it takes). Yields the limit's name, or None on the CPU (no limit,
    no API call). The slot is released when the block ends, also by an exception.
    """
    if per_gpu < 1:
        raise ValueError(f"per_gpu must be >= 1, got {per_gpu}")
    device = resolve_device(device)
    if torch.device(device).type != "cuda":
        yield None
        return
    name = gpu_limit_name(device)
    ensure_gpu_limit(name, per_gpu)
    # strict: the limit must exist (we just made it), never silently run unlimited; a failed
    # lease renewal (API blip during a long training) must not kill the training
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True,
                     raise_on_lease_renewal_failure=False):
        yield name
