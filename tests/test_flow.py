"""The transfer_matrix flow end to end on tiny models: tables, idempotence, incrementality,
S3 storage, bad input. Work is counted by wrapping the training and scoring functions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest

from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import duckdb_connect, read_table
from tests.flow_helpers import DEV_EVALS, files_under, study_dict, write_task
from tests.s3_server import moto_s3_server


def test_study_is_idempotent_and_incremental(prefect_harness, tiny_models, tasks_root, tmp_path,
                                             counters):
    from flows.transfer_matrix import run_study

    storage = str(tmp_path / "store")
    three = parse_study(study_dict(tasks_root, ["pos_a", "pos_b", "pair_c"], storage,
                                   tiny_models["encoder"]))
    r1 = run_study(three)
    assert (r1.n_prompts_trained, r1.n_prompts_cached) == (3, 0)
    # 3 targets x (3 prompts + random + none) cells, 1 seed
    assert (r1.n_cells_evaluated, r1.n_cells_cached) == (15, 0)
    assert counters["train"].n == 3
    # scoring = 3 dev evaluations per trained prompt (steps 0, 2, 4) + matrix cells, where
    # no-prompt is scored once per target and reused across its seed rows: 3 x (3 + 1 + 1)
    assert counters["score"].n == 3 * DEV_EVALS + 15

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[r1.run_id])))
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r1.run_id])))
    by_type = {}
    for a in arts:
        by_type.setdefault(a.type, []).append(a)
    assert set(by_type) == {"progress", "markdown", "table"}  # a link is a markdown artifact
    assert by_type["progress"][0].data == 100.0  # every unit reported
    md = {a.key: a.data for a in by_type["markdown"]}
    assert "own prompt beats no prompt on" in md["t-study--transfer-matrix-summary"]
    assert "](data:image/png;base64," in md["t-study--heatmap-tiny"]  # shown inline in the UI
    table = by_type["table"][0].data
    assert "pos_a" in str(table) and "random" in str(table)
    names = {t.name for t in runs}
    assert {"prepare pos_a", "train tiny/pos_a seed=0", "train tiny/pair_c seed=0",
            "evaluate tiny -> pos_b"} <= names
    assert len(runs) == 3 + 3 + 3  # prepare, train, evaluate: not one task run per cell
    # untagged by default (runner.task_tags: Prefect acquires tag slots through the API as a
    # tagged task run starts); the stage, model and NLP task are in the name. The flow run is
    # named after the study and its start time, not random words
    assert all(t.tags == [] for t in runs), [(t.name, t.tags) for t in runs]
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(r1.run_id)
    assert re.fullmatch(r"t-study \d{4}-\d\d-\d\d \d\d:\d\d UTC", fr.name), fr.name

    st = open_storage(storage)
    ct = read_table(st, "cross_task").to_pandas()
    assert len(ct) == 30 and set(ct["metric"]) == {"accuracy", "macro_f1"}
    assert set(ct["source_kind"]) == {"prompt", "random", "none"}
    diag = ct[(ct["source_task"] == ct["target_task"])]
    assert len(diag) == 6 and (diag["relative_score"] == 1.0).all()
    off = ct[(ct["source_kind"] == "prompt") & (ct["source_task"] != ct["target_task"])]
    assert off["same_type"].tolist().count(True) == 4  # pos_a<->pos_b, both metrics
    assert (ct["n_examples"] == 16).all() and (ct["study"] == "t-study").all()
    own = ct[(ct["source_task"] == ct["target_task"]) & (ct["metric"] == "accuracy")]
    for _, row in ct[ct["metric"] == "accuracy"].iterrows():
        base = own[own["target_task"] == row["target_task"]]["score"].item()
        assert row["relative_score"] == pytest.approx(row["score"] / base)

    prompts = read_table(st, "prompts").to_pandas()
    assert sorted(prompts["task"]) == ["pair_c", "pos_a", "pos_b"]
    assert (prompts["best_step"] >= 2).all()
    curves = read_table(st, "training_curves").to_pandas()
    assert sorted(curves[curves["task"] == "pos_a"]["step"]) == [0, 2, 4]
    runs = read_table(st, "runs").to_pandas()
    assert runs["status"].tolist() == ["completed"]
    from safetensors import safe_open

    for uri in prompts["prompt_uri"]:
        with safe_open(uri, framework="pt") as f:
            assert f.get_tensor("prompt").shape == (4, 32)
            assert json.loads(f.metadata()["prompt_transfer"])["model"] == "tiny"
    assert Path(r1.heatmaps["tiny"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # rerun: nothing trained, nothing scored, no new table rows, no table file rewritten
    before = files_under(Path(storage) / "tables")
    r2 = run_study(three)
    assert (r2.n_prompts_trained, r2.n_prompts_cached) == (0, 3)
    assert (r2.n_cells_evaluated, r2.n_cells_cached) == (0, 15)
    assert counters["train"].n == 3 and counters["score"].n == 3 * DEV_EVALS + 15
    after = files_under(Path(storage) / "tables")
    new = set(after) - set(before)
    # only the run's own rows: its runs row and its membership (run_keys)
    assert sorted(k.split("/")[0] for k in new) == ["run_keys", "runs"]
    assert all(after[k] == v for k, v in before.items())
    assert len(read_table(st, "cross_task")) == 30

    # add a 4th task: one new prompt, its row (3 old targets) and its column (4 + 2 cells)
    four = study_dict(tasks_root, ["pos_a", "pos_b", "pair_c", "pos_d"], storage,
                      tiny_models["encoder"])
    four["runner"]["task_tags"] = True  # the UI filters these task runs by stage and model
    r3 = run_study(parse_study(four))
    with get_client(sync_client=True) as client:
        tagged = {t.name: set(t.tags) for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r3.run_id])))}
    assert tagged["train tiny/pos_d seed=0"] == {"stage:train", "model:tiny"}
    assert tagged["evaluate tiny -> pos_d"] == {"stage:evaluate", "model:tiny"}
    assert tagged["prepare pos_d"] == {"stage:prepare"}
    assert (r3.n_prompts_trained, r3.n_prompts_cached) == (1, 3)
    assert (r3.n_cells_evaluated, r3.n_cells_cached) == (3 + 6, 15)
    assert counters["train"].n == 4
    # one more prompt's dev evaluations, its row (3) and the new column (4 + random + none)
    assert counters["score"].n == 4 * DEV_EVALS + 15 + 3 + 6
    ct = read_table(st, "cross_task").to_pandas()
    assert len(ct) == 2 * (4 * 6) and not ct.duplicated(["cell_key", "metric"]).any()
    # relative score of the new prompt on an old target uses the stored own-prompt score
    acc = ct[ct["metric"] == "accuracy"]
    cell = acc[(acc["source_task"] == "pos_d") & (acc["target_task"] == "pos_a")].iloc[0]
    own_a = acc[(acc["source_task"] == "pos_a") & (acc["target_task"] == "pos_a")].iloc[0]
    assert cell["relative_score"] == pytest.approx(cell["score"] / own_a["score"])

    con = duckdb_connect(st)
    n = con.execute("select count(*) from cross_task where study = 't-study' and "
                    "model = 'tiny' and metric = 'accuracy'").fetchone()[0]
    assert n == 24
    assert con.execute("select count(*) from runs").fetchone()[0] == 3

    # another evaluation config is another set of cells; prompts are reused
    d = study_dict(tasks_root, ["pos_a", "pos_b", "pair_c", "pos_d"], storage,
                   tiny_models["encoder"])
    d["evaluation"]["max_examples"] = 8
    r4 = run_study(parse_study(d))
    assert (r4.n_prompts_trained, r4.n_cells_evaluated, r4.n_cells_cached) == (0, 24, 0)
    ct = read_table(st, "cross_task").to_pandas()
    small = ct[ct["n_examples"] == 8]
    assert len(small) == 48
    diag = small[small["source_task"] == small["target_task"]]
    assert (diag["relative_score"] == 1.0).all()


def test_bad_task_fails_before_training(prefect_harness, tiny_models, tasks_root, tmp_path,
                                        counters):
    from flows.transfer_matrix import run_study
    from prompt_core.errors import InputError

    bad = tmp_path / "bad_task"
    write_task(tmp_path, "bad_task", "sentiment")
    (bad / "test.jsonl").write_text('{"text_a": "x", "text_b": null, "label": 7}\n')
    d = study_dict(tasks_root, ["pos_a"], str(tmp_path / "store"), tiny_models["encoder"])
    d["tasks"].append({"path": str(bad)})
    with pytest.raises(InputError, match=r"tasks.1 \(bad_task\).*label\(s\) outside 0..1"):
        run_study(parse_study(d))
    assert counters["train"].n == 0
    assert not (tmp_path / "store").exists()  # bad input writes nothing, not even a runs row


def test_study_on_s3(prefect_harness, tiny_models, tasks_root, monkeypatch):
    from flows.transfer_matrix import run_study

    with moto_s3_server() as endpoint:
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1",
                     "PROMPT_TRANSFER_S3_ENDPOINT": endpoint}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="pt-results")
        study = parse_study(study_dict(tasks_root, ["pos_a", "pair_c"], "s3://pt-results/runs",
                                       tiny_models["encoder"]))
        r = run_study(study)
        assert r.storage == "s3://pt-results/runs"
        assert (r.n_prompts_trained, r.n_cells_evaluated) == (2, 8)
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint)
                .list_objects_v2(Bucket="pt-results")["Contents"]]
        assert any(k.startswith("runs/tables/cross_task/study=t-study/model=tiny/"
                   "target_task=pos_a/part-")
                   for k in keys)
        assert any(k.endswith(".safetensors") for k in keys)
        assert any(k.endswith(".png") for k in keys)
        con = duckdb_connect(open_storage("s3://pt-results/runs"))
        rows = con.execute("select target_task, count(*) from cross_task group by 1 "
                           "order by 1").fetchall()
        assert rows == [("pair_c", 8), ("pos_a", 8)]
        assert run_study(study).n_cells_evaluated == 0


def test_training_from_a_prompt_file(prefect_harness, tiny_models, tasks_root, tmp_path,
                                     counters):
    """TPT: a study whose prompts start from an existing prompt file; the file's content is
    part of the prompt key, and a bad file fails with a clear error before training."""
    from flows.transfer_matrix import run_study
    from prompt_core.errors import InputError
    from prompt_core.prompts import prompt_from_bytes, prompt_to_bytes
    from tasks.units import read_init_prompt

    storage = str(tmp_path / "store")
    base = study_dict(tasks_root, ["pos_a"], storage, tiny_models["encoder"])
    run_study(parse_study(base))
    src = read_table(open_storage(storage), "prompts").to_pandas()["prompt_uri"].item()

    tpt = dict(base, training={**base["training"], "init": "prompt", "init_prompt": src})
    r = run_study(parse_study(tpt))
    assert r.n_prompts_trained == 1 and counters["train"].n == 2
    rows = read_table(open_storage(storage), "prompts").to_pandas()
    assert rows["prompt_key"].nunique() == 2  # init file is part of the key
    curves = read_table(open_storage(storage), "training_curves").to_pandas()
    step0 = curves[curves["step"] == 0].sort_values("created_at")["dev_accuracy"].tolist()
    src_best = rows.sort_values("created_at")["dev_accuracy"].iloc[0]
    assert step0[1] == pytest.approx(src_best)  # starts where the source prompt ended

    # the same content under another name gives the same key; other content another key
    data, sha = read_init_prompt(parse_study(tpt).training)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(data)
    assert read_init_prompt(parse_study(dict(tpt, training={
        **tpt["training"], "init_prompt": str(copy)})).training)[1] == sha
    p, meta = prompt_from_bytes(data)
    copy.write_bytes(prompt_to_bytes(p * 2, meta))
    assert read_init_prompt(parse_study(dict(tpt, training={
        **tpt["training"], "init_prompt": str(copy)})).training)[1] != sha

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a prompt")
    with pytest.raises(InputError, match="training.init_prompt: .*bad.safetensors: not a valid "
                                         "safetensors"):
        run_study(parse_study(dict(tpt, training={**tpt["training"], "init_prompt": str(bad)})))
    assert counters["train"].n == 2


def test_two_backbone_kinds_in_one_study(prefect_harness, tiny_models, tasks_root, tmp_path):
    """An encoder and a masked LM side by side: one partition per model, same matrix shape."""
    from flows.transfer_matrix import run_study

    storage = str(tmp_path / "store")
    d = study_dict(tasks_root, ["pos_a", "pair_c"], storage, tiny_models["encoder"])
    d["models"].append({"kind": "mlm", "name": "tinymlm", "model_id": tiny_models["mlm"],
                        "lr": 0.01})
    r = run_study(parse_study(d))
    assert (r.n_prompts_trained, r.n_cells_evaluated) == (4, 16)
    assert set(r.summaries) == {"tiny", "tinymlm"}
    st = open_storage(storage)
    prompts = read_table(st, "prompts", filters={"model": "tinymlm"}).to_pandas()
    assert set(prompts["backbone_kind"]) == {"mlm"} and (prompts["lr"] == 0.01).all()
    parts = st.list("tables/cross_task/study=t-study/")
    assert {p.split("/")[3] for p in parts} == {"model=tiny", "model=tinymlm"}
    con = duckdb_connect(st)
    assert con.execute("select model, count(*) from cross_task group by 1 order by 1"
                       ).fetchall() == [("tiny", 16), ("tinymlm", 16)]


def test_failed_run_records_the_work_it_finished(prefect_harness, tiny_models, tasks_root,
                                                 tmp_path, monkeypatch):
    """An evaluation unit that keeps failing fails the run; the runs row says so and counts
    the prompts trained before the failure, which a rerun then reuses."""
    import tasks.units as units
    from flows.transfer_matrix import run_study

    real = units.read_parts

    def broken(storage, table, *a, **k):
        if table == "cross_task":
            raise RuntimeError("storage went away")
        return real(storage, table, *a, **k)

    monkeypatch.setattr(units, "read_parts", broken)
    storage = str(tmp_path / "store")
    study = parse_study(study_dict(tasks_root, ["pos_a", "pos_b"], storage,
                                   tiny_models["encoder"]))
    with pytest.raises(RuntimeError, match="evaluate tiny -> pos_.: RuntimeError: storage went "
                                           "away"):
        run_study(study)
    runs = read_table(open_storage(storage), "runs").to_pandas()
    assert runs[["status", "n_prompts_trained", "n_cells_evaluated"]].values.tolist() == [
        ["failed", 2, 0]]
    monkeypatch.setattr(units, "read_parts", real)
    r = run_study(study)
    assert (r.n_prompts_trained, r.n_prompts_cached, r.n_cells_evaluated) == (0, 2, 8)


@pytest.fixture
def distinct_scores(monkeypatch):
    """Scores that differ per prompt and per target (a tiny random model scores about 0.5
    everywhere, which makes any denominator of relative_score look right)."""
    from prompt_core.evaluation import EncodedSplit

    def fake(self, prompt, batch_size=64, return_predictions=False):
        target = sum(self.items[0].input_ids) % 101 / 1000
        acc = 0.5 if prompt is None else 0.2 + (float(prompt.abs().sum()) * 7919) % 0.6
        s = {"accuracy": acc + target, "macro_f1": (acc + target) / 2}
        # predictions only feed the bootstrap interval, which this test does not read
        return (s, self.labels.copy()) if return_predictions else s

    def fake_many(self, prompts, batch_size=64, bf16=None, return_predictions=False,
                  prompts_per_pass=None):
        got = [fake(self, p, batch_size, True) for p in prompts]
        s, preds = [g[0] for g in got], [g[1] for g in got]
        return (s, preds) if return_predictions else s

    monkeypatch.setattr(EncodedSplit, "evaluate", fake)
    monkeypatch.setattr(EncodedSplit, "evaluate_many", fake_many)


def test_published_figures_are_exactly_this_runs_cells(prefect_harness, tiny_models, tasks_root,
                                                       tmp_path, distinct_scores):
    """Item 1 and 2: after a configuration change, a run's summary comes from its own cells,
    the current_cross_task view selects them, and relative_score divides by the target's own
    prompt of the same seed (target_prompt_key)."""
    from flows.transfer_matrix import run_study
    from prompt_core.analysis import MixedCellsError, transfer_summary

    storage = str(tmp_path / "store")
    d = study_dict(tasks_root, ["pos_a", "pos_b", "pair_c"], storage, tiny_models["encoder"])
    d["seeds"] = [0, 1]
    run_study(parse_study(d))
    d["training"]["steps"] = 2  # another configuration: every prompt and cell is new
    r2 = run_study(parse_study(d))
    assert (r2.n_prompts_trained, r2.n_cells_evaluated) == (6, 30)

    st = open_storage(storage)
    every = read_table(st, "cross_task").to_pandas()
    assert every["config_key"].nunique() == 2 and len(every) == 2 * 60
    with pytest.raises(MixedCellsError):  # the old publishing averaged these
        transfer_summary(every)
    con = duckdb_connect(st)
    cur = con.execute("select * from current_cross_task").df()
    assert len(cur) == 60 and cur["config_key"].nunique() == 1
    assert set(cur["run_id"]) == {r2.run_id}
    assert r2.summaries["tiny"] == transfer_summary(cur)
    assert con.execute("select count(*) from current_prompts").fetchone()[0] == 6
    assert con.execute("select run_id from latest_runs").fetchall() == [(r2.run_id,)]

    # the denominator: the target's own prompt of the same seed, named in the row
    prompts = con.execute("select task, seed, prompt_key from current_prompts").fetchall()
    own_key = {(t, s): k for t, s, k in prompts}
    assert (cur.apply(lambda r: own_key[(r.target_task, r.seed)], axis=1)
            == cur["target_prompt_key"]).all()
    own_cells = cur[cur["source_prompt_key"] == cur["target_prompt_key"]]
    own_score = {(r.target_task, r.seed, r.metric): r.score for r in own_cells.itertuples()}
    assert len(own_score) == 3 * 2 * 2
    for r in cur.itertuples():
        assert r.relative_score == pytest.approx(r.score / own_score[(r.target_task, r.seed,
                                                                      r.metric)])
    assert cur["relative_score"].round(6).nunique() > 20  # scores differ: a real check


def test_keys_hash_content_and_studies_share_prompt_files(prefect_harness, tiny_models,
                                                          tasks_root, tmp_path, counters):
    """Item 3: the same init prompt file or model folder in another location keeps its keys;
    a second study with the same configuration reuses the stored prompt files (no retraining,
    no overwrite) and gets its own rows."""
    import shutil

    from flows.transfer_matrix import run_study

    storage = str(tmp_path / "store")
    base = study_dict(tasks_root, ["pos_a", "pos_b"], storage, tiny_models["encoder"])
    run_study(parse_study(base))
    assert counters["train"].n == 2
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "prompts").rglob("*")}

    other = dict(base, name="t-study-2")
    r = run_study(parse_study(other))
    assert (r.n_prompts_trained, r.n_prompts_cached) == (0, 2) and counters["train"].n == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "prompts").rglob("*")} \
        == files  # nothing overwritten
    rows = read_table(open_storage(storage), "prompts", filters={"study": "t-study-2"})
    assert rows.num_rows == 2

    moved_model = tmp_path / "elsewhere" / "tiny-encoder"
    shutil.copytree(tiny_models["encoder"], moved_model)
    moved = study_dict(tasks_root, ["pos_a", "pos_b"], storage, str(moved_model))
    r = run_study(parse_study(moved))
    assert (r.n_prompts_trained, r.n_cells_evaluated) == (0, 0) and counters["train"].n == 2

    src = read_table(open_storage(storage), "prompts").to_pandas()["prompt_uri"].iloc[0]
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / "init.safetensors")
    trained = []
    for folder in ("one", "two"):
        tpt = dict(base, training={**base["training"], "init": "prompt",
                                   "init_prompt": str(tmp_path / folder / "init.safetensors")})
        trained.append(run_study(parse_study(tpt)).n_prompts_trained)
    assert trained == [2, 0] and counters["train"].n == 4


def test_damaged_files_are_quarantined_and_recomputed(prefect_harness, tiny_models, tasks_root,
                                                     tmp_path, counters):
    """Item 10: a truncated prompt file is retrained, a 0-byte cross_task part re-evaluated,
    a damaged prompts row rebuilt from its intact prompt file; the damaged bytes are kept in
    _quarantine/; a damaged part fails only the queries that read its table."""
    from flows.transfer_matrix import run_study

    storage = str(tmp_path / "store")
    study = parse_study(study_dict(tasks_root, ["pos_a", "pos_b"], storage,
                                   tiny_models["encoder"]))
    run_study(study)
    root = tmp_path / "store"
    prompt_a = next((root / "prompts" / "tiny" / "pos_a").glob("*.safetensors"))
    prompt_a.write_bytes(prompt_a.read_bytes()[: prompt_a.stat().st_size // 2])
    part_b = next((root / "tables" / "cross_task").rglob("target_task=pos_b/part-*.parquet"))
    part_b.write_bytes(b"")
    prompts_b = next((root / "tables" / "prompts").rglob("part-*.parquet"))
    key_b = read_table(open_storage(storage), "prompts").to_pandas().set_index("task")
    prompts_b = prompts_b.with_name(f"part-{key_b.loc['pos_b', 'prompt_key']}.parquet")
    prompts_b.write_bytes(prompts_b.read_bytes()[:100])

    con = duckdb_connect(open_storage(storage), ["runs", "cross_task"])
    assert con.execute("select count(*) from runs").fetchone()[0] == 1
    with pytest.raises(Exception, match=part_b.name):
        con.execute("select count(*) from cross_task").fetchall()

    r = run_study(study)
    assert r.status == "completed"
    assert (r.n_prompts_trained, r.n_prompts_cached) == (1, 1) and counters["train"].n == 3
    assert (r.n_cells_evaluated, r.n_cells_cached) == (4, 4)  # the pos_b column again
    quarantined = sorted(str(p.relative_to(root / "_quarantine"))
                         for p in (root / "_quarantine").rglob("*") if p.is_file())
    sidecar = prompt_a.with_suffix(".json")  # a prompt file moves with its metadata sidecar
    assert quarantined == sorted(str(p.relative_to(root))
                                 for p in (prompt_a, sidecar, part_b, prompts_b))
    assert (root / "_quarantine" / part_b.relative_to(root)).stat().st_size == 0
    ct = read_table(open_storage(storage), "cross_task").to_pandas()
    assert len(ct) == 2 * 8 and not ct.duplicated(["cell_key", "metric"]).any()
