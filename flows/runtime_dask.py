"""Local and existing Dask clusters: workers forked from a preloaded server and kept quiet, and
a bounded probe of an existing scheduler (bad input, found before any compute, when it does not
answer)."""

from __future__ import annotations

import asyncio
import threading

from prompt_core.errors import InputError

# what a local Dask worker imports anyway: imported once, in the fork server, not once per worker
# (transformers.modeling_utils: what loading any backbone imports, 2 s of CPU and 1,600 modules)
DASK_WORKER_PRELOAD = ("distributed", "torch", "transformers", "transformers.modeling_utils",
                       "prefect", "tasks.units")


# a local cluster has no dashboard: what only feeds one is slowed down or off (the user's own
# Dask config wins); see configure_local_dask
LOCAL_DASK_QUIET = {"distributed": {
    "worker": {"profile": {"enabled": False}},  # a 10 ms stack sampler in every worker
    "admin": {"tick": {"interval": "1s"},  # event-loop health check: 20 ms in every process
              "system-monitor": {"interval": "5s"}},  # psutil metrics: 500 ms
}}


def configure_local_dask(start: bool = False) -> None:
    """Dask settings for a local cluster (made by :func:`flows.runtime.make_task_runner`).

    Workers fork from a ``forkserver`` that has imported torch, transformers (and its modelling
    base), Prefect and the units once, instead of each spawned worker importing them again
    (about 6 s of CPU per worker on 2 cores).

    The workers keep glibc's own malloc tuning: Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``, there to hand freed memory back to the OS) also
    pins the mmap threshold at 128 KiB, so every activation tensor of a forward or backward is
    a fresh mmap whose pages fault in again: on the 2-core benchmark the same units took 10 s
    (about 17%) longer in Dask workers than in threads. A value the user sets in the
    environment is still inherited.

    The five processes of a 2-worker cluster (scheduler, nannies, workers) keep their
    background work for a dashboard a local cluster does not have to a minimum
    (:data:`LOCAL_DASK_QUIET`, Dask defaults for this process, so the user's own Dask config
    still wins): with Dask's defaults they took 3 s of a 57 s study's CPU on 2 cores.

    The server inherits the environment of the moment it starts: by default with the first
    worker, after :func:`flows.runtime.runner_environment` set the API URL and the thread
    count. ``start=True`` starts it now, in the caller's environment
    (:func:`flows.runtime.start_local_dask_early` adds the thread count around the call), so its
    imports (about 5 s of CPU) overlap the caller's own work (the CLI: importing the flow,
    checking the study, waiting for the API)."""
    import multiprocessing.forkserver

    import dask
    from distributed.utils import get_mp_context

    if LOCAL_DASK_QUIET not in dask.config.defaults:  # called per run: add them once
        dask.config.update_defaults(LOCAL_DASK_QUIET)
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver",
                     "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    get_mp_context().set_forkserver_preload(list(DASK_WORKER_PRELOAD))
    if start:
        multiprocessing.forkserver.ensure_running()


# -- an existing Dask cluster: does its scheduler answer? ---------------------------------------

DASK_CONNECT_TIMEOUT_ENV = "PROMPT_TRANSFER_DASK_CONNECT_TIMEOUT"
DEFAULT_DASK_CONNECT_TIMEOUT = 10.0


class DaskSchedulerError(InputError):
    """The scheduler of ``runner.dask_address`` cannot be reached, or does not answer."""


def dask_connect_timeout() -> float:
    """$PROMPT_TRANSFER_DASK_CONNECT_TIMEOUT (seconds), else 10 (a scheduler answers in
    milliseconds; distributed.Client bounds only the TCP connect, not the handshake)."""
    from tasks.claims import env_seconds

    try:
        return env_seconds(DASK_CONNECT_TIMEOUT_ENV, DEFAULT_DASK_CONNECT_TIMEOUT)
    except ValueError as exc:
        raise InputError(str(exc)) from None


async def _scheduler_identity(address: str, timeout: float) -> dict:
    """Connect, complete distributed's handshake and ask the ``identity`` op, all within
    ``timeout`` (``distributed.Client(timeout=...)`` bounds the TCP connect only: a peer that
    accepts and never answers holds its handshake forever)."""
    from distributed.comm import connect
    from distributed.security import Security

    comm = None

    async def ask() -> dict:
        nonlocal comm
        comm = await connect(address, timeout=round(0.8 * timeout, 3),  # names the cause
                             **Security().get_connection_args("client"))
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()

    try:
        return await asyncio.wait_for(ask(), timeout)
    finally:
        if comm is not None:
            comm.abort()


def check_dask_scheduler(address: str, timeout: float | None = None) -> None:
    """DaskSchedulerError (bad input: exit 2, nothing written) unless the Dask scheduler at
    ``address`` answers within ``timeout`` seconds (default :func:`dask_connect_timeout`).

    Only reachability is known here: whether the workers have the study's device (a GPU)
    shows when the units run on them. The probe runs in a daemon thread; this thread waits for
    it on an Event, which SIGTERM and Ctrl-C interrupt."""
    timeout = dask_connect_timeout() if timeout is None else timeout
    got: dict = {}
    done = threading.Event()

    def probe() -> None:
        try:
            got["identity"] = asyncio.run(_scheduler_identity(address, timeout))
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            got["error"] = exc
        finally:
            done.set()

    threading.Thread(target=probe, name="dask-scheduler-probe", daemon=True).start()
    silent = f"Dask scheduler {address} did not answer within {timeout:g} s"
    if not done.wait(timeout + 5):  # the probe's own bound, with room for a busy machine
        raise DaskSchedulerError(silent)
    exc = got.get("error")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        raise DaskSchedulerError(silent)
    if exc is not None:
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        raise DaskSchedulerError(f"cannot reach Dask scheduler {address}: "
                                 f"{type(exc).__name__}: {exc}{cause}")
    identity = got.get("identity")
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise DaskSchedulerError(f"{address} answered, but not as a Dask scheduler "
                                 f"({str(identity)[:80]})")
