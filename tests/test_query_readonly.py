"""``prompt-transfer query`` is read-only and confined to its storage root (issue 19, A): on a
local root and on a moto S3 root, every statement that writes or reaches outside the tables
and views (COPY, ATTACH, EXPORT DATABASE, INSTALL/LOAD, SET, read_csv/read_text/read_parquet
of any path or URL, CREATE...) exits 2 with one line naming the statement kind, and nothing is
written; the views over the Arrow datasets keep working; empty SQL is exit 2, one line."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import boto3
import duckdb
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.storage import open_storage
from tasks.tables import duckdb_connect
from tests.s3_server import clean_s3_env, moto_s3_server
from tests.table_helpers import write_tables

BUCKET = "ro-bucket"
SIDECAR = "prompts/minilm/snli/pk-demo-minilm-snli.json"


@pytest.fixture(scope="module")
def s3_endpoint():
    werkzeug = logging.getLogger("werkzeug")  # moto's request log
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    try:
        with moto_s3_server() as endpoint:
            yield endpoint
    finally:
        werkzeug.setLevel(level)


def _s3_objects(endpoint: str) -> dict[str, str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    out = {}
    for b in s3.list_buckets()["Buckets"]:
        for obj in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", []):
            out[f"{b['Name']}/{obj['Key']}"] = obj["ETag"]
    return out


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch):
    """(root URI, a function returning everything stored: the case folder and, on S3, every
    object of the moto server). The working directory is the case folder."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    clean_s3_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    if request.param == "local":
        uri = str(tmp_path / "results")
        st = open_storage(uri)
        write_tables(st, "demo", 0.2)
        st.write_bytes(SIDECAR, b'{"task": "snli"}\n')
        return uri, lambda: _files(tmp_path)
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("PROMPT_TRANSFER_S3_ENDPOINT", endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    uri = f"s3://{BUCKET}/pt"
    st = open_storage(uri)
    write_tables(st, "demo", 0.2)
    st.write_bytes(SIDECAR, b'{"task": "snli"}\n')
    return uri, lambda: {**_files(tmp_path), **_s3_objects(endpoint)}


def _query(sql: str, uri: str, *extra: str):
    return CliRunner().invoke(app, ["query", sql, "--storage", uri, *extra],
                              env={"COLUMNS": "80"})


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def refused_cases(uri: str) -> dict[str, tuple[str, str]]:
    """name: (SQL, the statement kind the message must name)."""
    where = uri if uri.startswith("s3://") else str(Path(uri))
    return {
        "copy-over-a-sidecar": (f"COPY (select 1 as x) TO '{where}/{SIDECAR}'", "COPY"),
        "copy-a-part-into-runs": (
            f"COPY (select * from runs) TO '{where}/tables/runs/study=demo/part-evil.parquet' "
            "(FORMAT parquet)", "COPY"),
        "copy-to-a-local-file": ("COPY (select * from runs) TO 'out.csv'", "COPY"),
        "read-csv-etc-passwd": ("select * from read_csv('/etc/passwd', sep=':')", "SELECT"),
        "read-text": ("select * from read_text('/etc/hostname')", "SELECT"),
        "read-blob": ("select * from read_blob('/etc/hostname')", "SELECT"),
        "glob": ("select * from glob('/etc/*')", "SELECT"),
        "read-parquet-another-root": (
            "select * from read_parquet('/tmp/other-root/tables/runs/**/*.parquet')", "SELECT"),
        "read-parquet-this-root": (
            f"select * from read_parquet('{where}/tables/runs/**/*.parquet')", "SELECT"),
        "read-parquet-url": ("select * from 'https://example.com/x.parquet'", "SELECT"),
        "attach": ("ATTACH 'evil.duckdb' AS evil", "ATTACH"),
        "export-database": ("EXPORT DATABASE 'exported'", "EXPORT"),
        "install-httpfs": ("INSTALL httpfs", "INSTALL"),
        "load-httpfs": ("LOAD httpfs", "LOAD"),
        "set-external-access": ("SET enable_external_access = true", "SET"),
        "reset-lock": ("RESET lock_configuration", "RESET"),
        "create-table": ("create table t as select 1", "CREATE"),
        "create-secret": ("CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')", "CREATE"),
        "select-then-copy": ("select 1; COPY (select 1) TO 'y.csv'", "COPY"),
        "commented-copy": ("/* hi */ -- there\nCOPY (select 1) TO 'z.csv'", "COPY"),
    }


CASE_NAMES = list(refused_cases("/r"))


@pytest.mark.bad_input
@pytest.mark.parametrize("case", CASE_NAMES)
def test_query_refuses_writes_and_reads_outside(root, case):
    uri, stored = root
    sql, kind = refused_cases(uri)[case]
    before = stored()
    res = _query(sql, uri)
    assert res.exit_code == 2, res.output
    line = _one_error_line(res.output)
    assert line.startswith(f"error: {kind} refused ("), line
    assert "query is read-only" in line and uri in line, line
    assert stored() == before  # nothing written, locally or on S3
    # the tables are as they were: the runs table reads one run, the sidecar is intact
    res = _query("select count(*) as n from runs", uri, "--format", "csv")
    assert res.exit_code == 0 and res.output.split() == ["n", "1"], res.output


@pytest.mark.bad_input
@pytest.mark.parametrize("sql", ["", "   ", ";", " ; ;", "/* only a comment */"])
def test_query_empty_sql_is_one_line(tmp_path, sql):
    root = open_storage(str(tmp_path / "results"))
    write_tables(root, "demo", 0.2)
    before = _files(tmp_path)
    res = _query(sql, root.root)
    assert res.exit_code == 2, res.output
    line = _one_error_line(res.output)
    assert "the SQL is empty" in line or "holds no statement" in line, line
    assert "AttributeError" not in res.output
    assert _files(tmp_path) == before


def test_query_reads_tables_and_views(root):
    """The views over the Arrow datasets work on the locked connection, local and S3."""
    uri, stored = root
    before = stored()
    res = _query("select count(*) as n from current_cross_task where study = 'demo'", uri,
                 "--format", "csv")
    assert res.exit_code == 0, res.output
    assert int(res.output.split()[1]) > 0
    for sql in ("describe runs", "show tables", "summarize runs", "explain select * from runs",
                "pragma version", "with r as (select * from latest_runs) select run_id from r",
                "pivot (select study, model from prompts) on model using count(*)"):
        res = _query(sql, uri, "--format", "csv")
        assert res.exit_code == 0, (sql, res.output)
    con = duckdb_connect(open_storage(uri), read_only=True)
    assert con.execute("select run_id from latest_runs").fetchall() == [("run-demo",)]
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.PermissionException):
        con.execute("COPY (select 1) TO 'x.csv'")
    assert stored() == before


def test_query_floats_print_as_duckdb_prints_them(tmp_path):
    root = open_storage(str(tmp_path / "results"))
    write_tables(root, "demo", 0.2)
    res = CliRunner().invoke(app, ["query", "select round(0.4512::double, 3) as a, "
                                   "round(0.45::double, 3) as b, 0.1::double + 0.2::double as c, "
                                   "1 / 3 as d, null::double as e", "-s", root.root],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = [c.strip() for c in res.output.splitlines()[3].split("│")[1:-1]]
    assert row == ["0.451", "0.45", "0.30000000000000004", "0.3333333333333333", ""], row


def test_duckdb_connect_library_mode_is_not_locked(tmp_path):
    """The Python API keeps an ordinary connection unless asked (docs/querying.md)."""
    root = open_storage(str(tmp_path / "results"))
    write_tables(root, "demo", 0.2)
    con = duckdb_connect(root)
    out = tmp_path / "runs.csv"
    con.execute(f"COPY (select run_id from runs) TO '{out}'")
    assert out.read_text().split() == ["run_id", "run-demo"]
