"""Storage (local + moto S3) and Parquet table machinery."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import storage as storage_mod
from tasks import tables
from tasks.storage import DEFAULT_STORAGE_ENV, Storage, StorageError, open_storage
from tasks.tables import TABLES, duckdb_connect, existing_keys, read_table, write_part
from tests.s3_server import clean_s3_env, moto_s3_server

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)


def cross_rows(study: str, model: str, n: int, run_id: str = "run-1",
               target: str = "target0") -> list[dict]:
    rows = []
    for i in range(n):
        kind = ["prompt", "random", "none"][i % 3]
        rows.append(
            {
                "cell_key": f"{study}-{model}-{i}",
                "config_key": "cfg",
                "model": model,
                "source_task": f"task{i}" if kind == "prompt" else None,
                "source_kind": kind,
                "source_prompt_key": f"pk{i}" if kind == "prompt" else None,
                "source_task_type": "nli" if kind == "prompt" else None,
                "target_task": target,
                "target_task_type": "sentiment",
                "target_prompt_key": "own",
                "same_type": False if kind == "prompt" else None,
                "metric": "accuracy" if i % 2 == 0 else "macro_f1",
                "score": 0.5 + i / 100,
                "relative_score": 0.9 if kind == "prompt" else None,
                "n_examples": 100 + i,
                "seed": i,
                "eval_split": "test",
                "study": study,
                "run_id": run_id,
                "created_at": T0 + dt.timedelta(seconds=i),
                "score_low": 0.4 + i / 100,
                "score_high": 0.6 + i / 100,
                "transfer_gain": 0.25 * i if kind == "prompt" else None,
            }
        )
    return rows


def run_row(study: str = "demo", run_id: str = "run-1") -> dict:
    return {
        "run_id": run_id,
        "study": study,
        "flow_run_id": None,
        "status": "completed",
        "started_at": T0,
        "finished_at": T0 + dt.timedelta(minutes=5),
        "storage": "/tmp/x",
        "study_config": json.dumps({"a": 1}),
        "n_prompts_trained": 2,
        "n_prompts_cached": 0,
        "n_cells_evaluated": 8,
        "n_cells_cached": 0,
        "prefect_version": "3.4.0",
        "package_version": "0.1.0",
    }


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["cell_key"])


@pytest.fixture
def store(tmp_path) -> Storage:
    return Storage(str(tmp_path / "root"))


# -- local storage --------------------------------------------------------------------------


def test_local_root_is_absolute_without_trailing_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Storage("some/dir/")
    assert s.is_local
    assert s.root == str(tmp_path / "some" / "dir")
    assert s.uri("a/b.txt") == str(tmp_path / "some" / "dir" / "a" / "b.txt")
    assert s.path("a/b.txt") == s.uri("a/b.txt")
    assert Storage("file://" + str(tmp_path / "x")).root == str(tmp_path / "x")


def test_open_storage_default_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEFAULT_STORAGE_ENV, raising=False)
    assert open_storage(None).root == str(tmp_path / "results")
    monkeypatch.setenv(DEFAULT_STORAGE_ENV, str(tmp_path / "elsewhere"))
    assert open_storage(None).root == str(tmp_path / "elsewhere")
    assert open_storage(str(tmp_path / "explicit")).root == str(tmp_path / "explicit")


def test_write_bytes_atomic_and_read_back(store):
    uri = store.write_bytes("a/b/c.bin", b"one")
    assert uri == os.path.join(store.root, "a", "b", "c.bin")
    assert store.read_bytes("a/b/c.bin") == b"one"
    store.write_bytes("a/b/c.bin", b"two")
    assert store.read_bytes("a/b/c.bin") == b"two"
    assert os.listdir(os.path.join(store.root, "a", "b")) == ["c.bin"]
    assert store.exists("a/b/c.bin") and not store.exists("a/b/nope.bin")


def test_failed_write_leaves_old_content_and_no_tmp(store, monkeypatch):
    store.write_bytes("k.bin", b"old")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(storage_mod.os, "replace", boom)
    with pytest.raises(StorageError, match="disk on fire"):
        store.write_bytes("k.bin", b"new")
    monkeypatch.undo()
    assert store.read_bytes("k.bin") == b"old"
    assert os.listdir(store.root) == ["k.bin"]


def test_list_recursive_sorted_with_suffix(store):
    for key in ["t/x=1/b.parquet", "t/x=1/a.parquet", "t/x=2/c.parquet", "t/x=2/note.txt", "u/d"]:
        store.write_bytes(key, b"z")
    assert store.list("t") == [
        "t/x=1/a.parquet",
        "t/x=1/b.parquet",
        "t/x=2/c.parquet",
        "t/x=2/note.txt",
    ]
    assert store.list("t", suffix=".parquet") == [
        "t/x=1/a.parquet",
        "t/x=1/b.parquet",
        "t/x=2/c.parquet",
    ]
    assert store.list("t/x=2") == ["t/x=2/c.parquet", "t/x=2/note.txt"]
    assert store.list("absent") == []
    assert store.list("") == sorted(store.list("t") + ["u/d"])


def test_missing_key_error_names_uri(store):
    with pytest.raises(StorageError) as err:
        store.read_bytes("no/such.json")
    assert "not found" in str(err.value)
    assert store.uri("no/such.json") in str(err.value)


def test_json_roundtrip_sorted_indented(store):
    store.write_json("m/meta.json", {"b": 1, "a": [1, 2]})
    assert store.read_json("m/meta.json") == {"a": [1, 2], "b": 1}
    text = store.read_bytes("m/meta.json").decode()
    assert text.index('"a"') < text.index('"b"')
    assert '\n  "a"' in text


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../b", "a//b"])
def test_bad_keys_rejected(store, key):
    with pytest.raises(StorageError):
        store.write_bytes(key, b"x")


def test_check_writable_local(tmp_path):
    s = Storage(str(tmp_path / "new" / "root"))
    s.check_writable()
    assert not os.path.exists(tmp_path / "new")  # probe removed, and the folders it made
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not usable"):
        Storage(str(tmp_path / "file" / "root")).check_writable()


# -- tables ---------------------------------------------------------------------------------


def test_registry_has_first_tables():
    assert {"runs", "prompts", "training_curves", "cross_task"} <= set(TABLES)
    assert TABLES["cross_task"].partition_by == ("study", "model", "target_task")
    assert TABLES["runs"].partition_by == ("study",)
    assert TABLES["cross_task"].schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    # the layout the views and run_keys read (tests/test_table_registry.py: what is derived)
    assert TABLES["cross_task"].row_id == ("metric",) and TABLES["cross_task"].current_view
    assert TABLES["projectors"].model_column == "target_model"
    assert not TABLES["runs"].current_view and TABLES["runs"].model_column is None
    with pytest.raises(ValueError, match="already registered"):
        tables.register_table(
            tables.TableSpec("runs", pa.schema([("run_id", pa.string())]), (), "run_id", "x")
        )


def test_write_part_read_table_roundtrip(store):
    a = cross_rows("demo", "minilm", 5)
    b = cross_rows("demo", "bert-base", 4)
    uri_a = write_part(store, "cross_task", a, "p1")
    write_part(store, "cross_task", b, "p1")
    assert uri_a == store.uri(
        "tables/cross_task/study=demo/model=minilm/target_task=target0/part-p1.parquet")
    assert store.list("tables/cross_task") == [
        "tables/cross_task/study=demo/model=bert-base/target_task=target0/part-p1.parquet",
        "tables/cross_task/study=demo/model=minilm/target_task=target0/part-p1.parquet",
    ]

    got = read_table(store, "cross_task")
    assert got.schema.equals(TABLES["cross_task"].schema)
    assert got.num_rows == 9
    assert sort_rows(got.to_pylist()) == sort_rows(a + b)

    only = read_table(store, "cross_task", filters={"study": "demo", "model": "minilm"})
    assert only.num_rows == 5 and set(only.column("model").to_pylist()) == {"minilm"}
    by_model = read_table(store, "cross_task", filters={"model": "bert-base"})
    assert by_model.num_rows == 4
    assert read_table(store, "cross_task", filters={"study": "other"}).num_rows == 0

    cols = read_table(store, "cross_task", columns=["model", "score"])
    assert cols.column_names == ["model", "score"] and cols.num_rows == 9

    with pytest.raises(ValueError, match="partition columns"):
        read_table(store, "cross_task", filters={"metric": "accuracy"})


def test_files_do_not_store_partition_columns(store):
    write_part(store, "cross_task", cross_rows("demo", "minilm", 3), "p1")
    (key,) = store.list("tables/cross_task", suffix=".parquet")
    names = pq.read_schema(store.uri(key)).names
    assert "study" not in names and "model" not in names
    assert names == TABLES["cross_task"].file_columns


def test_same_rows_twice_identical_bytes_no_duplicates(store):
    rows = cross_rows("demo", "minilm", 6)
    write_part(store, "cross_task", rows, "abc")
    (key,) = store.list("tables/cross_task")
    first = store.read_bytes(key)
    write_part(store, "cross_task", [dict(r) for r in rows], "abc")
    assert store.list("tables/cross_task") == [key]
    assert store.read_bytes(key) == first
    assert read_table(store, "cross_task").num_rows == 6


def test_arrow_table_input(store):
    rows = cross_rows("demo", "minilm", 3)
    t = pa.Table.from_pylist(rows)  # inferred types (e.g. timestamp without tz name)
    write_part(store, "cross_task", t, "arrow")
    assert sort_rows(read_table(store, "cross_task").to_pylist()) == sort_rows(rows)


def test_wrong_type_names_column(store):
    rows = cross_rows("demo", "minilm", 2)
    rows[1]["score"] = "high"
    with pytest.raises(ValueError, match="'score'") as err:
        write_part(store, "cross_task", rows, "x")
    assert "cross_task" in str(err.value)
    rows = cross_rows("demo", "minilm", 2)
    rows[0]["n_examples"] = 10.5
    with pytest.raises(ValueError, match="'n_examples'"):
        write_part(store, "cross_task", rows, "x")
    t = pa.Table.from_pylist(cross_rows("demo", "minilm", 2))
    t = t.set_column(t.schema.get_field_index("seed"), "seed", pa.array(["1", "2"]))
    with pytest.raises(ValueError, match="'seed'"):
        write_part(store, "cross_task", t, "x")
    assert store.list("tables") == []


def test_missing_or_null_required_column_names_column(store):
    rows = cross_rows("demo", "minilm", 2)
    del rows[1]["target_task"]
    with pytest.raises(ValueError, match="'target_task'"):
        write_part(store, "cross_task", rows, "x")
    rows = cross_rows("demo", "minilm", 2)
    rows[0]["metric"] = None
    with pytest.raises(ValueError, match="'metric'"):
        write_part(store, "cross_task", rows, "x")
    t = pa.Table.from_pylist(cross_rows("demo", "minilm", 2)).drop_columns(["eval_split"])
    with pytest.raises(ValueError, match="'eval_split'"):
        write_part(store, "cross_task", t, "x")
    # nullable columns may be absent entirely
    rows = cross_rows("demo", "minilm", 2)
    for r in rows:
        del r["relative_score"]
    write_part(store, "cross_task", rows, "ok")
    assert read_table(store, "cross_task").column("relative_score").null_count == 2


def test_mixed_partitions_and_bad_values_rejected(store):
    rows = cross_rows("demo", "minilm", 2) + cross_rows("demo", "other", 1)
    with pytest.raises(ValueError, match="'model'"):
        write_part(store, "cross_task", rows, "x")
    with pytest.raises(ValueError, match="unknown columns"):
        write_part(store, "cross_task", [{**cross_rows("d", "m", 1)[0], "oops": 1}], "x")
    with pytest.raises(ValueError):
        write_part(store, "cross_task", cross_rows("de/mo", "minilm", 1), "x")
    with pytest.raises(ValueError):
        write_part(store, "cross_task", cross_rows("demo", "minilm", 1), "bad key")
    with pytest.raises(ValueError):
        write_part(store, "cross_task", [], "x")
    with pytest.raises(ValueError, match="unknown table"):
        write_part(store, "nope", cross_rows("demo", "minilm", 1), "x")
    assert store.list("tables") == []


def test_empty_table_read(store):
    t = read_table(store, "prompts")
    assert t.num_rows == 0 and t.schema.equals(TABLES["prompts"].schema)


def test_existing_keys(store):
    assert existing_keys(store, "cross_task") == set()
    write_part(store, "cross_task", cross_rows("demo", "minilm", 3), "a")
    write_part(store, "cross_task", cross_rows("demo", "bert", 2), "a")
    write_part(store, "runs", [run_row("demo", "run-1")], "run-1")
    assert existing_keys(store, "cross_task") == {
        "demo-minilm-0",
        "demo-minilm-1",
        "demo-minilm-2",
        "demo-bert-0",
        "demo-bert-1",
    }
    assert existing_keys(store, "cross_task", {"model": "bert"}) == {"demo-bert-0", "demo-bert-1"}
    assert existing_keys(store, "runs", {"study": "demo"}) == {"run-1"}


def test_duckdb_views(store):
    before = duckdb_connect(store)
    empty_types = before.execute("DESCRIBE cross_task").fetchall()
    assert before.execute("SELECT count(*) FROM cross_task").fetchone() == (0,)

    write_part(store, "cross_task", cross_rows("demo", "minilm", 5), "a")
    write_part(store, "cross_task", cross_rows("demo", "bert", 3), "a")
    write_part(store, "cross_task", cross_rows("other", "bert", 2), "a")
    con = duckdb_connect(store)
    assert con.execute("SELECT count(*) FROM cross_task").fetchone() == (10,)
    groups = con.execute(
        "SELECT study, model, count(*), round(max(score), 2) FROM cross_task "
        "GROUP BY ALL ORDER BY study, model"
    ).fetchall()
    assert groups == [
        ("demo", "bert", 3, 0.52),
        ("demo", "minilm", 5, 0.54),
        ("other", "bert", 2, 0.51),
    ]
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM prompts WHERE study = 'demo'").fetchone() == (0,)

    types = {r[0]: r[1] for r in con.execute("DESCRIBE cross_task").fetchall()}
    assert types["study"] == "VARCHAR" and types["model"] == "VARCHAR"
    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["same_type"] == "BOOLEAN" and types["n_examples"] == "BIGINT"
    # the empty view and the file-backed view have the same columns and types
    assert [(r[0], r[1]) for r in empty_types] == list(types.items())


def test_duckdb_numeric_looking_partition_stays_varchar(store):
    write_part(store, "runs", [run_row("2024", "r1")], "r1")
    con = duckdb_connect(store, tables=["runs"])
    assert con.execute("SELECT study, typeof(study) FROM runs").fetchall() == [("2024", "VARCHAR")]


# -- S3 (moto server) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(monkeypatch):
    return clean_s3_env(monkeypatch)


@pytest.fixture
def bucket(s3_endpoint, s3_env) -> str:
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def test_s3_storage_basics(s3_endpoint, bucket):
    s = Storage(f"s3://{bucket}/prefix/", {"endpoint_url": s3_endpoint})
    assert s.root == f"s3://{bucket}/prefix" and not s.is_local
    assert s.uri("a/b.json") == f"s3://{bucket}/prefix/a/b.json"
    assert s.path("a/b.json") == f"{bucket}/prefix/a/b.json"
    s.check_writable()
    assert s.list("") == []  # probe removed

    assert s.write_json("a/b.json", {"x": 1}) == f"s3://{bucket}/prefix/a/b.json"
    assert s.read_json("a/b.json") == {"x": 1}
    s.write_bytes("a/c/d.bin", b"dd")
    assert s.exists("a/c/d.bin") and not s.exists("a/nope")
    assert s.list("a") == ["a/b.json", "a/c/d.bin"]
    assert s.list("a", suffix=".bin") == ["a/c/d.bin"]
    assert s.list("missing") == []
    with pytest.raises(StorageError, match=f"s3://{bucket}/prefix/a/nope"):
        s.read_bytes("a/nope")

    objects = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in objects["Contents"]) == ["prefix/a/b.json", "prefix/a/c/d.bin"]


def test_s3_tables_and_duckdb(s3_endpoint, bucket, s3_env):
    s3_env.setenv("PROMPT_TRANSFER_S3_ENDPOINT", s3_endpoint)
    s = open_storage(f"s3://{bucket}/results")
    assert s.storage_options["endpoint_url"] == s3_endpoint

    a = cross_rows("demo", "minilm", 4)
    b = cross_rows("demo", "bert", 3)
    uri = write_part(s, "cross_task", a, "p1")
    assert uri == (f"s3://{bucket}/results/tables/cross_task/study=demo/model=minilm/"
                   "target_task=target0/part-p1.parquet")
    write_part(s, "cross_task", b, "p1")
    write_part(s, "cross_task", b, "p1")  # rewrite: no duplicates
    write_part(s, "runs", [run_row("demo")], "run-1")

    got = read_table(s, "cross_task")
    assert got.schema.equals(TABLES["cross_task"].schema)
    assert sort_rows(got.to_pylist()) == sort_rows(a + b)
    assert read_table(s, "cross_task", {"model": "bert"}).num_rows == 3
    assert existing_keys(s, "runs") == {"run-1"}

    con = duckdb_connect(s)
    assert con.execute("SELECT count(*) FROM cross_task").fetchone() == (7,)
    assert con.execute(
        "SELECT model, count(*) FROM cross_task GROUP BY model ORDER BY model"
    ).fetchall() == [("bert", 3), ("minilm", 4)]
    assert con.execute("SELECT run_id, study, status FROM runs").fetchall() == [
        ("run-1", "demo", "completed")
    ]
    assert con.execute("SELECT count(*) FROM prompts").fetchone() == (0,)


def test_s3_explicit_options_override_env(s3_endpoint, bucket, s3_env):
    s3_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    s = Storage(f"s3://{bucket}", {"endpoint_url": s3_endpoint})
    s.write_bytes("k", b"v")
    assert s.read_bytes("k") == b"v"
    assert s.list("") == ["k"]


def test_s3_check_writable_missing_bucket(s3_endpoint, s3_env):
    s = Storage("s3://no-such-bucket-xyz/prefix", {"endpoint_url": s3_endpoint})
    with pytest.raises(StorageError, match="no-such-bucket-xyz") as err:
        s.check_writable()
    assert "does not exist" in str(err.value)


def test_s3_check_writable_unreachable_endpoint(s3_env):
    s = Storage(
        "s3://some-bucket/prefix",
        {"endpoint_url": "http://127.0.0.1:1", "config_kwargs": {"retries": {"max_attempts": 1}}},
    )
    with pytest.raises(StorageError, match="unreachable") as err:
        s.check_writable()
    assert "http://127.0.0.1:1" in str(err.value)


# -- rows defined once, damaged parts, ready views -----------------------------------------


def test_table_schemas_come_from_their_row_dataclasses(store):
    import dataclasses

    for name, row in (("runs", tables.RunRow), ("prompts", tables.PromptRow),
                      ("training_curves", tables.CurveRow), ("cross_task", tables.CellRow),
                      ("cross_task_predictions", tables.PredictionRow),
                      ("run_keys", tables.RunKeyRow)):
        assert TABLES[name].schema.names == [f.name for f in dataclasses.fields(row)]
    for col in ("predicted", "gold"):  # Int16List fields
        field = TABLES["cross_task_predictions"].schema.field(col)
        assert field.type == pa.list_(pa.int16()) and not field.nullable
    assert TABLES["cross_task"].schema.field("relative_score").nullable
    assert not TABLES["cross_task"].schema.field("score").nullable
    row = tables.RunKeyRow("r1", "demo", "m", "cross_task", "k1", T0)
    write_part(store, "run_keys", [row], "r1")
    assert read_table(store, "run_keys").to_pylist() == [dataclasses.asdict(row)]
    with pytest.raises(ValueError, match="'key' is required"):
        write_part(store, "run_keys", [dataclasses.replace(row, key=None)], "r2")


def test_damaged_part_is_reported_by_path_and_kept_out_of_other_tables(store):
    write_part(store, "cross_task", cross_rows("demo", "minilm", 3), "good")
    bad = write_part(store, "cross_task", cross_rows("demo", "minilm", 3, "run-2"), "bad")
    write_part(store, "runs", [run_row()], "run-1")
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    part = {"study": "demo", "model": "minilm", "target_task": "target0"}
    good, damaged = tables.read_parts(store, "cross_task", part)
    assert good.num_rows == 3 and [k for k, _ in damaged] == [
        "tables/cross_task/study=demo/model=minilm/target_task=target0/part-bad.parquet"]
    with pytest.raises(StorageError, match="part-bad.parquet"):
        read_table(store, "cross_task")
    con = duckdb_connect(store)  # views open; only queries of the damaged table fail
    assert con.execute("select count(*) from runs").fetchone()[0] == 1
    with pytest.raises(Exception, match="part-bad.parquet"):
        con.execute("select count(*) from cross_task").fetchall()
    from tasks.integrity import Damage, quarantine

    moved = quarantine(store, Damage(damaged[0][0], store.uri(damaged[0][0]), "unreadable", ""))
    assert moved == store.uri("_quarantine/" + damaged[0][0]) and os.path.getsize(moved) > 0
    assert not os.path.exists(bad)
    assert duckdb_connect(store).execute("select count(*) from cross_task").fetchone()[0] == 3


def test_current_views_select_the_latest_completed_runs_cells(store):
    """Two configurations' cells in one partition: current_cross_task has exactly those of
    the latest completed run (a newer failed run does not count)."""
    import dataclasses

    for i, (run, status) in enumerate((("old", "completed"), ("new", "completed"),
                                       ("broken", "failed"))):
        r = {**run_row("demo", run), "status": status,
             "finished_at": T0 + dt.timedelta(hours=i)}
        write_part(store, "runs", [r], run)
        rows = [{**c, "cell_key": f"{run}-{c['cell_key']}", "config_key": run}
                for c in cross_rows("demo", "minilm", 4, run)]
        write_part(store, "cross_task", rows, run)
        write_part(store, "run_keys", [
            dataclasses.asdict(tables.RunKeyRow(run, "demo", "minilm", "cross_task",
                                                c["cell_key"], T0)) for c in rows], run)
    con = duckdb_connect(store)
    assert con.execute("select count(*) from cross_task").fetchone()[0] == 12
    got = con.execute("select distinct config_key, run_id from current_cross_task").fetchall()
    assert got == [("new", "new")]
    assert con.execute("select count(*) from current_cross_task").fetchone()[0] == 4
    assert con.execute("select run_id from latest_runs").fetchall() == [("new",)]


def prediction_row(run: str, i: int, **kw) -> tables.PredictionRow:
    return tables.PredictionRow(**{
        "cell_key": f"{run}-c{i}", "config_key": run, "model": "minilm",
        "source_kind": "prompt", "source_task": f"task{i}", "source_prompt_key": f"pk{i}",
        "target_task": "target0", "target_prompt_key": "own", "seed": 0,
        "eval_split": "test", "n_examples": 5, "n_labels": 3, "predicted": [0, 1, 2, 2, i],
        "gold": [0, 1, 2, 1, 0], "study": "demo", "run_id": run,
        "created_at": T0 + dt.timedelta(seconds=i), **kw})


def test_predictions_table_list_columns_round_trip(store):
    """list<int16> columns: written from dataclass rows, mappings or Arrow tables (list<int64>
    cast, overflow refused naming the column), read back, queried in DuckDB, checked by
    verify, and selected by the current_cross_task_predictions view."""
    import dataclasses

    from tasks.integrity import check_part

    rows = [prediction_row("old", i) for i in range(3)]
    uri = write_part(store, "cross_task_predictions", rows, "old")
    assert "cross_task_predictions/study=demo/model=minilm/target_task=target0/" in uri
    got = read_table(store, "cross_task_predictions").to_pylist()
    assert sorted(got, key=lambda r: r["cell_key"]) == [dataclasses.asdict(r) for r in rows]
    assert check_part(store, uri.split(store.root + "/", 1)[1]) is None
    as_arrow = pa.Table.from_pylist([dataclasses.asdict(prediction_row("new", 7))])
    assert as_arrow.schema.field("predicted").type == pa.list_(pa.int64())
    write_part(store, "cross_task_predictions", as_arrow, "new")
    assert tables.castable(pa.list_(pa.int64()), pa.list_(pa.int16()))
    assert not tables.castable(pa.list_(pa.string()), pa.list_(pa.int16()))
    assert not tables.castable(pa.int16(), pa.list_(pa.int16()))
    with pytest.raises(ValueError, match="'predicted'"):
        write_part(store, "cross_task_predictions",
                   [prediction_row("x", 0, predicted=[70000])], "x")
    with pytest.raises(ValueError, match="'gold'"):
        write_part(store, "cross_task_predictions",
                   [dataclasses.asdict(prediction_row("x", 0, gold=None))], "x")

    for i, run in enumerate(("old", "new")):
        write_part(store, "runs", [{**run_row("demo", run),
                                    "finished_at": T0 + dt.timedelta(hours=i)}], run)
        keys = ["old-c0", "old-c1", "old-c2"] if run == "old" else ["new-c7"]
        write_part(store, "run_keys", [tables.RunKeyRow(run, "demo", "minilm", "cross_task",
                                                        k, T0) for k in keys], run)
    con = duckdb_connect(store)
    assert con.execute("select cell_key, predicted, len(gold) from cross_task_predictions "
                       "where run_id = 'new'").fetchall() == [("new-c7", [0, 1, 2, 2, 7], 5)]
    assert con.execute("select cell_key from current_cross_task_predictions").fetchall() == [
        ("new-c7",)]
