"""Unit claims: leases that keep two runs (or two workers) from computing the same unit.

A run about to compute a unit first claims it: it creates ``claims/<unit_key>.json`` under the
storage root with a conditional create (:meth:`tasks.storage.Storage.create_bytes`), so of
racing claimers exactly one wins. The claim is a :class:`Lease` with an expiry; while the unit
is computed a heartbeat thread renews it every ``ttl/3``, and it is removed when the work ends.
Another run that finds the unit claimed waits (polling) until the result is stored, or the
claim goes away, or its wait runs out (:class:`ClaimTimeout`).

A crashed holder stops renewing, so its lease expires after at most ``ttl`` and a waiter takes
over. Taking over never deletes or overwrites the expired claim (two takers could both do
that): the taker creates the successor ``claims/<unit_key>.json.next-<expired token>``,
conditionally, so of racing takers again exactly one wins. The current claim is the last of
the chain head -> next-... ; whoever releases the current claim removes the whole chain.
A holder renews only its own file, and only while its lease has not expired by its own clock
and no successor exists, so a holder that was paused past its expiry finds out it lost the
claim instead of writing over the taker's.

Expiry compares wall clocks (unix seconds) of different hosts: they must agree to well within
the TTL (NTP does). A holder that stalls for longer than the TTL (and whose heartbeat cannot
run) loses its claim, and then two runs may compute the unit; results are written atomically,
so the cost is work, not data. An expiry further ahead than the lease's TTL plus
:data:`~tasks.claim_lease.CLAIM_CLOCK_SKEW` (30 s) is no valid lease (a clock far ahead, a
file edited by hand): it is taken over like an expired one, with a warning.

A waiter logs who holds the unit and until when (``on_wait``, :func:`log_wait`), again every
:data:`WAIT_LOG_EVERY` seconds, and ends at once with :class:`ClaimWaitStopped` when the run is
stopped (SIGTERM, Ctrl-C: :mod:`tasks.stop`).

Settings, from the environment (positive numbers of seconds; explicit arguments win):

===============================  =======  ======================================================
``PROMPT_TRANSFER_CLAIM_TTL``    60 s     lease lifetime; a crashed holder blocks at most this
``PROMPT_TRANSFER_CLAIM_WAIT``   3600 s   how long :func:`unit_claim` waits for a live holder
===============================  =======  ======================================================
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from tasks import stop
from tasks.claim_lease import (
    CLAIM_CLOCK_SKEW,
    CLAIM_TTL_ENV,
    CLAIM_WAIT_ENV,
    CLAIMS_PREFIX,
    DEFAULT_CLAIM_TTL,
    DEFAULT_CLAIM_WAIT,
    ClaimTimeout,
    ClaimWaitStopped,
    Lease,
    check_seconds,
    claim_key,
    claim_ttl,
    claim_wait,
    env_seconds,
    iso_utc,
    next_key,
)
from tasks.storage import Storage, StorageError, StorageTimeoutError

__all__ = [  # the lease and its settings live in tasks.claim_lease; re-exported here
    "CLAIMS_PREFIX", "CLAIM_CLOCK_SKEW", "CLAIM_TTL_ENV", "CLAIM_WAIT_ENV", "DEFAULT_CLAIM_TTL",
    "DEFAULT_CLAIM_WAIT", "ClaimTimeout", "ClaimWaitStopped", "Lease", "claim_key",
    "claim_ttl", "claim_wait", "default_owner", "env_seconds", "log_wait", "read_claim",
    "release", "renew", "try_claim", "unit_claim",
]

DEFAULT_POLL = 1.0
WAIT_LOG_EVERY = 30.0  # while waiting for a holder: on_wait again at least this often (s)
_MAX_CHAIN = 1000  # takeovers of one unit before the chain is taken as broken
_ATTEMPTS = 3  # rounds of one try_claim: read the chain, create the next link, read back

log = logging.getLogger(__name__)
_iso = iso_utc


def default_owner(run_id: str) -> str:
    """Owner name of a claim made by this thread: ``<run_id>/<hostname>/<pid>/<thread id>``."""
    return f"{run_id}/{socket.gethostname()}/{os.getpid()}/{threading.get_ident()}"


# -- reading the chain --------------------------------------------------------------------------
def _read(storage: Storage, unit_key: str, after: str | None) -> Lease | None:
    """The lease stored at position ``after`` of the chain (None: the head); None if absent.

    A file that is not a lease (damaged by hand) counts as an expired lease with a token
    derived from its bytes, so it can be taken over like a crashed holder's claim.
    """
    key = claim_key(unit_key) if after is None else next_key(unit_key, after)
    try:
        raw = storage.read_bytes(key)
    except StorageTimeoutError:
        raise
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError | IsADirectoryError):
            return None
        raise
    try:
        lease = Lease.from_bytes(raw)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        digest = hashlib.sha256(raw).hexdigest()[:32]
        log.warning("claim %s is not a lease (%s); treating it as expired", storage.uri(key), exc)
        return Lease(unit_key, "<unreadable claim>", f"damaged-{digest}", 0.0, after)
    return replace(lease, unit_key=unit_key, after=after)  # its place in the chain rules


def _chain(storage: Storage, unit_key: str) -> list[Lease]:
    """The claim chain of a unit, head first (the last one is current); [] if unclaimed."""
    lease = _read(storage, unit_key, None)
    chain: list[Lease] = []
    while lease is not None:
        chain.append(lease)
        if len(chain) > _MAX_CHAIN:
            raise StorageError(
                f"claim chain of unit {unit_key} at {storage.uri(claim_key(unit_key))} has "
                f"more than {_MAX_CHAIN} links; remove {storage.uri(CLAIMS_PREFIX)}/"
                f"{unit_key}.json* when no run is computing it"
            )
        lease = _read(storage, unit_key, lease.token)
    return chain


def read_claim(storage: Storage, unit_key: str) -> Lease | None:
    """The current claim on a unit (live or expired), None if it is not claimed."""
    chain = _chain(storage, unit_key)
    return chain[-1] if chain else None


# -- claiming, renewing, releasing -----------------------------------------------------------
def _attempt(
    storage: Storage, unit_key: str, owner: str, ttl_s: float
) -> tuple[Lease | None, Lease | None]:
    """(our new lease, None) if we won the claim, else (None, the claim in the way or None)."""
    holder: Lease | None = None
    for _ in range(_ATTEMPTS):
        current = read_claim(storage, unit_key)
        if current is not None and current.live(ttl_s):
            return None, current
        after = None if current is None else current.token
        mine = Lease(unit_key, owner, uuid.uuid4().hex, time.time() + ttl_s, after, ttl_s)
        created = storage.create_bytes(mine.storage_key, mine.to_bytes())
        # Read back: a create reported as lost may have landed (retried PUT), and a store that
        # ignores If-None-Match may have let a later writer overwrite ours.
        holder = _read(storage, unit_key, after)
        if holder is not None and holder.token == mine.token:
            if current is not None and current.expired():
                log.info(
                    "unit %s: took over the expired claim of %s (expired %s)",
                    unit_key,
                    current.owner,
                    _iso(current.expires_at),
                )
            elif current is not None:
                log.warning(
                    "unit %s: took over the claim %s of %s: it expires %s, %.0f s ahead, more "
                    "than its TTL plus %g s of clock skew (%.0f s): not a valid lease",
                    unit_key, storage.uri(current.storage_key), current.owner,
                    _iso(current.expires_at), current.remaining(), CLAIM_CLOCK_SKEW,
                    current.max_ahead(ttl_s),
                )
            return mine, None
        if created:
            log.warning(
                "claim %s was overwritten right after it was created: the store seems "
                "to ignore conditional writes (If-None-Match)",
                storage.uri(mine.storage_key),
            )
        if holder is not None and holder.live(ttl_s):
            return None, holder
    return None, holder


def try_claim(storage: Storage, unit_key: str, owner: str, ttl_s: float) -> Lease | None:
    """Claim a unit for ``ttl_s`` seconds: the new lease, or None if another claim holds it.

    An unclaimed unit is claimed with a conditional create; an expired claim (a crashed or
    stalled holder) is taken over by conditionally creating its successor. Of racing
    claimers exactly one gets a lease (on stores that honour conditional creates).
    """
    ttl_s = check_seconds("ttl_s", ttl_s)
    return _attempt(storage, unit_key, owner, ttl_s)[0]


def _superseded(storage: Storage, lease: Lease) -> bool:
    return storage.exists(next_key(lease.unit_key, lease.token))


def _still_ours(storage: Storage, lease: Lease) -> bool:
    stored = _read(storage, lease.unit_key, lease.after)
    return stored is not None and stored.token == lease.token and not _superseded(storage, lease)


def renew(storage: Storage, lease: Lease, ttl_s: float) -> Lease | None:
    """Extend a held lease to ``ttl_s`` seconds from now: the renewed lease, or None if it is
    lost (expired by our clock, removed, or taken over); nothing is written then.
    """
    ttl_s = check_seconds("ttl_s", ttl_s)
    if lease.expired() or not _still_ours(storage, lease):
        return None
    left = lease.remaining()
    if left <= 0:
        return None
    renewed = replace(lease, expires_at=time.time() + ttl_s, ttl_s=ttl_s)
    # The write must land before the old lease expires, else a taker may already be there.
    storage.write_bytes(
        renewed.storage_key, renewed.to_bytes(), timeout=min(left, storage.deadline)
    )
    return renewed


def release(storage: Storage, lease: Lease) -> bool:
    """Remove a claim if it is still ours and live: True if removed, False if left alone.

    An expired lease is left as it is (a waiter may be taking it over right now; it is
    harmless, the next claimer takes it over). Releasing a claim that took over others
    removes the whole chain, head first, so the unit is free at once.
    """
    if lease.expired() or not _still_ours(storage, lease):
        return False
    chain = _chain(storage, lease.unit_key)
    if not chain or chain[-1].token != lease.token:  # ours is not reachable from the head
        storage.delete(lease.storage_key)
        return True
    for link in chain:  # head first: the unit is free as soon as the head is gone
        storage.delete(link.storage_key)
    return True


# -- the context manager ---------------------------------------------------------------------
class _Heartbeat:
    """Daemon thread renewing a lease every ``ttl/3`` until stopped or the lease is lost."""

    def __init__(self, storage: Storage, lease: Lease, ttl_s: float):
        self.storage = storage
        self.lease = lease
        self.ttl_s = ttl_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"claim-heartbeat {lease.unit_key}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                renewed = renew(self.storage, self.lease, self.ttl_s)
            except (StorageError, OSError) as exc:
                if not self.lease.expired():
                    log.warning(
                        "unit %s: renewing its claim failed, retrying: %s", self.lease.unit_key, exc
                    )
                    continue
                renewed = None
            if renewed is None:
                self.lost = True
                log.warning(
                    "unit %s: lost its claim %s (expired %s or taken over); another run "
                    "may compute it as well",
                    self.lease.unit_key,
                    self.storage.uri(self.lease.storage_key),
                    _iso(self.lease.expires_at),
                )
                return
            self.lease = renewed

    def stop(self) -> Lease:
        """Stop renewing; the latest lease (waits for a renewal in flight, at most a TTL)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.ttl_s)
        return self.lease


