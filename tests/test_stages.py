"""The cross_model and tpt stages through the whole flow on tiny models: what each writes, and
that a rerun, an added task and an added model compute only the new units (counted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tasks.stage_units as stage_units
from flows.status import study_status
from flows.transfer_matrix import run_study
from prompt_core.config import parse_study
from prompt_core.errors import InputError
from tasks.storage import open_storage
from tasks.tables import duckdb_connect, read_table
from tests.flow_helpers import Counter, study_dict, task_run_names, write_task


@pytest.fixture(scope="module")
def more_models(tmp_path_factory) -> dict[str, str]:
    """Two more tiny encoders: hidden 48 (a prompt must be projected) and hidden 32 with other
    weights (the unprojected prompt fits too)."""
    import torch
    from transformers import BertConfig, BertModel

    from tests.conftest import _tokenizer

    root = tmp_path_factory.mktemp("more-models")
    tok = _tokenizer()
    out = {}
    for name, hidden, seed in (("tiny48", 48, 1), ("tiny2", 32, 2)):
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=256)
        BertModel(cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture
def counted(monkeypatch):
    """Calls of the projector trainers and of TPT's training loop."""
    objectives = {k: Counter(v) for k, v in stage_units.OBJECTIVES.items()}
    monkeypatch.setattr(stage_units, "OBJECTIVES", objectives)
    tpt_train = Counter(stage_units.train_prompt)
    monkeypatch.setattr(stage_units, "train_prompt", tpt_train)
    return {"projector": objectives, "tpt": tpt_train}


def _study(tasks_root: Path, store: Path, tiny: str, more: dict[str, str],
           names: list[str], models: list[str]) -> dict:
    d = study_dict(tasks_root, ["pos_a"], str(store), tiny)
    d["tasks"] = [{"path": str(tasks_root / n)} for n in names]
    paths = {"tiny": tiny, **more}
    d["models"] = [{"kind": "encoder", "name": m, "model_id": paths[m]} for m in models]
    d["stages"] = ["cross_task", "cross_model", "tpt"]
    d["cross_model"] = {"train_tasks": ["pos_a", "pair_c"],
                        "pairs": [{"source": "tiny", "target": t} for t in models if t != "tiny"],
                        "projector": {"hidden": 16, "steps": 5, "batch_size": 8,
                                      "max_length": 64}}
    d["tpt"] = {"models": ["tiny48"], "targets": ["pos_b", "pos_d"],
                "sources": [{"task": "pos_a"}, {"task": "pos_b", "model": "tiny"}]}
    return d


