"""docs/querying.md, executed: every Python, shell and SQL snippet runs against a small table
set (written with ``write_part``, no flow run) on a local root and on a moto S3 server, and must
give the expected figures; the Athena DDL of docs/tables.md must equal
:func:`tasks.tables.athena_ddl`, whose columns, types, partitions and locations are checked
against the registered schemas and the paths ``write_part`` writes."""

from __future__ import annotations

import io
import logging
import re
import shlex
import uuid
from pathlib import Path

import boto3
import pandas as pd
import pytest
from typer.testing import CliRunner

from tasks import storage as storage_mod
from tasks.storage import Storage, open_storage
from tasks.tables import (
    TABLES,
    athena_ddl,
    trino_ddl,
)
from tests.s3_server import moto_s3_server
from tests.table_helpers import write_tables

REPO = Path(__file__).resolve().parents[1]
LOCAL_ROOT = "results"  # the placeholders of docs/querying.md
S3_ROOT = "s3://my-bucket/prompt-transfer"


# -- the docs pages --------------------------------------------------------------------------

QUERYING = "querying.md"  # the snippets, run below
TABLES_PAGE = "tables.md"  # the Athena DDL


def section(page: str = QUERYING) -> str:
    """The text of ``docs/<page>``."""
    return (REPO / "docs" / page).read_text()


def snippets(lang: str, page: str = QUERYING) -> list[str]:
    return [code for lg, code in re.findall(r"^```(\w+)\n(.*?)^```", section(page), re.M | re.S)
            if lg == lang]


def ddl_blocks() -> list[str]:
    return [s.strip() for s in snippets("sql", TABLES_PAGE) if s.lstrip().startswith("CREATE")]


def query_blocks() -> list[str]:
    return [s.strip() for s in snippets("sql") if not s.lstrip().startswith("CREATE")]


def for_root(code: str, root: str) -> str:
    """A snippet pointed at ``root``: either placeholder root replaced by it."""
    code = code.replace(S3_ROOT, root)
    return re.sub(r"(?<=[\"' ])results(?=[\"'/ ]|$)", root, code, flags=re.M)


# -- a small table set ------------------------------------------------------------------------


def write_all(st: Storage) -> dict[str, float]:
    expected = write_tables(st, "demo", 0.2)
    write_tables(st, "other", 0.0)  # another study: every snippet must filter it out
    return expected


# -- roots: local and moto S3 -----------------------------------------------------------------


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


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch) -> tuple[str, dict[str, float]]:
    """(root as the snippets name it, expected answer); the working directory is a fresh
    folder (holding ``results`` for the local root)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    for name in (*storage_mod.S3_ENDPOINT_ENVS, "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    if request.param == "local":
        return LOCAL_ROOT, write_all(open_storage(LOCAL_ROOT))
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="my-bucket")
    for obj in s3.list_objects_v2(Bucket="my-bucket").get("Contents", []):
        s3.delete_object(Bucket="my-bucket", Key=obj["Key"])
    return S3_ROOT, write_all(open_storage(S3_ROOT))


def answer(df) -> dict[str, float]:
    """``{target_task: accuracy}`` of a snippet's pandas or polars frame."""
    if not isinstance(df, pd.DataFrame):
        df = df.to_pandas()
    assert list(df.columns) == ["target_task", "accuracy"], df
    return {str(t): float(a) for t, a in zip(df["target_task"], df["accuracy"], strict=True)}


# -- the snippets ----------------------------------------------------------------------------


def test_section_has_every_kind_of_snippet():
    code = "\n".join(snippets("python"))
    assert len(snippets("python")) >= 6 and len(snippets("bash")) == 1
    for needle in ("duckdb_connect(", "register_filesystem(s3fs.S3FileSystem", "read_parquet(",
                   "hive_partitioning = true", "pd.read_parquet(", "pl.scan_parquet(",
                   "hive_partitioning=True", S3_ROOT, f'"{LOCAL_ROOT}'):
        assert needle in code, needle
    assert len(ddl_blocks()) == 1 and len(query_blocks()) == 1


def local_only(code: str) -> bool:
    """Plain DuckDB reads s3:// only through a registered filesystem (else it would fetch its
    httpfs extension): the snippet for a local root is not run against S3."""
    return "duckdb.connect()" in code and "register_filesystem" not in code


def test_python_snippets(root):
    path, expected = root
    run = [c for c in snippets("python") if path == LOCAL_ROOT or not local_only(c)]
    assert len(run) == len(snippets("python")) - (path != LOCAL_ROOT)
    for i, code in enumerate(run):
        ns: dict = {}
        exec(compile(for_root(code, path), f"<docs/querying.md python snippet {i}>", "exec"), ns)
        got = answer(ns["df"])
        assert got == pytest.approx(expected), f"snippet {i}:\n{code}"
        assert sorted(got) == list(got)  # ordered by target task


@pytest.mark.parametrize("read_only", [False, True], ids=["open", "read-only"])
def test_sql_snippet_runs_in_duckdb(root, read_only):
    """Also on the locked connection of ``prompt-transfer query`` (no external access): the
    views read their Arrow datasets, local or on S3, through pyarrow."""
    from tasks.tables import duckdb_connect

    path, expected = root
    (sql,) = query_blocks()
    df = duckdb_connect(open_storage(path), read_only=read_only).execute(sql.rstrip(";")).df()
    assert answer(df) == pytest.approx(expected)


