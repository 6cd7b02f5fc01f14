"""What a run needs around its flow, apart from any command: Prefect's defaults, the ephemeral
Prefect API tied to this process, SIGTERM as an interrupt, Prefect's error logs kept off the
console, and the task runner a study's ``runner`` section asks for.

Nothing here changes the environment at import: :func:`prefect_defaults` does, when a command
or :func:`runner_environment` calls it, before a flow starts. Prefect itself is imported only
by the functions that need it, so a command that starts no flow does not import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prompt_core.config import RunnerConfig

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

# -- Prefect's defaults ------------------------------------------------------------------------

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the ephemeral API starts in a subprocess; on a busy 2-core machine 20 s (the default) is
    # short
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def prefect_defaults(log_level: str | None = None, console_level: str | None = None) -> None:
    """Set this project's Prefect settings in the environment where they are not set, before a
    flow starts; the processes started afterwards inherit them. ``log_level``: Prefect's
    logging level (``PREFECT_LOGGING_LEVEL``: what reaches the API and the UI too);
    ``console_level``: the terminal's handler only (``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL``),
    so a run's own logs (dev scores, stage starts and ends, waits) still go to the API while
    the terminal keeps to progress bars and errors. Prefect reads its settings when imported:
    if it already is, its global settings are refreshed to see them."""
    wanted = {**PREFECT_DEFAULTS, **({"PREFECT_LOGGING_LEVEL": log_level} if log_level else {}),
              **({"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": console_level}
                 if console_level else {})}
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    context = sys.modules.get("prefect.context")
    if added and context is not None:
        context.refresh_global_settings_context()
    if "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL" in added and "prefect.logging" in sys.modules:
        from prefect.logging.configuration import setup_logging

        setup_logging(incremental=False)  # the console handler's level, as set above


# -- Prefect's error logs, kept off the console while a command reports the run ---------------

# Prefect reports a failed task or flow run at ERROR level with its traceback, through the
# loggers below, to the console handler of the root logger (and to its API handler, for the UI).
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine",
                       "prefect.flow_engine", "prefect.task_engine")


class DropRunErrors(logging.Filter):
    """Drop Prefect's own reports of failed runs from the console: the CLI prints one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and record.name.startswith(PREFECT_RUN_LOGGERS))


@contextlib.contextmanager
def quiet_prefect_errors(enabled: bool) -> Iterator[None]:
    """While the flow runs, keep Prefect's ERROR logs and tracebacks off the console handlers
    (the Prefect API and UI still get them)."""
    if not enabled:
        yield
        return
    filt = DropRunErrors()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


# -- SIGTERM ------------------------------------------------------------------------------------


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C: the flow marks the run failed and writes its runs row."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the flow runs, SIGTERM stops it as Ctrl-C does (by default it killed the process
    on the spot: no runs row, no clean exit). Only on the main thread, where handlers live.

    Both signals also set the process's stop request (:mod:`tasks.stop`,
    :func:`stop_on_signals`): a unit waiting in a worker thread (for another run's claim) ends
    at once, so the thread pool, which the flow joins before it ends, lets it go."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with stop_on_signals():
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Every SIGTERM and SIGINT this process gets sets the stop request (:mod:`tasks.stop`),
    whichever Python handler runs: while a flow runs, Prefect's engine swaps in its own SIGTERM
    handler (it raises TerminationSignal in the main thread, then joins the task runner's
    threads, so a unit asleep in a wait kept the process alive). The signal's number is
    written to a wakeup fd (:func:`signal.set_wakeup_fd`) that a daemon thread reads. The
    request is cleared afterwards. Main thread only; nothing is done where a wakeup fd is in
    use already (an asyncio loop's)."""
    from tasks import stop as stop_request

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread
        previous = None
    if previous != -1:
        if previous is not None:
            signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
        yield
        return
    wanted = {int(signal.SIGTERM), int(signal.SIGINT)}

    def watch() -> None:
        while True:
            try:
                got = reader.recv(64)
            except OSError:
                return
            if not got:
                return
            if wanted & set(got):
                stop_request.request_stop()

    watcher = threading.Thread(target=watch, name="stop-on-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        writer.close()  # the watcher reads end-of-file and ends
        watcher.join(5)
        reader.close()
        stop_request.clear_stop()


# -- the ephemeral Prefect API: a child that dies with this process ----------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent_fn():
    """A ``preexec_fn`` for Popen that asks the kernel to SIGKILL the child when the thread that
    spawned it exits (so spawn from the main thread: that is when the process exits, even by
    SIGKILL). None where this cannot be done (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class EarlyAPI:
    """An ephemeral Prefect API spawned before anything else (:func:`spawn_ephemeral_api`)."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: str):
        self.proc, self.url, self.log_path = proc, url, log_path

    def wait_ready(self, deadline_s: float = 120.0) -> None:
        """Block until the server answers its health check (it started while the CLI imported
        and checked the study); RuntimeError naming its log when it exits or stays silent."""
        import time
        import urllib.error
        import urllib.request

        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the ephemeral Prefect API exited with code "
                                   f"{self.proc.returncode} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the ephemeral Prefect API did not answer within {deadline_s:.0f} s "
                           f"(log: {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_ephemeral_api() -> EarlyAPI | None:
    """Spawn Prefect's API server (the same uvicorn app Prefect's ephemeral mode runs, tied to
    this process) before the CLI imports Prefect and checks the study, so its few seconds of
    start-up overlap that work instead of following it; PREFECT_API_URL points this process and
    its children at it. Only in a process that has not imported Prefect yet (a fresh CLI), with
    no API URL set and ephemeral mode allowed; otherwise None and :func:`start_ephemeral_api`
    does it the usual way when the flow starts."""
    if "prefect" in sys.modules or os.environ.get("PREFECT_API_URL") \
            or os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true").lower() in (
                "0", "false"):
        return None
    preexec = die_with_parent_fn()
    if preexec is None:
        return None
    import atexit
    import importlib.util
    import tempfile

    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        return None
    app_dir = os.path.dirname(list(spec.submodule_search_locations)[0])
    with socket.socket() as sock:  # a free port on 127.0.0.1 (Prefect picks one the same way)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="prompt-transfer-api-", suffix=".log",  # noqa: SIM115
                                      delete=False)
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=preexec)
    log.close()
    api = EarlyAPI(proc, f"http://127.0.0.1:{port}/api", log.name)
    atexit.register(api.stop)
    os.environ["PREFECT_API_URL"] = api.url
    return api


