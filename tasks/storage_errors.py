"""The errors of :mod:`tasks.storage` (and :mod:`tasks.storage_s3`): every failure names the
URI and the problem."""

from __future__ import annotations


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the problem."""


class StorageNotFoundError(StorageError):
    """The object read is not there (an absent result, not damage nor an outage)."""


class StorageTimeoutError(StorageError):
    """An S3 operation did not finish within its deadline."""


class DeadlineExceeded(TimeoutError):
    """Raised inside :class:`tasks.storage.Storage` when one S3 call passes its deadline;
    reported to callers as :class:`StorageTimeoutError`."""

    def __init__(self, seconds: float):
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds
