"""Storage faults: a silent S3 endpoint, probe leftovers, damaged files (verify + quarantine)."""

from __future__ import annotations

import datetime as dt
import os
import struct
import time
import uuid
import zlib

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from prompt_core.prompts import prompt_to_bytes
from tasks import storage as storage_mod
from tasks.integrity import Damage, quarantine, verify_root
from tasks.storage import Storage, StorageError, StorageTimeoutError, s3_options_from_env
from tasks.tables import TABLES, read_table, write_part
from tests.s3_server import clean_s3_env, moto_s3_server, silent_server

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
FAST = {"connect_timeout": 0.5, "read_timeout": 0.5, "retries": {"max_attempts": 2}}


@pytest.fixture
def s3_env(monkeypatch):
    return clean_s3_env(monkeypatch, also_unset=(
        storage_mod.S3_CONNECT_TIMEOUT_ENV, storage_mod.S3_READ_TIMEOUT_ENV,
        storage_mod.S3_MAX_ATTEMPTS_ENV, storage_mod.S3_DEADLINE_ENV))


@pytest.fixture
def silent(s3_env):
    with silent_server() as endpoint:
        yield endpoint


def timed(fn, *args, **kwargs) -> tuple[BaseException, float]:
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        fn(*args, **kwargs)
    return err.value, time.monotonic() - t0


# -- item 7: an S3 endpoint that accepts TCP and never answers -------------------------------


def test_check_writable_silent_endpoint_overall_deadline(silent):
    # Per-request timeouts far above the probe deadline: only the overall deadline can stop it.
    s = Storage("s3://b/p", {"endpoint_url": silent}, deadline=600)
    err, took = timed(s.check_writable, deadline=1.5)
    assert isinstance(err, StorageTimeoutError)
    assert str(err) == f"S3 endpoint {silent} did not answer within 1.5 s (storage root s3://b/p)"
    # the lower bound proves the probe waited out its deadline; the upper one only that it
    # stopped there and not at the 600 s per-request timeouts: generous for a busy machine
    assert 1.4 < took < 30


def test_operations_silent_endpoint_bounded_by_timeouts_and_attempts(silent):
    s = Storage("s3://b/p", {"endpoint_url": silent, "config_kwargs": FAST}, deadline=600)
    # 2 botocore attempts x 2 s3fs tries x 0.5 s read timeout, plus backoff (< 2 s per retry).
    # Not writes: a PUT waits for "100 Continue" with no socket timeout; only the deadline
    # bounds it (next test).
    for call, uri in (
        (lambda: s.list("tables"), "s3://b/p/tables"),
        (lambda: s.read_bytes("a/x.bin"), "s3://b/p/a/x.bin"),
        (lambda: s.exists("a/x.bin"), "s3://b/p/a/x.bin"),
    ):
        err, took = timed(call)
        assert uri in str(err) and f"S3 endpoint {silent} did not answer" in str(err)
        assert took < 15


def test_operation_deadline_cancels_long_retries(silent):
    s = Storage("s3://b/p", {"endpoint_url": silent}, deadline=1)  # default 30 s read timeout
    for call in (
        lambda: s.list(""),
        lambda: s.read_bytes("k"),
        lambda: s.write_bytes("k", b"x"),
        lambda: s.delete("k"),
    ):
        err, took = timed(call)
        assert isinstance(err, StorageTimeoutError)
        assert f"s3://b/p: S3 endpoint {silent} did not answer within 1 s" in str(err).replace(
            "s3://b/p/k", "s3://b/p")
        assert took < 20  # the 1 s deadline, not the 30 s read timeout (generous: busy machine)


@pytest.mark.timeout(240)
def test_silent_endpoint_with_default_settings_ends_within_a_minute(silent):
    """Issue 19: the defaults alone bound a silent endpoint (45-99 s before, on a loaded
    machine): the probe gives up after 20 s, any other operation once its attempts x tries x
    read timeout (2 x 2 x 10 s) or its 45 s deadline run out."""
    s = Storage("s3://b/p", {"endpoint_url": silent})
    err, took = timed(s.check_writable)
    print(f"probe of a silent endpoint: {took:.1f} s")
    assert str(err) == f"S3 endpoint {silent} did not answer within 20 s (storage root s3://b/p)"
    assert 19 < took < 40  # generous: a busy machine
    err, took = timed(s.read_bytes, "k")  # a write is bounded by the deadline alone: above
    print(f"one operation on a silent endpoint: {took:.1f} s ({err})")
    assert f"S3 endpoint {silent} did not answer" in str(err) and "s3://b/p/k" in str(err)
    assert took < 60


