"""A real Prefect server for the deployment tests: `prefect server start` on a free port of
127.0.0.1 with its own PREFECT_HOME, work pools, `prefect deploy`, `prefect worker start`.

Everything started here is stopped when the :func:`prefect_server` context exits (also when a
test fails): each process runs in its own process group, which is killed, and so is every
process a worker started (a flow run process runs in a session of its own).

In-process Prefect calls reach this server inside :meth:`PrefectServer.api`; subprocesses get
its URL from :attr:`PrefectServer.env`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
STARTUP_DEADLINE_S = 120.0  # a busy 2-core machine: the server needs 10-30 s
CLI_DEADLINE_S = 240.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a process started by :meth:`PrefectServer._spawn`: its group (SIGTERM, then SIGKILL
    after ``grace_s``) and any descendant that left the group (flow run processes)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for d in descendants:
            with contextlib.suppress(psutil.Error):
                d.send_signal(sig)
        _, alive = psutil.wait_procs(descendants, timeout=wait_s)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        if not alive:
            return


@dataclass
class PrefectServer:
    """A running `prefect server` and what the tests started against it."""

    url: str  # http://127.0.0.1:<port>/api
    root: Path  # PREFECT_HOME, logs
    env: dict[str, str]  # the environment of a subprocess that talks to this server
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               cwd: Path = REPO) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=cwd, env=env or self.env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()  # the child holds its own descriptor
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        """The end of a started process's output (for assertion messages)."""
        return _tail(self.root / f"{name}.log")

    def logs(self) -> str:
        """The end of every started process's output."""
        return "\n".join(f"--- {n} ---\n{self.log(n)}" for n, _ in self.procs)

    def cli(self, *args: str, cwd: Path = REPO, timeout: float = CLI_DEADLINE_S,
            env: dict[str, str] | None = None) -> str:
        """Run ``prefect <args>`` against this server; its output, or AssertionError with it."""
        try:
            out = subprocess.run([PREFECT, "--no-prompt", *args], cwd=cwd,
                                 env={**self.env, **(env or {})}, capture_output=True,
                                 text=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"prefect {' '.join(args)}: no answer in {timeout} s") from exc
        text = out.stdout + out.stderr
        assert out.returncode == 0, f"prefect {' '.join(args)} failed ({out.returncode}):\n{text}"
        return text

    def create_pool(self, name: str, type_: str = "process",
                    base_job_template: Path | None = None) -> str:
        """``prefect work-pool create`` (the server validates a base job template)."""
        args = ["work-pool", "create", name, "--type", type_]
        if base_job_template is not None:
            args += ["--base-job-template", str(base_job_template)]
        return self.cli(*args)

    def deploy(self, prefect_file: Path, *names: str, cwd: Path = REPO) -> str:
        """``prefect deploy --prefect-file <file> --name <n>...`` (every deployment if none)."""
        which = [a for n in names for a in ("--name", n)] or ["--all"]
        return self.cli("deploy", "--prefect-file", str(prefect_file), *which, cwd=cwd)

    def start_worker(self, pool: str, name: str, extra_env: dict[str, str] | None = None
                     ) -> subprocess.Popen:
        """``prefect worker start --pool <pool>``, polling every second; stopped at exit."""
        env = {**self.env, "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_WORKER_PREFETCH_SECONDS": "2", **(extra_env or {})}
        return self._spawn(name, [PREFECT, "worker", "start", "--pool", pool, "--name", name],
                           env)

    def wait_workers_online(self, pool: str, names: set[str],
                            deadline_s: float = STARTUP_DEADLINE_S) -> None:
        """Wait until every named worker has sent a heartbeat for ``pool``."""
        from prefect.client.orchestration import get_client

        end = time.monotonic() + deadline_s
        seen: set[str] = set()
        with self.api(), get_client(sync_client=True) as client:
            while time.monotonic() < end:
                seen = {w.name for w in client.read_workers_for_work_pool(pool)}
                if names <= seen:
                    return
                for n, p in self.procs:
                    assert n not in names or p.poll() is None, f"worker {n} exited:\n{self.log(n)}"
                time.sleep(0.5)
        raise AssertionError(f"workers {sorted(names - seen)} not online after {deadline_s} s:\n"
                             f"{self.logs()}")

    @contextlib.contextmanager
    def api(self) -> Iterator[None]:
        """In-process Prefect calls inside this block go to this server, events and logs
        included: this process's event and log senders keep the API they started with, so
        they are flushed and stopped on the way in (they may serve the session's test
        harness) and on the way out (new ones start for whichever API comes next)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        _drain_senders()
        try:
            with temporary_settings({PREFECT_API_URL: self.url}):
                yield
        finally:
            _drain_senders()

    def wait_flow_run(self, flow_run_id: Any, deadline_s: float) -> Any:
        """The flow run once it is in a final state; AssertionError with the logs at the
        deadline."""
        from prefect.client.orchestration import get_client

        end = time.monotonic() + deadline_s
        with self.api(), get_client(sync_client=True) as client:
            while True:
                run = client.read_flow_run(flow_run_id)
                if run.state is not None and run.state.is_final():
                    return run
                if time.monotonic() > end:
                    raise AssertionError(
                        f"flow run {run.name} still {run.state_name} after {deadline_s} s:\n"
                        f"{self.logs()}")
                time.sleep(1.0)

    def stop_all(self) -> None:
        """Stop every started process, workers first, the server last."""
        for _, proc in reversed(self.procs):
            _stop(proc)
        self.procs.clear()


def _drain_senders(timeout_s: float = 30.0) -> None:
    """Flush and stop this process's Prefect event and log senders (new ones start on demand,
    bound to the API of the settings in effect then)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=timeout_s, at_exit=False)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(root: Path, deadline_s: float = STARTUP_DEADLINE_S) -> Iterator[PrefectServer]:
    """Start `prefect server start` on 127.0.0.1:<free port> (own PREFECT_HOME under ``root``,
    no UI, no analytics), wait for /api/health, yield it; stop it and all it started at exit."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "PROMPT_TRANSFER_STORAGE"}
    env.update({
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    server = PrefectServer(url, root, env)
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    try:
        proc = server._spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], server_env)
        end = time.monotonic() + deadline_s
        while not _healthy(url):
            assert proc.poll() is None, f"prefect server exited:\n{server.log('server')}"
            assert time.monotonic() < end, (
                f"prefect server not healthy after {deadline_s} s:\n{server.log('server')}")
            time.sleep(0.5)
        yield server
    finally:
        server.stop_all()
