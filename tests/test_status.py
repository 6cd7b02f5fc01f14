"""``prompt-transfer status`` and :func:`flows.status.study_status`: completion of a study
read from its tables alone (a tiny 2-task study run, then asked about as a 3-task study), the
latest run's failed units, damaged parts, and that nothing is written."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import RunRow, list_parts, write_part
from tests.flow_helpers import study_dict, write_task


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def by_stage(status) -> dict[tuple[str, str | None], tuple[int, int, list[str]]]:
    return {(s.stage, s.model): (s.done, s.total, s.missing) for s in status.stages}


@pytest.fixture(scope="module")
def ran_study(prefect_harness, tiny_models, tasks_root, tmp_path_factory):
    """A finished 2-task study (pos_a, pos_b) on the tiny encoder: (storage, run result)."""
    from flows.transfer_matrix import run_study

    storage = tmp_path_factory.mktemp("status") / "store"
    two = parse_study(study_dict(tasks_root, ["pos_a", "pos_b"], str(storage),
                                 tiny_models["encoder"]))
    return storage, run_study(two)


def test_status_of_a_partly_done_study(ran_study, tiny_models, tasks_root, tmp_path):
    from flows.cli import app
    from flows.status import study_status

    storage, r1 = ran_study
    two = parse_study(study_dict(tasks_root, ["pos_a", "pos_b"], str(storage),
                                 tiny_models["encoder"]))
    st = study_status(two)
    assert st.complete and st.problems == [] and st.missing() == []
    assert by_stage(st) == {("prepare", None): (2, 2, []), ("train", "tiny"): (2, 2, []),
                            ("evaluate", "tiny"): (2, 2, []),
                            ("cells", "tiny"): (8, 8, [])}  # 2 targets x (2 + random + none)
    assert st.latest_run is not None
    assert (st.latest_run.run_id, st.latest_run.status) == (r1.run_id, "completed")
    assert st.latest_run.failures == []

    # a later run of the study that failed, as the flow records it
    st_ = open_storage(str(storage))
    later = st.latest_run.finished_at + dt.timedelta(hours=1)
    failures = [{"unit": "train tiny/pair_c seed=0", "stage": "train", "model": "tiny",
                 "error": "RuntimeError: boom at step 3"}]
    write_part(st_, "runs", [RunRow(
        run_id="run-failed", study="t-study", flow_run_id=None, status="failed",
        started_at=later - dt.timedelta(minutes=5), finished_at=later, storage=st_.root,
        study_config="{}", n_prompts_trained=0, n_prompts_cached=2, n_cells_evaluated=0,
        n_cells_cached=0, prefect_version="x", package_version="x",
        failures=json.dumps(failures))], "run-failed")
    before = tree(storage)

    # the same study with a third task: its prompt and every evaluation unit are missing
    d3 = study_dict(tasks_root, ["pos_a", "pos_b", "pair_c"], str(storage),
                    tiny_models["encoder"])
    st = study_status(parse_study(d3))
    assert not st.complete
    assert by_stage(st) == {
        ("prepare", None): (2, 3, ["prepare pair_c"]),  # no copy of its data stored yet
        ("train", "tiny"): (2, 3, ["train tiny/pair_c seed=0"]),
        # every target gains a source (pair_c's prompt): no unit complete
        ("evaluate", "tiny"): (0, 3, ["evaluate tiny -> pos_a", "evaluate tiny -> pos_b",
                                      "evaluate tiny -> pair_c"]),
        # 3 targets x (3 prompts + random + none); the 2 old targets' 4 cells each are stored
        ("cells", "tiny"): (8, 15, []),
    }
    run = st.latest_run
    assert (run.run_id, run.status, run.finished_at) == ("run-failed", "failed", later)
    assert [(f.unit, f.stage, f.model, f.error) for f in run.failures] == [
        ("train tiny/pair_c seed=0", "train", "tiny", "RuntimeError: boom at step 3")]

    # the CLI: a table per stage and model, the missing units, the failed ones; exit 0
    f = tmp_path / "three.yaml"
    f.write_text(yaml.safe_dump(d3))
    runner = CliRunner()
    res = runner.invoke(app, ["status", str(f)])
    assert res.exit_code == 0, res.output
    lines = [ln.replace("│", " ").split() for ln in res.output.splitlines()]
    assert ["train", "tiny", "2", "3"] in lines and ["evaluate", "tiny", "0", "3"] in lines
    assert ["cells", "tiny", "8", "15"] in lines and ["prepare", "-", "2", "3"] in lines
    assert "missing units (5):" in res.output
    assert "  evaluate tiny -> pair_c" in res.output.splitlines()
    assert "latest run run-failed: failed" in res.output
    assert "  train tiny/pair_c seed=0: RuntimeError: boom at step 3" in res.output.splitlines()
    res = runner.invoke(app, ["status", str(f), "--max-missing", "1"])
    assert "... 4 more (--json lists all)" in res.output
    res = runner.invoke(app, ["status", str(f), "--json", "--storage", str(storage)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["complete"] is False and doc["study"] == "t-study"
    train = next(s for s in doc["stages"] if s["stage"] == "train")
    assert (train["done"], train["total"], train["missing"]) == (
        2, 3, ["train tiny/pair_c seed=0"])
    assert doc["latest_run"]["failures"][0]["error"] == "RuntimeError: boom at step 3"
    assert doc["latest_run"]["finished_at"] == later.isoformat()

    assert tree(storage) == before  # status wrote nothing, not even a directory


def test_status_damaged_part_and_broken_task(ran_study, tiny_models, tasks_root, tmp_path):
    """A damaged part counts as absent (its unit missing, the file named); a task whose data
    does not load is a missing prepare unit with its error, and its units are missing."""
    from flows.cli import app
    from flows.status import study_status

    src, _ = ran_study
    storage = tmp_path / "copy"
    shutil.copytree(src, storage)
    st_ = open_storage(str(storage))
    (key, _), = list_parts(st_, "cross_task", {"study": "t-study", "model": "tiny",
                                                "target_task": "pos_b"})
    (storage / key).write_bytes(b"not parquet")
    broken = write_task(tmp_path / "tasks", "pos_x", "sentiment")
    (broken / "test.jsonl").unlink()
    d = study_dict(tasks_root, ["pos_a", "pos_b"], str(storage), tiny_models["encoder"])
    d["tasks"].append({"path": str(broken)})
    before = tree(storage)

    st = study_status(parse_study(d))
    stages = by_stage(st)
    assert stages[("prepare", None)] == (2, 3, ["prepare pos_x"])
    assert stages[("train", "tiny")] == (2, 3, ["train tiny/pos_x seed=0"])
    assert stages[("evaluate", "tiny")] == (0, 3, ["evaluate tiny -> pos_a",
                                                   "evaluate tiny -> pos_b",
                                                   "evaluate tiny -> pos_x"])
    # pos_a's 4 stored cells are still planned; pos_b's part is damaged, pos_x unknown
    assert stages[("cells", "tiny")] == (4, 15, [])
    assert any(p.startswith("prepare pos_x: ") and "test" in p for p in st.problems)
    assert any(key in p and "verify" in p for p in st.problems), st.problems

    two = parse_study(study_dict(tasks_root, ["pos_a", "pos_b"], str(storage),
                                 tiny_models["encoder"]))
    stages = by_stage(study_status(two))
    assert stages[("evaluate", "tiny")] == (1, 2, ["evaluate tiny -> pos_b"])
    assert stages[("cells", "tiny")] == (4, 8, [])

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(app, ["status", str(f)])
    assert res.exit_code == 0, res.output
    assert "warning: prepare pos_x:" in res.output and "Traceback" not in res.output
    assert tree(storage) == before


def test_status_bad_input_exits_2(tmp_path, tasks_root, tiny_models):
    from flows.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["status", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "nope.yaml does not exist" in res.output
    assert "Traceback" not in res.output
    f = tmp_path / "s.yaml"
    f.write_text("name: x\nmodels: [{kind: gpt9}]\ntasks: []\n")
    res = runner.invoke(app, ["status", str(f)])
    assert res.exit_code == 2 and "unknown backbone kind 'gpt9'" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    f.write_text(yaml.safe_dump(study_dict(tasks_root, ["pos_a"], str(empty),
                                           tiny_models["encoder"])))
    res = runner.invoke(app, ["status", str(f)])
    assert res.exit_code == 2 and "has no tables/" in res.output
    assert list(empty.iterdir()) == []