def test_shell_snippets(root):
    from flows.cli import app

    path, expected = root
    runner = CliRunner()
    lines = [ln for ln in snippets("bash")[0].splitlines() if ln.strip()]
    assert len(lines) == 3
    outputs = []
    for line in lines:
        argv = shlex.split(for_root(line, path), comments=True)
        assert argv[0] == "prompt-transfer"
        argv = [str(REPO / a) if a.startswith("deployments/") else a for a in argv[1:]]
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, (line, res.output)
        outputs.append(res.output)
    got = pd.read_csv(io.StringIO(outputs[0]))
    assert answer(got) == pytest.approx(expected)
    assert "run-demo" in outputs[1] and "run-other" in outputs[1] and "completed" in outputs[1]
    # the demo study's status against these stub tables: nothing matches its keys, but the
    # latest run is read
    assert "study demo under" in outputs[2] and "latest run run-demo: completed" in outputs[2]


# -- DDL --------------------------------------------------------------------------------------

ATHENA = {"string": "string", "int64": "bigint", "double": "double", "bool": "boolean",
          "timestamp[us, tz=UTC]": "timestamp", "list<item: int16>": "array<smallint>"}
TRINO = {"string": "varchar", "int64": "bigint", "double": "double", "bool": "boolean",
         "timestamp[us, tz=UTC]": "timestamp", "list<item: int16>": "array(smallint)"}


def test_docs_ddl_is_athena_ddl_of_every_table():
    want = "\n\n".join(athena_ddl(t, S3_ROOT) for t in TABLES)
    assert ddl_blocks() == [want]
    res = CliRunner().invoke(__import__("flows.cli", fromlist=["app"]).app,
                             ["ddl", "--location", S3_ROOT + "/"])
    assert res.exit_code == 0 and res.output == want + "\n"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_athena_ddl_matches_schema(name):
    spec = TABLES[name]
    text = athena_ddl(name, S3_ROOT)
    m = re.fullmatch(r"CREATE EXTERNAL TABLE IF NOT EXISTS `(\w+)` \(\n(.*)\n\)\n"
                     r"PARTITIONED BY \((.*)\)\nSTORED AS PARQUET\nLOCATION '([^']+)';", text,
                     re.S)
    assert m, text
    assert m[1] == name
    cols = [re.fullmatch(r"  `(\w+)` ([\w<>]+)", ln).groups() for ln in m[2].split(",\n")]
    assert cols == [(f.name, ATHENA[str(f.type)]) for f in spec.schema
                    if f.name not in spec.partition_by]
    assert m[3] == ", ".join(f"`{c}` string" for c in spec.partition_by)
    assert m[4] == f"{S3_ROOT}/tables/{name}/"
    t = trino_ddl(name, S3_ROOT)
    body = t[t.index("(\n") + 2:t.index("\n)\nWITH")]
    cols = [re.fullmatch(r'  "(\w+)" ([\w()]+)', ln).groups() for ln in body.split(",\n")]
    names = [c for c, _ in cols]
    assert names == spec.file_columns + list(spec.partition_by)  # partition columns last
    assert [t for _, t in cols] == [TRINO[str(spec.schema.field(c).type)] for c in names]
    assert f"external_location = '{S3_ROOT}/tables/{name}/'" in t
    assert "partitioned_by = ARRAY[" + ", ".join(f"'{c}'" for c in spec.partition_by) + "]" in t


def test_ddl_locations_hold_the_written_parts(s3_endpoint, monkeypatch):
    """Every part ``write_part`` puts on S3 lies under its table's DDL LOCATION, in
    ``<partition>=<value>/`` directories in PARTITIONED BY order (what MSCK REPAIR reads)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    bucket = f"ddl-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    st = Storage(f"s3://{bucket}/pt", {"endpoint_url": s3_endpoint})
    write_tables(st, "demo", 0.2)
    seen = set()
    for key in st.list("tables", suffix=".parquet"):
        name = key.split("/")[1]
        spec = TABLES[name]
        loc = re.search(r"LOCATION '([^']+)'", athena_ddl(name, st.root))[1]
        uri = st.uri(key)
        assert uri.startswith(loc)
        dirs = uri[len(loc):].split("/")[:-1]
        assert [d.split("=")[0] for d in dirs] == list(spec.partition_by)
        seen.add(name)
    assert seen == set(TABLES)


def test_ddl_bad_location_and_table():
    from flows.cli import app

    with pytest.raises(ValueError, match="storage root URI"):
        athena_ddl("runs", "my-bucket/prefix")
    with pytest.raises(ValueError, match="storage root URI"):
        trino_ddl("runs", "s3://b/it's")
    runner = CliRunner()
    res = runner.invoke(app, ["ddl", "--location", "my-bucket"])
    assert res.exit_code == 2 and "storage root URI" in res.output
    res = runner.invoke(app, ["ddl", "-l", S3_ROOT, "-t", "nope"])
    assert res.exit_code == 2 and "unknown table 'nope'" in res.output
    res = runner.invoke(app, ["ddl", "-l", S3_ROOT, "--dialect", "hive"])
    assert res.exit_code == 2 and "--dialect must be athena or trino" in res.output
    res = runner.invoke(app, ["ddl", "-l", S3_ROOT, "-t", "runs", "--dialect", "trino"])
    assert res.exit_code == 0 and res.output == trino_ddl("runs", S3_ROOT) + "\n"
