"""Plan, then submit only what is missing: a rerun creates task runs for the missing units only
(none when everything is stored), the plan agrees with ``status``, and at most a window of
task runs is in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.status import study_status
from flows.submit import Planned, RunProgress, UnitLedger, run_units
from prompt_core.config import parse_study
from tests.flow_helpers import study_dict, task_run_names


def test_rerun_submits_only_the_missing_units(prefect_harness, tiny_models, tasks_root,
                                              tmp_path, counters):
    from flows.transfer_matrix import run_study

    store = tmp_path / "store"
    study = parse_study(study_dict(tasks_root, ["pos_a", "pair_c"], str(store),
                                   tiny_models["encoder"]))
    r1 = run_study(study)
    assert len(task_run_names(r1.run_id)) == 2 + 2 + 2  # prepare, train, evaluate

    r2 = run_study(study)  # everything stored: planned from the tables, no task run at all
    assert task_run_names(r2.run_id) == []
    assert (r2.n_prompts_trained, r2.n_prompts_cached) == (0, 2)
    assert (r2.n_cells_evaluated, r2.n_cells_cached) == (0, 2 * (2 + 2))

    # a damaged prompt file: the plan (and status) count that prompt as missing; only its
    # training unit runs (same key, so its cells stay stored)
    pfile = next((store / "prompts" / "tiny" / "pos_a").glob("*.safetensors"))
    pfile.write_bytes(pfile.read_bytes()[:40])
    st = {(s.stage, s.model): (s.done, s.total, s.missing) for s in study_status(study).stages}
    assert st[("train", "tiny")] == (1, 2, ["train tiny/pos_a seed=0"])
    trained_before = counters["train"].n
    r3 = run_study(study)
    assert task_run_names(r3.run_id) == ["train tiny/pos_a seed=0"]
    assert counters["train"].n == trained_before + 1
    assert (r3.n_prompts_trained, r3.n_cells_evaluated) == (1, 0)
    assert study_status(study).complete


@task(cache_policy=NO_CACHE, task_run_name="sleepy {i}")
def _sleepy(i: int, gauge: dict) -> int:
    with gauge["lock"]:
        gauge["now"] += 1
        gauge["max"] = max(gauge["max"], gauge["now"])
    time.sleep(0.05)
    with gauge["lock"]:
        gauge["now"] -= 1
    return i * 10


def test_run_units_keeps_order_counts_stored_and_bounds_the_window(prefect_harness):
    gauge = {"now": 0, "max": 0, "lock": threading.Lock()}
    submitted: list[int] = []
    seen: list[tuple] = []

    def submit(i: int):
        submitted.append(i)
        return _sleepy.submit(i, gauge)

    @flow
    def fl() -> list:
        units = [Planned(f"u{i}", None, stored=-i) if i % 3 == 0 else
                 Planned(f"u{i}", None, submit=lambda i=i: submit(i)) for i in range(9)]
        progress = RunProgress({"p": 9}, lambda *a: seen.append(a))
        return run_units("p", units, progress, UnitLedger(), window=2)

    out = fl()
    assert out == [0, 10, 20, -3, 40, 50, -6, 70, 80]  # stored outcomes as planned, in order
    assert sorted(submitted) == [1, 2, 4, 5, 7, 8]  # no task run for a stored unit
    assert gauge["max"] <= 2
    assert seen[0] == ("p", 3, 9, "3 found stored")  # stored units: one progress step
    assert seen[-1][:3] == ("p", 9, 9)


def test_status_and_plan_read_the_same_prompt_files(tmp_path: Path, tiny_models, tasks_root):
    """``status`` counts a prompt whose file is missing as not trained, as the flow plans it."""
    from flows.core_units import plan_train
    from tasks.units import RunContext, nlp_task_info

    study = parse_study(study_dict(tasks_root, ["pos_a"], str(tmp_path / "s"),
                                   tiny_models["encoder"]))
    ctx = RunContext(str(tmp_path / "s"), study.name, "r")
    from tasks.storage import open_storage

    units = plan_train(ctx, study, open_storage(str(tmp_path / "s")), list(study.models),
                       [nlp_task_info(c) for c in study.tasks], study.training)
    assert [u.is_stored for u in units] == [False]
    assert [u.label for u in units] == ["train tiny/pos_a seed=0"]
