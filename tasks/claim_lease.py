"""What a unit claim is (:mod:`tasks.claims` claims, renews and releases them): the
:class:`Lease` record, where it is stored, the settings (TTL, wait, clock skew) and the errors
a wait ends with.

A lease is *live* while its expiry is ahead, but never further ahead than its TTL plus
:data:`CLAIM_CLOCK_SKEW`: a holder renews it to ``now + ttl`` by its own clock, so an expiry
further out (a host whose clock runs far ahead, a file edited by hand: "expires in 2031")
is not a lease anyone holds. Such a claim is treated like an expired one (logged, taken
over) instead of blocking every run that reaches the unit until the wait runs out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

CLAIM_TTL_ENV = "PROMPT_TRANSFER_CLAIM_TTL"
CLAIM_WAIT_ENV = "PROMPT_TRANSFER_CLAIM_WAIT"
DEFAULT_CLAIM_TTL = 60.0
DEFAULT_CLAIM_WAIT = 3600.0
CLAIM_CLOCK_SKEW = 30.0  # how far ahead a holder's clock may run: beyond TTL + this, invalid
CLAIMS_PREFIX = "claims"
_NEXT = ".next-"


def iso_utc(ts: float) -> str:
    """Unix seconds as UTC ISO text (to the second)."""
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # beyond what datetime can show
        return f"unix time {ts:.0f}"


def claim_key(unit_key: str) -> str:
    """Storage key of a unit's (first) claim: ``claims/<unit_key>.json``."""
    if not isinstance(unit_key, str) or not unit_key.strip("/"):
        raise ValueError(f"unit key must be a non-empty string, got {unit_key!r}")
    return f"{CLAIMS_PREFIX}/{unit_key}.json"


def next_key(unit_key: str, token: str) -> str:
    """Storage key of the claim that took over the lease ``token``."""
    return f"{claim_key(unit_key)}{_NEXT}{token}"


@dataclass(frozen=True)
class Lease:
    """One claim on a unit: who holds it, a unique token, and when it expires.

    ``expires_at`` is unix seconds (wall clock). ``after`` is the token of the expired lease
    this one took over (its file is ``claims/<unit_key>.json.next-<after>``), None for the
    first claim (``claims/<unit_key>.json``). ``ttl_s`` is the lifetime its holder renews it
    to (None in records of older versions and in hand-made files).
    """

    unit_key: str
    owner: str
    token: str
    expires_at: float
    after: str | None = None
    ttl_s: float | None = None

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the lease expires (negative once it has)."""
        return self.expires_at - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        """True once the expiry has passed."""
        return self.remaining(now) <= 0

    def max_ahead(self, ttl_s: float) -> float:
        """How far ahead a valid expiry may lie: its TTL (``ttl_s``, the reader's own, when the
        record names none or a smaller one) plus :data:`CLAIM_CLOCK_SKEW`."""
        return max(ttl_s, self.ttl_s or 0.0) + CLAIM_CLOCK_SKEW

    def implausible(self, ttl_s: float, now: float | None = None) -> bool:
        """True when the expiry lies further ahead than any holder renews it
        (:meth:`max_ahead`): not a valid lease."""
        return self.remaining(now) > self.max_ahead(ttl_s)

    def live(self, ttl_s: float, now: float | None = None) -> bool:
        """Held by someone: not expired, and not implausibly far ahead."""
        return not self.expired(now) and not self.implausible(ttl_s, now)

    @property
    def storage_key(self) -> str:
        """Key of the file holding this lease."""
        head = claim_key(self.unit_key)
        return head if self.after is None else next_key(self.unit_key, self.after)

    def to_bytes(self) -> bytes:
        """JSON record (with the expiry also as UTC text for people reading it)."""
        record = asdict(self) | {"expires_utc": iso_utc(self.expires_at)}
        return (json.dumps(record, sort_keys=True, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Lease:
        """Parse :meth:`to_bytes` output; ValueError if it is not a lease."""
        record = json.loads(raw.decode("utf-8"))
        if not isinstance(record, dict):
            raise ValueError("claim record is not a JSON object")
        expires_at = float(record["expires_at"])
        if not math.isfinite(expires_at):
            raise ValueError(f"claim expiry is not finite: {expires_at}")
        ttl = record.get("ttl_s")
        ttl = None if ttl is None else float(ttl)
        if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"claim ttl_s is not a positive number: {ttl}")
        after = record.get("after")
        return cls(
            unit_key=str(record["unit_key"]),
            owner=str(record["owner"]),
            token=str(record["token"]),
            expires_at=expires_at,
            after=None if after is None else str(after),
            ttl_s=ttl,
        )


class ClaimTimeout(RuntimeError):
    """Waiting for another run's live claim on a unit took longer than allowed."""

    def __init__(self, unit_key: str, holder: Lease | None, waited_s: float, uri: str):
        self.unit_key = unit_key
        self.holder = holder
        self.waited_s = waited_s
        if holder is not None:
            who = (
                f"is claimed by {holder.owner} (lease expires {iso_utc(holder.expires_at)}, "
                f"token {holder.token})"
            )
        else:
            who = "kept being claimed by other runs"
        super().__init__(
            f"unit {unit_key} {who}; gave up after waiting {waited_s:.1f} s. Set "
            f"{CLAIM_WAIT_ENV} to wait longer, or remove {uri} if that run is gone."
        )


class ClaimWaitStopped(RuntimeError):
    """The run was stopped (SIGTERM, Ctrl-C) while this unit waited for another run's claim."""

    def __init__(self, unit_key: str, holder: Lease | None, waited_s: float):
        self.unit_key = unit_key
        self.holder = holder
        who = f" (claimed by {holder.owner})" if holder is not None else ""
        super().__init__(f"run stopped while unit {unit_key} waited for its claim{who}, "
                         f"after {waited_s:.1f} s")


# -- settings -----------------------------------------------------------------------------------
def env_seconds(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """A positive number of seconds from the environment variable ``name`` (``default``
    when unset or empty); ValueError naming it otherwise."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"environment variable {name} must be a positive number of seconds, got {raw!r}"
        )
    return value


def claim_ttl(env: Mapping[str, str] | None = None) -> float:
    """Lease lifetime in seconds: $PROMPT_TRANSFER_CLAIM_TTL, else 60."""
    return env_seconds(CLAIM_TTL_ENV, DEFAULT_CLAIM_TTL, env)


def claim_wait(env: Mapping[str, str] | None = None) -> float:
    """Longest wait for another run's live claim: $PROMPT_TRANSFER_CLAIM_WAIT, else 3600."""
    return env_seconds(CLAIM_WAIT_ENV, DEFAULT_CLAIM_WAIT, env)


def check_seconds(name: str, value: float, allow_zero: bool = False) -> float:
    """``value`` as a positive (or, with ``allow_zero``, non-negative) number of seconds."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value