def test_timeouts_from_environment_reach_the_client(silent, s3_env):
    s3_env.setenv("PROMPT_TRANSFER_S3_ENDPOINT", silent)
    s3_env.setenv(storage_mod.S3_READ_TIMEOUT_ENV, "0.3")
    s3_env.setenv(storage_mod.S3_CONNECT_TIMEOUT_ENV, "0.3")
    s3_env.setenv(storage_mod.S3_MAX_ATTEMPTS_ENV, "1")
    s3_env.setenv(storage_mod.S3_DEADLINE_ENV, "600")
    s = storage_mod.open_storage("s3://b/p")
    assert s.deadline == 600
    err, took = timed(s.read_bytes, "k")
    assert "read timeout 0.3 s, 2 attempts" in str(err) and silent in str(err)
    assert took < 20  # not the default 30 s read timeout (generous: busy machine)


def test_s3_defaults_are_bounded(s3_env):
    cfg = s3_options_from_env({})["config_kwargs"]
    assert cfg == {"connect_timeout": 5.0, "read_timeout": 10.0,
                   "retries": {"max_attempts": 2, "mode": "standard"}}
    s = Storage("s3://b/p", {"endpoint_url": "http://127.0.0.1:9"})
    assert s.deadline == 45 and s.fs.retries == storage_mod.S3FS_RETRIES
    # issue 19: a silent endpoint costs at most attempts x tries x read timeout <= 45 s per
    # operation (the deadline, 45 s, bounds writes too), and the probe 20 s
    assert 2 * storage_mod.S3FS_RETRIES * cfg["read_timeout"] <= 45
    assert s.probe_deadline() == 20
    # explicit options merge into the defaults, nested dicts included
    s = Storage("s3://b/p", {"config_kwargs": {"retries": {"max_attempts": 1}}})
    assert s.storage_options["config_kwargs"]["retries"] == {"max_attempts": 1, "mode": "standard"}


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
@pytest.mark.parametrize(
    "name", [storage_mod.S3_READ_TIMEOUT_ENV, storage_mod.S3_CONNECT_TIMEOUT_ENV,
             storage_mod.S3_DEADLINE_ENV]
)
def test_bad_timeout_settings_named(s3_env, name, value):
    s3_env.setenv(name, value)
    with pytest.raises(StorageError, match=f"{name} must be a positive number.*{value!r}"):
        Storage("s3://b/p")


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["2.5", "0", "x"])
def test_bad_max_attempts_named(s3_env, value):
    s3_env.setenv(storage_mod.S3_MAX_ATTEMPTS_ENV, value)
    with pytest.raises(StorageError, match=f"S3_MAX_ATTEMPTS must be a positive integer.*{value}"):
        Storage("s3://b/p")


def test_check_readable(tmp_path, silent):
    err, took = timed(Storage("s3://b/p", {"endpoint_url": silent}).check_readable, deadline=1)
    assert str(err) == f"S3 endpoint {silent} did not answer within 1 s (storage root s3://b/p)"
    assert took < 20  # the 1 s deadline, not the 30 s read timeout (generous: busy machine)
    with pytest.raises(StorageError, match=f"storage root {tmp_path / 'absent'} does not exist"):
        Storage(str(tmp_path / "absent")).check_readable()
    Storage(str(tmp_path)).check_readable()


# -- item 10: the storage probe leaves nothing behind ----------------------------------------


