"""Two runs of one study started together do each unit once: a unit being computed is
claimed (tasks/claims.py), the other run waits for it and reads the stored result."""

from __future__ import annotations

import threading

from flows.transfer_matrix import run_study
from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import read_table
from tests.flow_helpers import DEV_EVALS, study_dict


def test_two_runs_started_together_share_the_work(prefect_harness, tiny_models, tasks_root,
                                                  tmp_path, counters):
    storage = str(tmp_path / "store")
    study = parse_study(study_dict(tasks_root, ["pos_a", "pos_b", "pair_c"], storage,
                                   tiny_models["encoder"]))
    start = threading.Barrier(2)
    results, errors = [], []

    def one_run():
        try:
            start.wait(timeout=60)
            results.append(run_study(study, max_workers=3))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    runs = [threading.Thread(target=one_run) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=600)
    assert not errors and len(results) == 2, errors
    # 3 prompts trained once in all, not once per run; each matrix cell scored once
    assert counters["train"].n == 3
    assert counters["score"].n == 3 * DEV_EVALS + 15
    assert sorted(r.n_prompts_trained for r in results) in ([0, 3], [1, 2])
    assert sum(r.n_prompts_trained for r in results) == 3
    assert sum(r.n_cells_evaluated for r in results) == 15
    st = open_storage(storage)
    cells = read_table(st, "cross_task").to_pandas()
    assert cells.groupby(["cell_key", "metric"]).size().max() == 1  # no cell written twice
    # both runs completed and published the same 15 cells; no claim is left behind
    assert {r.status for r in results} == {"completed"}
    assert {len(s) for r in results for s in [r.summaries]} == {1}
    assert not list((tmp_path / "store").glob("claims/*"))