def _acquire(
    storage: Storage,
    unit_key: str,
    owner: str,
    is_done: Callable[[], bool],
    ttl_s: float,
    wait_s: float,
    poll_s: float,
    on_wait: Callable[[Lease], None] | None,
) -> Lease | None:
    """Our lease once we win the claim, None once ``is_done()``; ClaimTimeout after wait_s,
    ClaimWaitStopped at once when the run is stopped (:mod:`tasks.stop`)."""
    start = time.monotonic()
    deadline = start + wait_s
    seen: str | None = None
    told = start
    if stop.stop_requested():  # the run is ending: no unit starts now (a retry, say)
        raise ClaimWaitStopped(unit_key, None, 0.0)
    while True:
        mine, holder = _attempt(storage, unit_key, owner, ttl_s)
        if mine is not None:
            return mine
        if is_done():
            return None
        now = time.monotonic()
        if holder is not None and (holder.token != seen or now - told >= WAIT_LOG_EVERY):
            seen, told = holder.token, now
            if on_wait is not None:
                on_wait(holder)
        if now >= deadline:
            raise ClaimTimeout(unit_key, holder, now - start, storage.uri(claim_key(unit_key)))
        if stop.wait(min(poll_s, deadline - now)):
            raise ClaimWaitStopped(unit_key, holder, time.monotonic() - start)


