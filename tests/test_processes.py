"""No process outlives its run: ``kill -9`` of ``prompt-transfer run`` takes Prefect's ephemeral
API server (a uvicorn child) with it; SIGTERM stops a run as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.flow_helpers import study_dict

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc; the kernel tie (PR_SET_PDEATHSIG) is Linux")


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, start time) of a process from /proc, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], fields[19]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] == pid:
            kids.append(int(entry))
    return kids


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every descendant (the start time tells a reused pid apart)."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for kid in _children(todo.pop()):
            if (st := _stat(kid)) is not None:
                found[kid] = st[2]
                todo.append(kid)
    return found


def _alive(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"  # a zombie is dead, unreaped


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _start_run(tiny_models, tasks_root, tmp_path, steps: int = 4
               ) -> tuple[subprocess.Popen, Path]:
    """``prompt-transfer run`` on a tiny study, as a user starts it: no Prefect API set, its own
    Prefect home; stdout and stderr go to the returned log file."""
    d = study_dict(tasks_root, ["pos_a", "pos_b"], str(tmp_path / "store"),
                   tiny_models["encoder"])
    d["training"].update(steps=steps, eval_every=max(2, steps // 2))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(d))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_LOGGING_LEVEL="WARNING")
    log = tmp_path / "cli.log"
    with log.open("wb") as fh:
        cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(study)],
                               cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return cli, log


def _wait_for_server(cli: subprocess.Popen, log: Path) -> int:
    """Pid of the CLI's uvicorn child, once it exists (imports and the task check come first)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and cli.poll() is None:
        server = next((p for p in _descendants(cli.pid) if "uvicorn" in _cmdline(p)), None)
        if server is not None:
            return server
        time.sleep(0.2)
    raise AssertionError(f"no server child appeared (exit {cli.poll()}): "
                         f"{log.read_text()[-2000:]}")


def _gone_within(seen: dict[int, str], seconds: float) -> dict[int, str]:
    """Wait until none of ``seen`` is alive; what is still alive after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in seen.items()):
        time.sleep(0.2)
    return {p: _cmdline(p)[:120] for p, s in seen.items() if _alive(p, s)}


def _cleanup(cli: subprocess.Popen, seen: dict[int, str]) -> None:
    """Never leave a process behind, even when a test fails."""
    if cli.poll() is None:
        cli.kill()
        cli.wait()
    for p, s in seen.items():
        if _alive(p, s):
            os.kill(p, signal.SIGKILL)


def test_kill_9_of_run_leaves_no_process(tiny_models, tasks_root, tmp_path):
    """The CLI starts the ephemeral API itself, tied to it: once the server child exists,
    SIGKILL the CLI, and every process it started is gone within 15 s."""
    cli, log = _start_run(tiny_models, tasks_root, tmp_path)
    seen: dict[int, str] = {}
    try:
        _wait_for_server(cli, log)
        seen = _descendants(cli.pid)  # everything started so far, the server included
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=10)
        left = _gone_within(seen, 15)
        assert not left, f"processes outlived the killed run: {left}"
    finally:
        _cleanup(cli, seen)


def test_sigterm_stops_run_like_ctrl_c(tiny_models, tasks_root, tmp_path):
    """SIGTERM during training: one line, exit 143, the runs row says failed, no process left
    (by default SIGTERM killed the CLI on the spot: no runs row, the server left running)."""
    import pyarrow.parquet as pq

    cli, log = _start_run(tiny_models, tasks_root, tmp_path, steps=300)  # still training
    seen: dict[int, str] = {}
    try:
        _wait_for_server(cli, log)
        deadline = time.monotonic() + 120
        while "prepare: 2/2" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        seen = _descendants(cli.pid)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
        text = log.read_text()
        assert "error: run stopped by SIGTERM" in text and "Traceback" not in text, text
        [runs_part] = (tmp_path / "store" / "tables" / "runs").rglob("*.parquet")
        assert pq.read_table(runs_part).column("status").to_pylist() == ["failed"]
        left = _gone_within(seen, 15)
        assert not left, f"processes outlived the stopped run: {left}"
    finally:
        _cleanup(cli, seen)
