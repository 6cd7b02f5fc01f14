"""Issue 19, item 3b: waits on another run's claim are bounded, said and stoppable.

* A claim whose expiry lies further ahead than its TTL plus the clock-skew allowance (a host
  whose clock runs years ahead, a file edited by hand) is no valid lease: taken over, with a
  warning, instead of blocking the unit for the whole wait.
* While a unit waits, who holds it and until when is logged, and again as the wait goes on.
* A stop request (what SIGTERM and Ctrl-C set: ``tasks.stop``) ends a wait at once.

The whole-run checks (a real process stopped by SIGTERM while it waits) are in
``tests/test_bounded_waits.py``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from tasks import claims, stop
from tasks.claim_lease import CLAIM_CLOCK_SKEW, ClaimWaitStopped, Lease, claim_key
from tasks.storage import Storage

pytestmark = pytest.mark.timeout(120)

YEARS = 5 * 365 * 24 * 3600.0


@pytest.fixture
def store(tmp_path) -> Storage:
    return Storage(str(tmp_path / "root"))


@pytest.fixture(autouse=True)
def _no_stop_left():
    stop.clear_stop()
    yield
    stop.clear_stop()


def _plant(store: Storage, unit: str, ahead: float, ttl_s: float | None = None) -> Lease:
    lease = Lease(unit, "far-run/host/1/1", uuid.uuid4().hex, time.time() + ahead, None, ttl_s)
    store.write_bytes(claim_key(unit), lease.to_bytes())
    return lease


def test_lease_validity_window():
    now = time.time()
    lease = Lease("u", "o", "t", now + 60 + CLAIM_CLOCK_SKEW - 1)
    assert lease.live(60, now) and not lease.implausible(60, now)
    far = Lease("u", "o", "t", now + 60 + CLAIM_CLOCK_SKEW + 1)
    assert far.implausible(60, now) and not far.live(60, now) and not far.expired(now)
    # the TTL its holder recorded counts: a holder with a longer TTL is not taken over
    assert Lease("u", "o", "t", now + 500, ttl_s=600).live(60, now)
    assert Lease("u", "o", "t", now + 500, ttl_s=600) == Lease.from_bytes(
        Lease("u", "o", "t", now + 500, ttl_s=600).to_bytes())
    with pytest.raises(ValueError, match="ttl_s"):
        Lease.from_bytes(b'{"unit_key": "u", "owner": "o", "token": "t", "expires_at": 1, '
                         b'"ttl_s": -5}')


def test_claim_expiring_years_ahead_is_taken_over_with_a_warning(store, caplog):
    planted = _plant(store, "far", YEARS)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tasks.claims"):
        with claims.unit_claim(store, "far", "me", is_done=lambda: False, ttl_s=60,
                               wait_s=3600) as mine:
            assert mine is True
            assert claims.read_claim(store, "far").owner == "me"
    assert time.monotonic() - t0 < 10  # not the hour's wait
    (msg,) = [r.getMessage() for r in caplog.records if "not a valid lease" in r.getMessage()]
    assert planted.owner in msg and claim_key("far") in msg
    assert claims._iso(planted.expires_at) in msg
    assert store.list("claims", include_temp=True) == []  # released: the whole chain


def test_future_claim_within_its_recorded_ttl_is_waited_for(store):
    lease = _plant(store, "long", 500, ttl_s=600)
    assert claims.try_claim(store, "long", "me", 60) is None
    assert claims.read_claim(store, "long") == lease


def test_wait_is_logged_again_as_it_goes_on(store, monkeypatch):
    monkeypatch.setattr(claims, "WAIT_LOG_EVERY", 0.3)
    _plant(store, "held", 50)  # live, within TTL 60
    seen: list[float] = []
    with pytest.raises(claims.ClaimTimeout):
        with claims.unit_claim(store, "held", "me", is_done=lambda: False, ttl_s=60,
                               wait_s=1.5, poll_s=0.05,
                               on_wait=lambda lease: seen.append(time.monotonic())):
            pytest.fail("must not get the claim")
    assert len(seen) >= 3  # at once, then every 0.3 s: not only when the holder changes


def test_log_wait_says_who_and_until_when(store, monkeypatch):
    lease = _plant(store, "who", 50)
    lines: list[str] = []

    class Logger:
        def warning(self, fmt, *args):
            lines.append(fmt % args)

    monkeypatch.setattr("prefect.get_run_logger", lambda: Logger())
    log = claims.log_wait("train tiny/pos_a seed=0")
    log(lease)
    log(lease)
    assert len(lines) == 2
    assert lines[0].startswith("train tiny/pos_a seed=0: being computed by far-run/host/1/1")
    assert claims._iso(lease.expires_at) in lines[0] and "waiting for it" in lines[0]


def test_stop_request_ends_a_claim_wait_at_once(store):
    _plant(store, "stopme", 50)
    errors: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            with claims.unit_claim(store, "stopme", "me", is_done=lambda: False, ttl_s=60,
                                   wait_s=3600, poll_s=1.0):
                pass
        except BaseException as exc:  # checked below
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert started.wait(10)
    time.sleep(0.5)
    t0 = time.monotonic()
    stop.request_stop()
    t.join(10)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 3
    (err,) = errors
    assert isinstance(err, ClaimWaitStopped) and "far-run/host/1/1" in str(err)
    assert "stopme" in str(err)


def test_no_unit_is_claimed_once_a_stop_is_requested(store):
    stop.request_stop()
    with pytest.raises(ClaimWaitStopped, match="run stopped while unit free waited"):
        with claims.unit_claim(store, "free", "me", is_done=lambda: False, ttl_s=60):
            pytest.fail("a stopped run starts no unit")
    assert claims.read_claim(store, "free") is None


# -- settings and owner names (moved from tests/test_claims.py) ------------------------------


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv(claims.CLAIM_TTL_ENV, "7.5")
    monkeypatch.delenv(claims.CLAIM_WAIT_ENV, raising=False)
    assert claims.claim_ttl() == 7.5
    assert claims.claim_wait() == claims.DEFAULT_CLAIM_WAIT == 3600.0
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(claims.CLAIM_WAIT_ENV, bad)
        with pytest.raises(ValueError, match=claims.CLAIM_WAIT_ENV):
            claims.claim_wait()


def test_default_owner_names_run_host_process_thread():
    run_id, host, pid, thread = claims.default_owner("run-1").split("/")
    assert run_id == "run-1" and host and int(pid) > 0 and int(thread) == threading.get_ident()
