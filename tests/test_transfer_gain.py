"""``transfer_gain`` (chance-corrected transfer) and the bootstrap interval of every
``cross_task`` score: known answers on hand-made numbers, and the flow's rows (with the
per-example predictions behind each cell, ``cross_task_predictions``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows.transfer_matrix import run_study
from prompt_core.analysis import transfer_gain
from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import duckdb_connect, read_table
from tests.flow_helpers import study_dict


@pytest.mark.parametrize("score, none, own, want", [
    (0.9, 0.5, 0.9, 1.0),      # as good as the own prompt
    (0.5, 0.5, 0.9, 0.0),      # no better than no prompt
    (0.7, 0.5, 0.9, 0.5),      # half the own prompt's gain
    (0.4, 0.5, 0.9, -0.25),    # worse than no prompt
    (1.0, 0.5, 0.9, 1.25),     # better than the own prompt
    (0.7, 0.6, 0.6, None),     # own prompt does not beat no prompt: no gain to transfer
    (0.7, 0.8, 0.6, None),     # own prompt worse than no prompt
    (0.7, None, 0.9, None),    # no no-prompt row
    (0.7, 0.5, None, None),    # no own score
])
def test_transfer_gain_known_answers(score, none, own, want):
    got = transfer_gain(score, none, own)
    assert got is None if want is None else math.isclose(got, want)


def test_transfer_gain_margin():
    assert transfer_gain(0.7, 0.5, 0.52, min_margin=0.03) is None
    assert math.isclose(transfer_gain(0.7, 0.5, 0.6, min_margin=0.03), 2.0)


@pytest.mark.parametrize("none, own_low, want", [
    (0.5, 0.55, 0.5),    # no prompt below the own score's interval: a clear gain
    (0.5, 0.5, None),    # no prompt at the interval's lower end: not clear
    (0.5, 0.45, None),   # no prompt inside the own score's interval: not clear
    (0.5, None, 0.5),    # no interval given: the plain rule
])
def test_transfer_gain_needs_the_own_prompt_to_beat_no_prompt_beyond_its_interval(
        none, own_low, want):
    got = transfer_gain(0.7, none, 0.9, own_low=own_low)
    assert got is None if want is None else math.isclose(got, want)
    # a near-zero own gain inside the noise no longer turns small differences into huge ratios
    assert transfer_gain(0.45, 0.50, 0.51, own_low=0.42) is None
    assert math.isclose(transfer_gain(0.45, 0.50, 0.51), -5.0)


def test_cross_task_rows_carry_intervals_and_gain(prefect_harness, tiny_models, tasks_root,
                                                  tmp_path):
    d = study_dict(tasks_root, ["pos_a", "pair_c"], str(tmp_path / "store"),
                   tiny_models["encoder"])
    assert run_study(parse_study(d)).status == "completed"
    df = read_table(open_storage(str(tmp_path / "store")), "cross_task").to_pandas()
    assert ((df["score_low"] <= df["score"]) & (df["score"] <= df["score_high"])).all()
    assert (df["score_high"] - df["score_low"] > 0).any()  # 16 test examples: wide
    for (target, _metric), g in df.groupby(["target_task", "metric"]):
        own_row = g[(g["source_kind"] == "prompt") & (g["source_task"] == target)]
        own, own_low = own_row["score"].item(), own_row["score_low"].item()
        none = g[g["source_kind"] == "none"]["score"].item()
        for r in g.itertuples():
            want = transfer_gain(r.score, none, own, own_low=own_low)
            if want is None:
                assert r.transfer_gain is None or math.isnan(r.transfer_gain)
            else:
                assert math.isclose(r.transfer_gain, want)
        if none < own_low:  # the own cell has gain 1, the no-prompt cell 0
            assert math.isclose(g[g["source_task"] == target]["transfer_gain"].item(), 1.0)
            assert g[g["source_kind"] == "none"]["transfer_gain"].item() == 0.0

    # every cell's per-example predictions: one row per cell, the split's 16 examples, the
    # same gold labels for every cell of a target, and the stored accuracy recomputed
    st = open_storage(str(tmp_path / "store"))
    pr = read_table(st, "cross_task_predictions").to_pandas().set_index("cell_key")
    assert pr.index.is_unique and set(pr.index) == set(df["cell_key"]) and len(pr) == 8
    assert (pr["n_examples"] == 16).all() and (pr["n_labels"] == 2).all()
    assert {len(v) for v in pr["predicted"]} == {len(v) for v in pr["gold"]} == {16}
    for target, g in pr.groupby("target_task"):
        assert len({tuple(v) for v in g["gold"]}) == 1, target
    for r in df[df["metric"] == "accuracy"].itertuples():
        p = pr.loc[r.cell_key]
        assert (p["source_kind"], p["seed"], p["target_prompt_key"]) == (
            r.source_kind, r.seed, r.target_prompt_key)
        assert math.isclose(np.mean(np.asarray(p["predicted"]) == np.asarray(p["gold"])),
                            r.score)
    con = duckdb_connect(st)
    assert con.execute("select count(*) from current_cross_task_predictions").fetchone()[0] == 8

    # a cell stored without its predictions (an older store, a damaged part) is rescored for
    # them only: its cross_task rows are not written twice
    (part,) = st.list("tables/cross_task_predictions/study=t-study/model=tiny/"
                      "target_task=pos_a/")
    st.fs.rm(st.path(part))
    r2 = run_study(parse_study(d))
    assert (r2.n_cells_evaluated, r2.n_cells_cached) == (4, 4)
    again = read_table(st, "cross_task").to_pandas()
    assert len(again) == len(df) == 16
    pr2 = read_table(st, "cross_task_predictions").to_pandas().set_index("cell_key")
    assert set(pr2.index) == set(pr.index) and pr2.index.is_unique
    for key in pr.index:
        assert list(pr2.loc[key, "predicted"]) == list(pr.loc[key, "predicted"])