def test_stages_write_their_tables_and_compute_only_new_units(
        prefect_harness, tiny_models, more_models, tasks_root, tmp_path, counted):
    root = tmp_path / "tasks"
    root.mkdir()
    for n in ("pos_a", "pos_b", "pair_c", "pos_d"):
        (root / n).symlink_to(tasks_root / n, target_is_directory=True)
    store = tmp_path / "store"
    st = open_storage(str(store))
    tiny = tiny_models["encoder"]
    d = _study(root, store, tiny, more_models, ["pos_a", "pos_b", "pair_c", "pos_d"],
               ["tiny", "tiny48"])

    r = run_study(parse_study(d))
    assert r.status == "completed"
    # 1 pair x 2 objectives; 2 held-out targets x 4 sources x 2 objectives (no unprojected:
    # 32 -> 48); TPT on tiny48: 2 targets x 2 sources (pos_a as is, tiny/pos_b projected)
    assert r.stage_counts == {"project": {"computed": 2, "stored": 0},
                              "cross_model": {"computed": 16, "stored": 0},
                              "tpt": {"computed": 4, "stored": 0}}
    assert {k: c.n for k, c in counted["projector"].items()} == {"distance": 1, "task": 1}
    assert counted["tpt"].n == 4

    proj = read_table(st, "projectors").to_pandas()
    assert sorted(proj["objective"]) == ["distance", "task"]
    assert set(proj["train_tasks"].map(json.loads).map(tuple)) == {("pos_a", "pair_c")}
    assert (proj[["source_hidden", "target_hidden"]].values == [32, 48]).all()
    for uri in proj["projector_uri"]:
        assert Path(uri.removeprefix("file://")).is_file()

    xm = read_table(st, "cross_model").to_pandas()
    assert len(xm) == 32  # 16 cells x 2 metrics
    assert set(xm["target_task"]) == {"pos_b", "pos_d"}
    assert set(xm["objective"]) == {"distance", "task"}
    assert (xm["held_out"] == ~xm["source_task"].isin(["pos_a", "pair_c"])).all()
    assert ((xm["score_low"] <= xm["score"]) & (xm["score"] <= xm["score_high"])).all()
    assert (xm["relative_score"] - xm["score"] / xm["own_score"]).abs().max() < 1e-12
    prompts = read_table(st, "prompts").to_pandas()
    own = prompts.set_index(["model", "task"])["prompt_key"]
    assert (xm["target_prompt_key"] == [own[("tiny48", t)] for t in xm["target_task"]]).all()

    tpt = read_table(st, "tpt").to_pandas()
    assert len(tpt) == 4
    assert set(zip(tpt["target_task"], tpt["source_kind"], tpt["source_model"],
                   tpt["source_task"], strict=True)) == {
        ("pos_b", "task", "tiny48", "pos_a"), ("pos_b", "model", "tiny", "pos_b"),
        ("pos_d", "task", "tiny48", "pos_a"), ("pos_d", "model", "tiny", "pos_b")}
    # the baseline is the train stage's random-init prompt (same budget): no extra training
    assert (tpt["baseline_prompt_key"] == [own[("tiny48", t)] for t in tpt["target_task"]]).all()
    assert tpt["projector_key"].notna().sum() == 2
    curves = read_table(st, "training_curves").to_pandas()
    assert set(tpt["tpt_prompt_key"]) <= set(curves["prompt_key"])
    assert (tpt["score_at_step"] == 2).all()  # eval_every

    # the UI shows each stage: the pair's heatmap and the TPT curves inline, from this run
    from tests.artifact_helpers import flow_artifacts

    arts = flow_artifacts(r.run_id)
    for key in ("t-study--cross-model-tiny-to-tiny48", "t-study--tpt-curves-tiny48"):
        assert "data:image/png;base64," in arts[key].data
    assert {"t-study--cross-model-summary", "t-study--tpt-tiny48"} <= set(arts)
    assert "tpt" in arts["t-study--transfer-matrix-summary"].data.lower()

    # the stages' tables are queryable through the current_* views
    con = duckdb_connect(st)
    assert con.execute("select count(*) from current_cross_model").fetchone()[0] == 32
    assert con.execute("select count(*) from current_tpt").fetchone()[0] == 4
    assert con.execute("select count(*) from current_projectors").fetchone()[0] == 2

    # a new task (the rerun of everything else computes nothing): its prompts and matrix
    # cells; the projectors (trained on pos_a, pair_c) stay; cross-model: a new held-out
    # target (5 sources x 2 objectives) and the new source on the 2 old targets (x 2
    # objectives); TPT targets are explicit: nothing new
    for c in [*counted["projector"].values(), counted["tpt"]]:
        c.n = 0
    write_task(root, "pos_e", "sentiment")
    d = _study(root, store, tiny, more_models, ["pos_a", "pos_b", "pair_c", "pos_d", "pos_e"],
               ["tiny", "tiny48"])
    before = {(x.stage, x.model): (x.done, x.total) for x in study_status(parse_study(d)).stages
              if x.stage in ("project", "cross_model", "tpt")}
    # status plans the later stages from what is stored: the new task's prompts are missing,
    # so every cross-model target (each has it as a source) is still to do
    assert before == {("project", "tiny48"): (2, 2), ("cross_model", "tiny48"): (0, 3),
                      ("tpt", "tiny48"): (4, 4)}
    r3 = run_study(parse_study(d))
    assert study_status(parse_study(d)).complete
    assert r3.n_prompts_trained == 2
    assert r3.stage_counts["project"] == {"computed": 0, "stored": 2}
    assert r3.stage_counts["cross_model"] == {"computed": 10 + 4, "stored": 16}
    assert r3.stage_counts["tpt"] == {"computed": 0, "stored": 4}
    assert all(c.n == 0 for c in counted["projector"].values()) and counted["tpt"].n == 0

    # a new model (and its pair): its prompts, its 2 projectors and its pair's cells only;
    # same hidden size as tiny, so its cells include the unprojected prompt (3 per source)
    d = _study(root, store, tiny, more_models, ["pos_a", "pos_b", "pair_c", "pos_d", "pos_e"],
               ["tiny", "tiny48", "tiny2"])
    r4 = run_study(parse_study(d))
    assert r4.n_prompts_trained == 5
    assert r4.stage_counts["project"] == {"computed": 2, "stored": 2}
    assert r4.stage_counts["cross_model"] == {"computed": 3 * 5 * 3, "stored": 30}
    assert r4.stage_counts["tpt"] == {"computed": 0, "stored": 4}
    xm = read_table(st, "cross_model").to_pandas()
    none = xm[(xm["target_model"] == "tiny2") & (xm["objective"] == "none")]
    assert len(none) == 5 * 3 * 2 and none["projector_key"].isna().all()