def tree(root) -> list[str]:
    """Every directory and file under ``root`` (hidden ones included)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out += [os.path.join(rel, n) + "/" for n in dirnames] + [os.path.join(rel, n)
                                                                 for n in filenames]
    return sorted(out)


def test_probe_leaves_nothing_local(tmp_path):
    root = tmp_path / "root"
    (root / "tables").mkdir(parents=True)
    (root / "tables" / "x.parquet").write_bytes(b"x")
    before = tree(tmp_path)
    Storage(str(root)).check_writable()
    assert tree(tmp_path) == before


def test_probe_creates_no_root_local(tmp_path):
    Storage(str(tmp_path / "new" / "root")).check_writable()
    assert tree(tmp_path) == []


@pytest.fixture(scope="module")
def moto_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(moto_endpoint, s3_env) -> str:
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=name
    )
    return name


def test_probe_leaves_nothing_s3(moto_endpoint, bucket):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="root/keep.txt", Body=b"k")

    def objects() -> list[str]:
        return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])

    before = objects()
    Storage(f"s3://{bucket}/root", {"endpoint_url": moto_endpoint}).check_writable()
    assert objects() == before == ["root/keep.txt"]


# -- item 10: verify and quarantine ----------------------------------------------------------


def rows(table: str, n: int, part: str) -> list[dict]:
    """``n`` valid rows of ``table`` built from its registered schema, all in one partition."""
    spec = TABLES[table]
    out = []
    for i in range(n):
        row = {}
        for f in spec.schema:
            if pa.types.is_timestamp(f.type):
                row[f.name] = T0
            elif pa.types.is_boolean(f.type):
                row[f.name] = True
            elif pa.types.is_integer(f.type):
                row[f.name] = i
            elif pa.types.is_floating(f.type):
                row[f.name] = 0.5
            else:
                row[f.name] = f"{f.name}-{i}"
        out.append(row | {c: part for c in spec.partition_by})
    return out


def rel(storage: Storage, uri: str) -> str:
    return uri.removeprefix(storage.root + "/").replace(os.sep, "/")


def parquet_bytes(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


def write_prompt(storage: Storage, name: str) -> str:
    key = f"prompts/minilm/{name}/{name}-key.safetensors"
    meta = {"task": name, "n_tokens": 4}
    storage.write_bytes(key, prompt_to_bytes(torch.randn(4, 8), meta))
    storage.write_json(key.removesuffix(".safetensors") + ".json", meta)
    return key


def png_bytes() -> bytes:
    """A whole 1x1 grey PNG."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def build_root(storage: Storage) -> dict[str, str]:
    """A sound root: 4 parts, 4 prompts, an artifact. Returns name -> key."""
    keys = {f"part{i}": rel(storage, write_part(storage, "cross_task", rows("cross_task", 3,
                                                                            f"m{i}"), "p"))
            for i in range(4)}
    keys |= {f"prompt{i}": write_prompt(storage, f"task{i}") for i in range(4)}
    storage.write_bytes("artifacts/r/cross_task_m0.png", png_bytes())
    return keys