def start_ephemeral_api() -> None:
    """Start Prefect's ephemeral API server now, on this (the main) thread, tied to this process.

    Without PREFECT_API_URL, Prefect starts a uvicorn subprocess on first use (from whichever
    thread needs it) and stops it at exit; a CLI killed by SIGKILL left it running for good.
    Started here, the server is registered as Prefect's default instance (as Prefect's own test
    harness does), so Prefect reuses it, and on Linux the kernel kills it when this process
    dies. Nothing happens when an API URL is set, ephemeral mode is off or a server exists.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    preexec = die_with_parent_fn()
    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return
    from prefect.server.api import server as prefect_server

    if None in prefect_server.SubprocessASGIServer._instances or preexec is None:
        return

    class _Subprocess:
        """The ``subprocess`` module as Prefect's server module sees it: Popen with preexec."""

        def __getattr__(self, name: str):
            return getattr(subprocess, name)

        @staticmethod
        def Popen(*args, **kwargs):  # noqa: N802 - the name Prefect calls
            return subprocess.Popen(*args, preexec_fn=preexec, **kwargs)

    class TiedServer(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            prefect_server.subprocess = _Subprocess()
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = subprocess

    TiedServer().start()


# -- task runners -------------------------------------------------------------------------------


def _one_torch_thread_each(n_threads: int) -> None:  # pragma: no cover - runs in workers
    import torch

    torch.set_num_threads(n_threads)


def make_task_runner(cfg: RunnerConfig) -> TaskRunner:
    """The Prefect task runner a study's ``runner`` section asks for. Worker processes split
    the machine's cores between them (:func:`torch_threads_per_unit`)."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    threads = torch_threads_per_unit(cfg)
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.max_workers,
                                     initializer=_one_torch_thread_each, initargs=(threads,))
    from prefect_dask import DaskTaskRunner

    from flows.runtime_dask import configure_local_dask

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    configure_local_dask()
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": cfg.max_workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": None,
    })


def _api_url() -> str | None:
    """The API this process talks to: the configured URL, else the ephemeral server's."""
    import prefect.settings
    from prefect.server.api.server import SubprocessASGIServer

    url = prefect.settings.get_current_settings().api.url
    if url:
        return str(url)
    server = SubprocessASGIServer()
    if not server.running:
        server.start()
    return server.api_url


def torch_threads_per_unit(cfg: RunnerConfig) -> int | None:
    """Torch threads each unit computes with: ``runner.torch_threads``, else this machine's
    cores shared by the concurrent units; on an existing Dask cluster (other machines) the
    workers' own setting unless ``torch_threads`` is given. The same rule on every runner, so
    threads, processes and Dask give identical scores (float reductions depend on the thread
    count; a different count changes the last bits, and training can amplify them)."""
    if cfg.torch_threads or cfg.dask_address:
        return cfg.torch_threads
    return max(1, (os.cpu_count() or 1) // cfg.max_workers)


def start_local_dask_early(cfg: RunnerConfig) -> None:
    """For a local Dask cluster whose Prefect API is known already (PREFECT_API_URL: the CLI's
    early API or a server's), start the workers' preloading fork server now, with the thread
    count :func:`runner_environment` would give it, so its imports overlap what the caller
    does before the flow starts. Anything else: nothing (the server starts with the first
    worker)."""
    if cfg.task_runner != "dask" or cfg.dask_address or not os.environ.get("PREFECT_API_URL"):
        return
    from flows.runtime_dask import configure_local_dask

    with added_environment(_thread_env(torch_threads_per_unit(cfg))):
        configure_local_dask(start=True)


def _thread_env(threads: int | None) -> dict[str, str]:
    """The thread count worker processes inherit (read by OpenMP and MKL when torch loads)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def added_environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ where they are non-empty and not set already (a user's own
    setting wins), removed again afterwards."""
    added = {k: v for k, v in values.items() if v and k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def runner_environment(cfg: RunnerConfig) -> Iterator[None]:
    """What the chosen runner needs around the flow, restored afterwards (Prefect's defaults,
    :func:`prefect_defaults`, are set first and stay).

    threads: this process computes with :func:`torch_threads_per_unit` torch threads.
    processes / local Dask: the worker processes started inside report to this run's Prefect
    API, not an ephemeral server each (its URL goes into the environment they inherit), and
    compute with the same thread count. An existing Dask cluster is configured by whoever
    started it."""
    prefect_defaults()
    threads = torch_threads_per_unit(cfg)
    if cfg.task_runner == "threads":
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
        return
    if cfg.dask_address:
        from flows.runtime_dask import check_dask_scheduler

        check_dask_scheduler(cfg.dask_address)
        yield
        return
    with added_environment({"PREFECT_API_URL": _api_url() or "", **_thread_env(threads)}):
        yield