def test_tpt_top_k_and_its_own_budget(prefect_harness, tiny_models, tasks_root, tmp_path,
                                      counted):
    """top_k sources are ranked on the target's VALIDATION split (table tpt_rankings), never
    by the test-split matrix, and need no cross_task stage; a TPT budget other than the
    training's trains random-init baselines with that budget."""
    store = tmp_path / "store"
    d = study_dict(tasks_root, ["pos_a", "pos_b", "pair_c"], str(store), tiny_models["encoder"])
    d["stages"] = ["tpt"]
    d["tpt"] = {"top_k": 1, "targets": ["pos_a"], "steps": 6, "eval_every": 3,
                "score_at_step": 4, "rank_max_examples": 10}
    study = parse_study(d)
    before = study_status(study)
    assert [(s.done, s.total) for s in before.stages if s.stage == "tpt_rank"] == [(0, 1)]
    r = run_study(study)
    st = open_storage(str(store))
    assert r.n_prompts_trained == 3 + 1  # the study's prompts + the target's TPT baseline
    assert r.stage_counts["tpt_rank"] == {"computed": 1, "stored": 0}
    tpt = read_table(st, "tpt").to_pandas()
    ranks = read_table(st, "tpt_rankings").to_pandas()
    assert set(ranks["split"]) == {"validation"} and set(ranks["n_examples"]) == {10}
    assert sorted(ranks["source_task"]) == ["pair_c", "pos_b"]  # every other task, not itself
    assert (ranks["relative_score"] == ranks["score"] / ranks["own_score"]).all()
    best = ranks.sort_values(["relative_score", "source_task"], ascending=[False, True])
    assert tpt["source_task"].tolist() == [best["source_task"].iloc[0]]
    status = study_status(study)
    assert status.complete
    assert [(s.done, s.total) for s in status.stages if s.stage == "tpt_rank"] == [(1, 1)]
    r2 = run_study(study)  # the ranking is stored: read, not scored again
    assert r2.stage_counts["tpt_rank"] == {"computed": 0, "stored": 1}
    assert r2.stage_counts["tpt"] == {"computed": 0, "stored": 1}
    assert task_run_names(r2.run_id) == []  # every part planned as stored, baselines too
    prompts = read_table(st, "prompts").to_pandas()
    base = prompts[prompts["prompt_key"] == tpt["baseline_prompt_key"].iloc[0]].iloc[0]
    assert (base["task"], base["steps"]) == ("pos_a", 6)
    row = tpt.iloc[0]
    assert (row["steps"], row["eval_every"], row["score_at_step"]) == (6, 3, 3)


def test_stage_options_are_checked_before_compute(prefect_harness, tiny_models, more_models,
                                                  tasks_root, tmp_path, counted):
    d = _study(tasks_root, tmp_path / "store", tiny_models["encoder"], more_models,
               ["pos_a", "pos_b", "pair_c"], ["tiny", "tiny48"])
    d["cross_model"]["train_tasks"] = ["pos_a", "nope"]
    d["tpt"]["sources"] = [{"task": "pos_a", "model": "tiny48"}]
    d["tpt"]["models"] = ["tiny"]  # no projector pair tiny48 -> tiny
    with pytest.raises(InputError) as e:
        run_study(parse_study(d))
    msg = str(e.value)
    assert "cross_model.train_tasks: unknown task(s) ['nope']" in msg
    assert "needs the projector pair tiny48 -> tiny" in msg
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.parquet"))
    assert counted["tpt"].n == 0
