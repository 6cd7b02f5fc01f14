"""Issue 19, item 3: no silent wait, and none that SIGTERM cannot end. Each case runs the
installed ``prompt-transfer`` script in its own process (stderr piped, as under nohup or CI)
and measures how long it takes to end; ``pytest -rP`` prints the times.

(a) A Dask scheduler that accepts connections and never answers: one error line and exit 2
    within a minute, before the flow starts (no runs row, nothing written).
(b) A unit claimed by another run: the wait says who holds it and until when, and SIGTERM
    ends the waiting run at once (exit 143). A claim expiring years ahead is no valid lease:
    the run takes it over instead of waiting for an hour.
(c) A silent S3 endpoint, default settings: ``tests/test_storage_faults.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from flows.transfer_matrix import run_study
from prompt_core.config import parse_study
from tasks.claim_lease import Lease, claim_key
from tasks.keys import prompt_storage_key
from tasks.storage import open_storage
from tasks.tables import part_path, read_table
from tests.flow_helpers import study_dict

SCRIPT = Path(sys.executable).parent / "prompt-transfer"
YEARS = 5 * 365 * 24 * 3600.0


@contextmanager
def silent_tcp() -> Iterator[int]:
    """A 127.0.0.1 port that accepts connections and never sends a byte; yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "80", **extra}
    for k in ("PROMPT_TRANSFER_DASK_CONNECT_TIMEOUT", "PROMPT_TRANSFER_CLAIM_WAIT",
              "PROMPT_TRANSFER_CLAIM_TTL"):
        env.pop(k, None)
    return {**env, **extra}


def write_study(tmp_path: Path, d: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.timeout(240)
def test_silent_dask_scheduler_fails_in_one_line_within_a_minute(tiny_models, tasks_root,
                                                                tmp_path):
    store = tmp_path / "store"
    study = write_study(tmp_path, study_dict(tasks_root, ["pos_a"], str(store),
                                             tiny_models["encoder"]))
    with silent_tcp() as port:
        address = f"tcp://127.0.0.1:{port}"
        t0 = time.monotonic()
        p = subprocess.run([str(SCRIPT), "run", str(study), "--dask-address", address],
                           capture_output=True, text=True, timeout=200, env=cli_env())
        took = time.monotonic() - t0
    out = p.stdout + p.stderr
    print(f"silent Dask scheduler: exit {p.returncode} after {took:.1f} s\n{out}")
    assert p.returncode == 2, out
    assert f"Dask scheduler {address} did not answer within 10 s" in out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert took < 60
    assert not store.exists()  # no runs row, nothing at all


def _plant(store_root: str, unit: str, ahead: float, ttl_s: float | None) -> Lease:
    lease = Lease(unit, "other-run/elsewhere/7/7", uuid.uuid4().hex, time.time() + ahead, None,
                  ttl_s)
    open_storage(store_root).write_bytes(claim_key(unit), lease.to_bytes())
    return lease


def _forget_prompt(store_root: str, study: str) -> str:
    """Remove the study's one prompt (file, sidecar, part) so a rerun must train it: its key."""
    st = open_storage(store_root)
    row = read_table(st, "prompts").to_pylist()[0]
    skey = prompt_storage_key(row["model"], row["task"], row["prompt_key"])
    for key in (skey, skey.removesuffix(".safetensors") + ".json",
                part_path("prompts", {"study": study, "model": row["model"]},
                          row["prompt_key"])):
        st.delete(key)
    return row["prompt_key"]


@pytest.mark.timeout(400)
def test_sigterm_ends_a_claim_wait_and_a_claim_years_ahead_is_taken_over(
        prefect_harness, tiny_models, tasks_root, tmp_path):
    from prefect.settings import PREFECT_API_URL

    store = str(tmp_path / "store")
    d = study_dict(tasks_root, ["pos_a"], store, tiny_models["encoder"])
    assert run_study(parse_study(d)).status == "completed"
    key = _forget_prompt(store, d["name"])

    # (b) another run holds the prompt (a live claim, renewed to 10 min ahead): the rerun
    # waits, says so, and SIGTERM ends it at once
    holder = _plant(store, f"prompt-{key}", 500, 600)
    study = write_study(tmp_path, d)
    p = subprocess.Popen([str(SCRIPT), "run", str(study)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env=cli_env(PREFECT_API_URL=str(PREFECT_API_URL.value())))
    lines: list[str] = []
    waiting = threading.Event()

    def read() -> None:
        for line in p.stdout:
            lines.append(line)
            if "being computed by" in line:
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert waiting.wait(240), "no wait message:\n" + "".join(lines)
        time.sleep(1)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        code = p.wait(60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    reader.join(10)
    out = "".join(lines)
    print(f"claim wait + SIGTERM: exit {code} {took:.1f} s after SIGTERM\n{out}")
    said = next(line for line in lines if "being computed by" in line)
    assert holder.owner in " ".join(out.split()) and "waiting for it" in said
    assert code == 143 and "run stopped by SIGTERM" in out
    assert took < 15  # the poll step, not the hour's wait
    assert open_storage(store).read_bytes(claim_key(f"prompt-{key}")) == holder.to_bytes()

    # a claim expiring years ahead (a clock far ahead, a hand-edited file): taken over
    _plant(store, f"prompt-{key}", YEARS, None)
    t0 = time.monotonic()
    r = run_study(parse_study(d))
    took = time.monotonic() - t0
    print(f"claim expiring years ahead: run {r.status} in {took:.1f} s")
    assert r.status == "completed" and r.n_prompts_trained == 1
    assert open_storage(store).list("claims", include_temp=True) == []
    assert took < 120
