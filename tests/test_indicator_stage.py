"""The indicators stage through the whole flow on a tiny model: what it writes (indicators,
ablations, correlations, recommendations), that joins go through prompt keys, that an added
task computes only its new pairs (counted), its status, artifacts and the ``recommend``
command."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import prompt_core.indicators as indicators_mod
import prompt_core.recommend as recommend_mod
from flows.cli import app
from flows.status import study_status
from flows.transfer_matrix import run_study
from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import duckdb_connect, read_table
from tests.flow_helpers import Counter, study_dict, task_run_names

TASKS = ["pos_a", "pos_b", "pair_c"]


@pytest.fixture
def counted(monkeypatch):
    """Calls of the pair indicators, the ablation and the probe (imported at call time)."""
    out = {"pairs": Counter(indicators_mod.all_indicators),
           "ablation": Counter(indicators_mod.masking_ablation),
           "probe": Counter(recommend_mod.probe_scores)}
    monkeypatch.setattr(indicators_mod, "all_indicators", out["pairs"])
    monkeypatch.setattr(indicators_mod, "masking_ablation", out["ablation"])
    monkeypatch.setattr(recommend_mod, "probe_scores", out["probe"])
    return out


def _study(root: Path, store: Path, tiny: str, names: list[str]) -> dict:
    d = study_dict(root, names, str(store), tiny)
    d["stages"] = ["cross_task", "indicators"]
    d["indicators"] = {"window": 1, "ablation_fractions": [0.1, 0.5],
                       "ablation_max_examples": 8, "probe_examples": 8}
    return d


def test_indicators_stage_writes_its_tables_and_computes_only_new_pairs(
        prefect_harness, tiny_models, tasks_root, tmp_path, counted):
    store = tmp_path / "store"
    st = open_storage(str(store))
    tiny = tiny_models["encoder"]
    r = run_study(parse_study(_study(tasks_root, store, tiny, TASKS)))
    assert r.status == "completed", r.failures
    # 3 pairs; 3 ablations; 3 probes; one correlation and one recommendation unit
    new = {"computed": 1, "stored": 0}
    assert r.stage_counts == {"indicators": {"computed": 3, "stored": 0},
                              "ablate": {"computed": 3, "stored": 0},
                              "probe": {"computed": 3, "stored": 0},
                              "correlate": new, "recommend": new}
    assert (counted["pairs"].n, counted["ablation"].n, counted["probe"].n) == (3, 3, 3)

    prompts = read_table(st, "prompts").to_pandas().set_index("task")["prompt_key"]
    ind = read_table(st, "indicators").to_pandas()
    # a tiny 2-layer model with window 1: ON over all layers and per layer, plus 5 ES
    names = {"es_cosine", "es_token_cosine", "es_euclidean", "es_token_euclidean",
             "es_token_cosine_aligned", "on", "on_layers_1-1", "on_layers_2-2"}
    assert set(ind["indicator"]) == names
    assert len(ind) == 3 * len(names)
    pairs = {frozenset((a, b)) for a, b in zip(ind["prompt_a"], ind["prompt_b"], strict=True)}
    assert pairs == {frozenset((prompts[a], prompts[b])) for a, b in combinations(TASKS, 2)}
    assert (ind["prompt_a"] < ind["prompt_b"]).all()  # an unordered pair, stored once
    # ON and the euclidean variant lie in [0, 1]; cosines in [-1, 1]
    on_euc = ind[~ind["indicator"].isin(["es_cosine", "es_token_cosine",
                                         "es_token_cosine_aligned"])]
    assert on_euc["value"].between(0, 1).all() and ind["value"].between(-1, 1).all()
    assert (ind["same_type"] == (ind["task_type_a"] == ind["task_type_b"])).all()

    abl = read_table(st, "ablations").to_pandas()
    assert len(abl) == 3 * 2 and sorted(abl["fraction"].unique()) == [0.1, 0.5]
    assert (abl["top_drop"] - (abl["score"] - abl["top_masked_score"])).abs().max() < 1e-9
    assert (abl["n_examples"] == 8).all()

    corr = read_table(st, "correlations").to_pandas()
    assert set(corr["method"]) == {"spearman", "kendall"}
    assert set(corr["measure"]) == {"relative_score", "transfer_gain"}
    assert set(corr["scope"]) == {"all", "mean_over_targets", *TASKS}
    # over all pairs: 3 targets x 2 sources = 6 (source, target) pairs per indicator,
    # pooled: a descriptive rho without a p-value
    allp = corr[(corr["scope"] == "all") & (corr["measure"] == "relative_score")]
    assert (allp["n_pairs"] == 6).all() and set(allp["indicator"]) == names
    assert allp["p_value"].isna().all() and (allp["p_method"] == "none").all()
    # 2 sources per target are under min_pairs (3): no per-target rho, so no mean either
    mean = corr[corr["scope"] == "mean_over_targets"]
    assert len(mean) == len(names) * 2 * 2 and (mean["n_targets"] == 0).all()
    assert mean["rho"].isna().all() and (mean["p_method"] == "permutation_within_target").all()

    rec = read_table(st, "recommendations").to_pandas()
    assert set(rec["method"]) == {"probe", "same_type", "random", *names}
    # leave-one-task-out: every target ranks the other two tasks' prompts, never its own
    for (target, _method), g in rec.groupby(["target_task", "method"]):
        assert sorted(g["source_task"]) == sorted(t for t in TASKS if t != target)
        assert prompts[target] not in set(g["source_prompt_key"])
    cells = read_table(st, "cross_task").to_pandas()
    acc = cells[(cells["metric"] == "accuracy") & (cells["source_kind"] == "prompt")]
    true = acc.set_index(["source_task", "target_task"])["score"]
    assert all(abs(true[(s, t)] - v) < 1e-12 for s, t, v in
               zip(rec["source_task"], rec["target_task"], rec["true_score"], strict=True))
    same = rec[rec["method"] == "same_type"]
    assert ((same["score"] == 1.0) == (same["source_task_type"] == same["target_task_type"])).all()

    # the UI: the scatter inline (equal to the PNG in storage), the correlation and
    # recommender tables from exactly these rows, the summary's section
    from flows.publish_indicators import ranking_tables
    from tests.artifact_helpers import flow_artifacts, inline_png, table_data

    arts = flow_artifacts(r.run_id)
    png, img = inline_png(arts["t-study--indicators-tiny"].data)
    assert open(r.heatmaps["indicators tiny"].removeprefix("file://"), "rb").read() == png
    assert img[..., :3].std() > 0.05
    got = table_data(arts["t-study--correlations-tiny"])
    assert len(got) == len(corr[corr["scope"] == "all"])
    assert {(g["indicator"], g["measure"], g["method"], g["n_pairs"]) for g in got} == {
        (c.indicator, c.measure, c.method, c.n_pairs)
        for c in corr[corr["scope"] == "all"].itertuples()}
    assert {(g["indicator"], g["measure"], g["method"], g["n_targets"], g["mean_rho"])
            for g in got} == {(c.indicator, c.measure, c.method, 0, None)
                              for c in mean.itertuples()}
    want = ranking_tables(rec)[1].set_index("method")
    got = {g["method"]: g for g in table_data(arts["t-study--recommender-tiny"])}
    assert set(got) == set(want.index)
    for method, g in got.items():
        assert g["hit_at_1"] == pytest.approx(want.loc[method, "hit_at_1"], abs=1e-4)
        assert g["regret"] == pytest.approx(want.loc[method, "regret"], abs=1e-4)
    summary = arts["t-study--transfer-matrix-summary"].data
    assert "## Transferability indicators" in summary
    # the per-target mean is the figure with a test; the pooled rho only a description
    assert "`tiny` Spearman with relative score, mean over targets [95% interval] " \
           "(permutation p; pooled rho, descriptive): " in summary
    assert "(p n/a, 0 targets; pooled " in summary
    assert f"`tiny` probe: top-1 {want.loc['probe', 'hit_at_1']:.2f}" in summary

    # the views: exactly the latest run's rows
    con = duckdb_connect(st)
    for view, n in (("current_indicators", len(ind)), ("current_ablations", len(abl)),
                    ("current_correlations", len(corr)), ("current_recommendations", len(rec))):
        assert con.execute(f"select count(*) from {view}").fetchone()[0] == n

    status = study_status(parse_study(_study(tasks_root, store, tiny, TASKS)), st)
    by = {(s.stage, s.model): s for s in status.stages}
    assert (by[("indicators", "tiny")].done, by[("indicators", "tiny")].total) == (3, 3)
    assert (by[("ablate", "tiny")].done, by[("ablate", "tiny")].total) == (3, 3)

    # a rerun computes nothing; adding a task computes only its pairs, ablation and probes
    r2 = run_study(parse_study(_study(tasks_root, store, tiny, TASKS)))
    old = {"computed": 0, "stored": 1}
    assert r2.stage_counts == {"indicators": {"computed": 0, "stored": 3},
                               "ablate": {"computed": 0, "stored": 3},
                               "probe": {"computed": 0, "stored": 3},
                               "correlate": old, "recommend": old}
    assert (counted["pairs"].n, counted["ablation"].n, counted["probe"].n) == (3, 3, 3)
    assert task_run_names(r2.run_id) == []  # every unit planned as stored: no task run
    four = [*TASKS, "pos_d"]
    d4 = _study(tasks_root, store, tiny, four)
    status = study_status(parse_study(d4), st)
    by = {(s.stage, s.model): s for s in status.stages}
    assert (by[("indicators", "tiny")].done, by[("indicators", "tiny")].total) == (3, 6)
    r3 = run_study(parse_study(d4))
    assert r3.status == "completed", r3.failures
    assert r3.stage_counts == {"indicators": {"computed": 3, "stored": 3},
                               "ablate": {"computed": 1, "stored": 3},
                               "probe": {"computed": 4, "stored": 0}, "correlate": new,
                               "recommend": new}
    assert counted["pairs"].n == 3 + 3  # the new task's three pairs only
    assert counted["ablation"].n == 3 + 1
    assert counted["probe"].n == 3 + 4  # every target's source set changed
    con = duckdb_connect(st)
    assert con.execute("select count(distinct pair_key) from current_indicators"
                       ).fetchone()[0] == 6
    # 4 tasks: 3 sources per target, so the mean over targets is the mean of the stored
    # per-target rhos (those not NaN), with its interval and permutation p
    corr4 = con.execute("select * from current_correlations").df()
    per = corr4[corr4["scope"].isin(four)]
    for r in corr4[corr4["scope"] == "mean_over_targets"].itertuples():
        rhos = per[(per["indicator"] == r.indicator) & (per["measure"] == r.measure)
                   & (per["method"] == r.method)]["rho"].dropna()
        assert r.n_targets == len(rhos) and r.n_pairs == 3 * len(rhos)
        if len(rhos):
            assert r.rho == pytest.approx(rhos.mean()) and 0 < r.p_value <= 1
        if len(rhos) >= 2:
            assert r.low <= r.rho <= r.high

    # the summary artifact names the stage's results; the recommend command ranks sources
    runner = CliRunner()
    study_file = tmp_path / "s.yaml"
    res = runner.invoke(app, ["recommend", str(study_file), "--task", "pos_d"])
    assert res.exit_code == 2  # no such study file
    study_file.write_text(yaml.safe_dump(d4))
    res = runner.invoke(app, ["recommend", str(study_file), "--task", "pos_d", "--json",
                              "--examples", "8"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["task"] == "pos_d"
    assert sorted(r["source_task"] for r in out["ranking"]) == sorted(TASKS)  # own left out
    scores = [r["score"] for r in out["ranking"]]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in out["ranking"]] == [
        1, 2, 3]
    # the same numbers as the stage's probe for that target (same sample, same prompts)
    rec4 = con.execute("select source_task, score from current_recommendations where "
                               "method = 'probe' and target_task = 'pos_d'").df()
    assert dict(zip(rec4["source_task"], rec4["score"], strict=True)) == pytest.approx(
        {r["source_task"]: r["score"] for r in out["ranking"]})
    res = runner.invoke(app, ["recommend", str(study_file), "--task", "nope"])
    assert res.exit_code == 2 and "neither a task folder nor a task of study" in res.output