def damage_root(storage: Storage, keys: dict[str, str]) -> dict[str, str]:
    """Damage some files; returns key -> expected kind of every damaged one."""
    whole = storage.read_bytes(keys["part1"])
    storage.write_bytes(keys["part0"], b"")
    storage.write_bytes(keys["part1"], whole[: len(whole) // 2])
    good = pq.read_table(pa.BufferReader(storage.read_bytes(keys["part2"])))
    wrong = good.set_column(good.schema.get_field_index("score"), "score",
                            pa.array(["high"] * good.num_rows))  # score as a string
    storage.write_bytes(keys["part2"], parquet_bytes(wrong))
    prompt = storage.read_bytes(keys["prompt1"])
    storage.write_bytes(keys["prompt0"], b"")
    storage.write_bytes(keys["prompt1"], prompt[: len(prompt) // 2])
    storage.delete(keys["prompt2"].removesuffix(".safetensors") + ".json")
    temp = keys["part3"].rsplit("/", 1)[0] + "/.part-q.parquet.0123abcd.tmp"
    storage.write_bytes(temp, b"half")
    return {keys["part0"]: "unreadable", keys["part1"]: "unreadable", keys["part2"]: "schema",
            keys["prompt0"]: "unreadable", keys["prompt1"]: "unreadable",
            keys["prompt2"]: "sidecar", temp: "temp"}


def check_verify_and_quarantine(storage: Storage) -> None:
    keys = build_root(storage)
    assert verify_root(storage) == []
    expected = damage_root(storage, keys)
    damaged = verify_root(storage)
    assert {d.key: d.kind for d in damaged} == expected
    for d in damaged:
        assert isinstance(d, Damage) and d.uri == storage.uri(d.key) and d.problem
    by_key = {d.key: d for d in damaged}
    assert by_key[keys["part2"]].problem == (
        "column 'score' is string, table 'cross_task' expects double")
    assert "missing" in by_key[keys["prompt2"]].problem

    contents = {d.key: storage.read_bytes(d.key) for d in damaged}
    for d in damaged:
        new_uri = quarantine(storage, d)
        assert new_uri == storage.uri(f"_quarantine/{d.key}")
        assert storage.read_bytes(f"_quarantine/{d.key}") == contents[d.key]  # no byte lost
        assert not storage.exists(d.key)
    # the prompt without a sidecar moved alone; the others took nothing else along
    assert verify_root(storage) == []
    assert sorted(storage.list("prompts")) == sorted(
        [keys["prompt3"], keys["prompt3"].removesuffix(".safetensors") + ".json"]
    )
    assert read_table(storage, "cross_task").num_rows == 3  # the one sound part left
    assert storage.exists("artifacts/r/cross_task_m0.png")


def test_verify_and_quarantine_local(tmp_path):
    check_verify_and_quarantine(Storage(str(tmp_path / "root")))


def test_verify_and_quarantine_s3(moto_endpoint, bucket):
    check_verify_and_quarantine(Storage(f"s3://{bucket}/root", {"endpoint_url": moto_endpoint}))


def test_verify_schema_location_and_sidecar_details(tmp_path):
    s = Storage(str(tmp_path))
    spec = TABLES["cross_task"]
    good = rel(s, write_part(s, "cross_task", rows("cross_task", 2, "a"), "p"))
    data = s.read_bytes(good)
    misplaced = f"{spec.prefix()}/part-p.parquet"  # partition directories missing
    s.write_bytes(misplaced, data)
    no_key = good.replace("=a/", "=b/")
    s.write_bytes(no_key, parquet_bytes(pa.table({"run_id": ["r"]})))
    nulls = good.replace("=a/", "=c/")
    body = pq.read_table(pa.BufferReader(data))
    i = body.schema.get_field_index(spec.key_column)
    s.write_bytes(nulls, parquet_bytes(
        body.set_column(i, spec.key_column, pa.array([None, "b"], pa.string()))))
    key = write_prompt(s, "t")
    sidecar = key.removesuffix(".safetensors") + ".json"
    s.write_bytes(sidecar, b"[1, 2")
    found = {d.key: (d.kind, d.problem) for d in verify_root(s)}
    layout = "/".join(f"{c}=<value>" for c in spec.partition_by)
    assert found == {
        misplaced: ("location", f"expected {spec.prefix()}/{layout}/<file>.parquet"),
        no_key: ("schema", f"lacks required column {spec.key_column!r} of table 'cross_task'"),
        nulls: ("schema", f"required column {spec.key_column!r} has 1 null value(s)"),
        sidecar: ("sidecar", found[sidecar][1]),
    }
    assert "not valid JSON" in found[sidecar][1]
    # a bad sidecar moves together with its prompt
    (d,) = [d for d in verify_root(s) if d.kind == "sidecar"]
    quarantine(s, d)
    assert s.list("prompts") == []
    assert s.list("_quarantine/prompts") == ["_quarantine/" + sidecar, "_quarantine/" + key]


def test_quarantine_keeps_earlier_copies(tmp_path):
    s = Storage(str(tmp_path))
    for body in (b"first", b"second"):
        s.write_bytes("tables/runs/study=s/part-p.parquet", body)
        (d,) = verify_root(s)
        quarantine(s, d)
    assert s.read_bytes("_quarantine/" + d.key) == b"first"
    assert s.read_bytes("_quarantine/" + d.key + ".1") == b"second"
    assert verify_root(s) == []


# -- issue 19, item 1: every kind of stored file -----------------------------------------------


def build_other_kinds(storage: Storage, tmp_path) -> dict[str, str]:
    """A sound projector (+ sidecar), probe, task data copy, image and publish record."""
    from prompt_core.config import ProjectorConfig, TaskConfig
    from prompt_core.data import load_nlp_task, task_to_parquet
    from prompt_core.projectors import Projector, projector_to_bytes
    from tests.flow_helpers import write_task

    proj = "projectors/a/b/pkey.safetensors"
    storage.write_bytes(proj, projector_to_bytes(Projector(2, 8, 12, ProjectorConfig(hidden=4)),
                                                 {"projector_key": "pkey"}))
    storage.write_json(proj.removesuffix(".safetensors") + ".json", {"projector_key": "pkey"})
    probe = "probes/a/t/qkey.json"
    storage.write_json(probe, {"target": "t", "scores": {"p1": 0.5, "p2": 1}})
    td = load_nlp_task(TaskConfig(path=str(write_task(tmp_path / "src", "t", "sentiment"))))
    data = f"task_data/t/{td.fingerprint}.parquet"
    storage.write_bytes(data, task_to_parquet(td))
    image = "artifacts/run1/cross_task_a.png"
    uri = storage.write_bytes(image, png_bytes())
    record = "artifacts/published/s/cross_task/f.json"
    storage.write_json(record, {"lines": [], "uris": {"a": uri}, "summaries": {}})
    return {"projector": proj, "probe": probe, "data": data, "image": image, "record": record}


def test_verify_covers_projectors_probes_task_data_and_images(tmp_path):
    s = Storage(str(tmp_path / "root"))
    keys = build_other_kinds(s, tmp_path)
    assert verify_root(s) == []
    for name in ("projector", "data", "image"):
        whole = s.read_bytes(keys[name])
        s.write_bytes(keys[name], whole[: len(whole) // 2])
    s.write_json(keys["probe"], {"scores": {"p1": "high"}})
    misplaced = keys["data"].replace("task_data/t/", "task_data/other/")
    s.write_bytes(misplaced, s.read_bytes(keys["data"]))
    found = {d.key: (d.kind, d.problem) for d in verify_root(s)}
    assert {k: kind for k, (kind, _) in found.items()} == {
        keys["projector"]: "unreadable", keys["probe"]: "unreadable",
        keys["data"]: "unreadable", misplaced: "unreadable", keys["image"]: "unreadable",
        keys["record"]: "reference"}
    assert "not a valid safetensors file" in found[keys["projector"]][1]
    assert found[keys["probe"]][1] == "score of 'p1' is not a finite number: 'high'"
    assert "truncated" in found[keys["image"]][1]
    assert found[keys["record"]][1] == f"names the damaged image {s.uri(keys['image'])}"
    for d in verify_root(s):
        quarantine(s, d)
    assert verify_root(s) == []
    # the projector moved with its sidecar, like a prompt
    assert s.list("projectors") == []
    assert "_quarantine/projectors/a/b/pkey.json" in s.list("_quarantine")


def test_verify_task_data_location_and_missing_images(tmp_path):
    s = Storage(str(tmp_path / "root"))
    keys = build_other_kinds(s, tmp_path)
    wrong = "task_data/t/0000000000000000.parquet"
    s.write_bytes(wrong, s.read_bytes(keys["data"]))
    s.delete(keys["image"])
    found = {d.key: (d.kind, d.problem) for d in verify_root(s)}
    fingerprint = keys["data"].rsplit("/", 1)[-1].removesuffix(".parquet")
    assert found == {
        wrong: ("location", f"holds task 't' with fingerprint {fingerprint}, whose key is "
                            f"{keys['data']}"),
        keys["record"]: ("reference", f"names the missing image {s.uri(keys['image'])}")}


def check_stamp(s: Storage) -> None:
    s.write_bytes("task_data/t/x.parquet", b"abcdef")
    first = s.stamp("task_data/t/x.parquet")
    assert first[0] == 6 and first == s.stamp("task_data/t/x.parquet")
    s.write_bytes("task_data/t/x.parquet", b"abc")  # truncated in place: another stamp
    assert s.stamp("task_data/t/x.parquet") != first
    with pytest.raises(storage_mod.StorageNotFoundError, match="object not found"):
        s.stamp("task_data/t/nope.parquet")
    with pytest.raises(storage_mod.StorageNotFoundError, match="object not found"):
        s.read_bytes("task_data/t/nope.parquet")


def test_stamp_tells_a_rewritten_object_local(tmp_path):
    check_stamp(Storage(str(tmp_path)))


def test_stamp_tells_a_rewritten_object_s3(moto_endpoint, bucket):
    check_stamp(Storage(f"s3://{bucket}/root", {"endpoint_url": moto_endpoint}))
