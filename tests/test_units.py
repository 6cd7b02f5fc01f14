"""Unit-level policies of tasks/units.py that need no flow run."""

from __future__ import annotations

import errno

import pytest

from prompt_core.data import TaskDataError
from tasks.storage import StorageError
from tasks.units import _retry_transient_only


class _State:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc


def _storage_error(err: int) -> StorageError:
    try:
        try:
            raise OSError(err, "No space left on device")
        except OSError as exc:
            raise StorageError("cannot write /x/part-1.parquet: OSError") from exc
    except StorageError as exc:
        return exc


@pytest.mark.parametrize("exc, retried", [
    (TaskDataError("task.json: field label_names"), False),  # bad input fails again
    (_storage_error(errno.ENOSPC), False),  # a full disk too
    (_storage_error(errno.EDQUOT), False),
    (_storage_error(errno.ECONNRESET), True),  # a dropped connection may pass next time
    (RuntimeError("server busy"), True),
])
def test_only_transient_failures_are_retried(exc, retried):
    assert _retry_transient_only(None, None, _State(exc)) is retried