def log_wait(label: str) -> Callable[[Lease], None]:
    """An ``on_wait`` for :func:`unit_claim` that logs (a warning of the current Prefect run,
    so the console shows it) which run computes the unit ``label``, until when its claim
    runs, and how long this run has waited: when a holder is first seen, and again every
    :data:`WAIT_LOG_EVERY` seconds while the wait goes on."""
    first: list[float] = []

    def log(lease: Lease) -> None:
        from prefect import get_run_logger

        first[:] = first or [time.monotonic()]
        get_run_logger().warning(
            "%s: being computed by %s (its claim runs until %s and is renewed while it "
            "works); waiting for it, %.0f s so far", label, lease.owner,
            _iso(lease.expires_at), time.monotonic() - first[0])
    return log


@contextmanager
def unit_claim(
    storage: Storage,
    unit_key: str,
    owner: str,
    *,
    is_done: Callable[[], bool],
    ttl_s: float | None = None,
    wait_s: float | None = None,
    poll_s: float | None = None,
    on_wait: Callable[[Lease], None] | None = None,
) -> Iterator[bool]:
    """Hold the claim on a unit while computing it; yield whether the caller must compute.

    Yields True when the caller holds the claim: compute and store the unit inside the
    ``with`` block; a daemon thread renews the lease every ``ttl_s/3`` and the claim is
    released when the block exits, also on an exception. Yields False when the result is
    there already: ``is_done()`` turned true while waiting for another holder, or right after
    winning the claim (the other run finished between the caller's own check and the claim).

    While another run holds a live claim this polls every ``poll_s`` seconds (default 1),
    calling ``on_wait(holder)`` each time a new holder is seen (to log who it waits for), and
    takes the claim over once it expires (a crashed holder). After ``wait_s`` seconds
    (default $PROMPT_TRANSFER_CLAIM_WAIT or 3600; 0 means do not wait) it raises
    :class:`ClaimTimeout` naming the unit, the holder and its expiry. ``ttl_s`` defaults to
    $PROMPT_TRANSFER_CLAIM_TTL or 60 s.

    Example::

        with unit_claim(storage, key, default_owner(run_id), is_done=stored) as mine:
            if not mine:
                return read_stored()
            write(compute())
    """
    ttl = claim_ttl() if ttl_s is None else check_seconds("ttl_s", ttl_s)
    wait = claim_wait() if wait_s is None else check_seconds("wait_s", wait_s, allow_zero=True)
    poll = DEFAULT_POLL if poll_s is None else check_seconds("poll_s", poll_s)
    lease = _acquire(storage, unit_key, owner, is_done, ttl, wait, poll, on_wait)
    if lease is None:
        yield False
        return
    heartbeat = _Heartbeat(storage, lease, ttl)
    try:
        if is_done():
            yield False
            return
        heartbeat.start()
        yield True
    finally:
        final = heartbeat.stop()
        try:
            release(storage, final)
        except (StorageError, OSError) as exc:  # never hide the block's own exception
            log.warning(
                "unit %s: could not release its claim %s (it expires %s): %s",
                unit_key,
                storage.uri(final.storage_key),
                _iso(final.expires_at),
                exc,
            )
