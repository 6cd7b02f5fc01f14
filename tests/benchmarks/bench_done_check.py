"""Time to find that a study is complete: each unit checks its own part vs scanning the table.

A finished N-task study (one model, one seed) is laid out in storage as the flow writes it:
N prompt files with their ``prompts`` parts, and N ``cross_task`` target partitions of
(N + 2) cells each. No model is involved (a stub study: rows and random prompt tensors).
Then the two ways of deciding that every unit is done are timed, in one process, on the same
storage:

* scan (the code before issue 5): every unit reads every part of its table's (study, model)
  partition and filters it: N units x N parts, N^2 object reads;
* own part (now): a prompt unit reads its own ``prompts`` part (named by its key) and its
  prompt file; a target unit reads its own ``target_task=`` partition directory.

    .venv/bin/python tests/benchmarks/bench_done_check.py [--tasks 50] [--s3]

``--s3`` runs on a local moto S3 server as well as on local disk. Prints seconds, object
reads and the ratio for each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from prompt_core.prompts import prompt_to_bytes
from tasks.storage import Storage, open_storage
from tasks.tables import CellRow, PromptRow, now_utc, read_parts, read_table, write_part
from tasks.units import (
    RunContext,
    intact_prompt_meta,
    prompt_storage_key,
    stored_prompt_row,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.s3_server
STUDY, MODEL = "bench", "stub"


def build(storage: Storage, n: int) -> list[PromptRow]:
    """A complete n-task study as the flow leaves it."""
    now = now_utc()
    rows = []
    for i in range(n):
        key = f"p{i:04d}"
        skey = prompt_storage_key(MODEL, f"t{i}", key)
        row = PromptRow(key, "cfg", MODEL, "stub", "encoder", 32, f"t{i}", "x", "fp", 0, 4,
                        "random", None, 1, 0.1, 8, 1, 0.5, 0.5, 0.1, storage.uri(skey), STUDY,
                        "run", now)
        storage.write_bytes(skey, prompt_to_bytes(torch.randn(4, 32), {"prompt_key": key}))
        write_part(storage, "prompts", [row], key)
        rows.append(row)
    for j in range(n):
        cells = []
        for src in [*rows, None, None]:
            for metric in ("accuracy", "macro_f1"):
                cells.append(CellRow(
                    f"c{j}-{src.prompt_key if src else len(cells)}", "cfg", MODEL,
                    src.task if src else None, "prompt" if src else "none",
                    src.prompt_key if src else None, "x" if src else None, f"t{j}", "x",
                    rows[j].prompt_key, True if src else None, metric, 0.5, 1.0, 16, 0, "test",
                    STUDY, "run", now))
        write_part(storage, "cross_task", cells, f"h{j}")
    return rows


class CountReads:
    """Count objects read: files handed to a pyarrow dataset scan, plus single-object reads."""

    def __init__(self):
        self.n = 0

    def __enter__(self):
        import tasks.tables as tables

        self._ds, self._rb = tables.ds.dataset, Storage.read_bytes

        def dataset(paths, *a, **k):
            self.n += len(paths)
            return self._ds(paths, *a, **k)

        def read_bytes(storage, key):
            self.n += 1
            return self._rb(storage, key)

        tables.ds.dataset, Storage.read_bytes = dataset, read_bytes
        return self

    def __exit__(self, *exc):
        import tasks.tables as tables

        tables.ds.dataset, Storage.read_bytes = self._ds, self._rb


def scan(storage: Storage, rows: list[PromptRow]) -> int:
    """The old check: every unit reads its table's whole (study, model) partition."""
    part = {"study": STUDY, "model": MODEL}
    done = 0
    for r in rows:
        df = read_table(storage, "prompts", filters=part).to_pandas()
        done += int((df["prompt_key"] == r.prompt_key).any() and storage.exists(
            prompt_storage_key(MODEL, r.task, r.prompt_key)))
    for r in rows:
        df = read_table(storage, "cross_task", filters=part).to_pandas()
        done += int((df["target_task"] == r.task).sum() == 2 * (len(rows) + 2))
    return done


def own_part(storage: Storage, rows: list[PromptRow]) -> int:
    """The new check: each unit reads only its own part / partition directory."""
    ctx = RunContext(storage.root, STUDY, "run")
    done = 0
    for r in rows:
        skey = prompt_storage_key(MODEL, r.task, r.prompt_key)
        ok = intact_prompt_meta(storage, skey, r.prompt_key, 4) is not None
        done += int(ok and stored_prompt_row(storage, ctx, MODEL, r.prompt_key) is not None)
    for r in rows:
        table, damaged = read_parts(storage, "cross_task", {"study": STUDY, "model": MODEL,
                                                            "target_task": r.task})
        done += int(table.num_rows == 2 * (len(rows) + 2) and not damaged)
    return done


def measure(storage: Storage, n: int) -> None:
    rows = build(storage, n)
    out = {}
    for name, fn in (("scan", scan), ("own part", own_part)):
        with CountReads() as c:
            t0 = time.perf_counter()
            done = fn(storage, rows)
            out[name] = (time.perf_counter() - t0, c.n)
        assert done == 2 * n, f"{name}: {done} of {2 * n} units found done"
    (ts, rs), (to, ro) = out["scan"], out["own part"]
    print(f"{storage.root}: {n} tasks, {2 * n} units: scan {ts:.2f} s ({rs} reads), "
          f"own part {to:.2f} s ({ro} reads): {ts / to:.1f}x faster, {rs / max(ro, 1):.1f}x "
          "fewer reads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--s3", action="store_true", help="also on a local moto S3 server")
    args = ap.parse_args()
    import logging

    import tasks.units as units

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    units.get_run_logger = lambda: logging.getLogger("bench")  # outside a flow
    with ExitStack() as stack:
        measure(open_storage(stack.enter_context(tempfile.TemporaryDirectory())), args.tasks)
        if args.s3:
            import os

            import boto3

            from tests.s3_server import moto_s3_server

            endpoint = stack.enter_context(moto_s3_server())
            os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                              PROMPT_TRANSFER_S3_ENDPOINT=endpoint)
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                Bucket="bench")
            measure(open_storage("s3://bench/root"), args.tasks)


if __name__ == "__main__":
    main()
