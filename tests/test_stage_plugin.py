"""A stage is a plug-in: a stage defined only in this file (the no-prompt baseline scored again,
on each task's validation split, under another name) runs in a study without any edit of a
project file: its options section, its table and view, its run_keys rows, its line in
``status``, its section of the summary artifact, and a rerun that recomputes nothing."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import ClassVar

import pytest
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from flows.stage_api import FlowState, StageRun, StatusState, register_stage, unregister_stage
from flows.status import StageStatus, read_partition, study_status
from flows.submit import Planned
from flows.transfer_matrix import run_study
from prompt_core.config import StageSpec, parse_study, stable_hash
from prompt_core.evaluation import EncodedSplit
from tasks.storage import open_storage
from tasks.tables import (
    TableSpec,
    duckdb_connect,
    now_utc,
    read_parts,
    registered,
    write_part,
)
from tasks.units import RunContext, get_backbone, model_identity, task_data
from tests.flow_helpers import study_dict, task_run_names

STAGE = "none_again"
TABLE = "none_again_scores"


@dataclass
class NoneAgainRow:
    score_key: str
    model: str
    task: str
    split: str
    accuracy: float
    study: str
    run_id: str
    created_at: dt.datetime


class NoneAgainConfig(BaseModel):
    """The plug-in stage's options section."""

    model_config = ConfigDict(extra="forbid")
    split: str = Field("validation", description="split the no-prompt baseline is scored on")


def score_key(model, info, split: str) -> str:
    return stable_hash({"model": model_identity(model), "task": [info.name, info.fingerprint],
                        "split": split})


@task(cache_policy=NO_CACHE, task_run_name="none again {model.name} -> {info.name}")
def none_again_unit(ctx: RunContext, model, info, split: str) -> tuple[str, bool]:
    """(its key, whether it was computed now): the stored row is reused."""
    storage = ctx.storage()
    key = score_key(model, info, split)
    where = {"study": ctx.study, "model": model.name}
    stored, _ = read_parts(storage, TABLE, where)
    if key in stored.column("score_key").to_pylist():
        return key, False
    enc = EncodedSplit(get_backbone(model, "cpu"), task_data(ctx, info), split, 64)
    acc = enc.evaluate(None, 8)["accuracy"]
    write_part(storage, TABLE, [NoneAgainRow(key, model.name, info.name, split, acc, ctx.study,
                                             ctx.run_id, now_utc())], key)
    return key, True


class NoneAgainStage:
    name: ClassVar[str] = STAGE
    after: ClassVar[tuple[str, ...]] = ()
    tables: ClassVar[tuple[str, ...]] = (TABLE,)

    def unit_counts(self, study, infos) -> dict[str, int]:
        return {STAGE: len(study.models) * len(infos)}

    def run(self, state: FlowState) -> StageRun:
        """Planned from the stored keys: a stored score is counted, not submitted."""
        split = state.study.stage_options(STAGE).split
        units, models = [], []
        for m in state.study.models:
            stored = set(read_partition(state.storage, TABLE,
                                        {"study": state.study.name, "model": m.name},
                                        ["score_key"], []).column(0).to_pylist())
            for info in state.infos:
                key = score_key(m, info, split)
                label = f"none again {m.name} -> {info.name}"
                units.append(Planned(label, m.name, stored=(key, False)) if key in stored else
                             Planned(label, m.name, submit=functools.partial(
                                 none_again_unit.submit, state.ctx, m, info, split)))
                models.append(m.name)
        out = StageRun()
        for (key, computed), model in zip(state.run_units(STAGE, units), models, strict=True):
            out.count(STAGE, int(computed), int(not computed))
            out.add_keys(model, TABLE, [key])
        out.rows = len(units)
        return out

    def publish(self, state: FlowState, run: StageRun) -> tuple[list[str], dict[str, str]]:
        return ["## No prompt, again", "", f"- {run.rows} tasks scored with no prompt", ""], {}

    def status(self, state: StatusState) -> list[StageStatus]:
        split = state.study.stage_options(STAGE).split
        out = []
        for m in state.study.models:
            stored = set(read_partition(state.storage, TABLE,
                                        {"study": state.study.name, "model": m.name},
                                        ["score_key"], state.problems).column(0).to_pylist())
            st = StageStatus(STAGE, m.name, 0, len(state.infos))
            for info in state.infos:
                if score_key(m, info, split) in stored:
                    st.done += 1
                else:
                    st.missing.append(f"none again {m.name} -> {info.name}")
            out.append(st)
        return out


@pytest.fixture
def plugin_stage():
    """The stage and its table, registered for the test only (as a plug-in module would at
    import), then forgotten."""
    spec = TableSpec.from_row(
        TABLE, NoneAgainRow, partition_by=("study", "model"), key_column="score_key",
        description="the no-prompt baseline, scored again (a test's plug-in stage)",
        model_column="model", current_view=True)
    with registered(spec):
        register_stage(NoneAgainStage(), StageSpec(STAGE, NoneAgainConfig))
        try:
            yield spec
        finally:
            unregister_stage(STAGE)


def _summary(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.publish import SUMMARY_KEY

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return next(a.data for a in arts if a.key == f"t-study--{SUMMARY_KEY}")


def test_a_stage_defined_in_a_test_runs_as_a_plugin(prefect_harness, tiny_models, tasks_root,
                                                    tmp_path, plugin_stage):
    store = tmp_path / "store"
    d = study_dict(tasks_root, ["pos_a", "pos_b"], str(store), tiny_models["encoder"])
    d["stages"] = ["cross_task", STAGE]
    d[STAGE] = {"split": "validation"}  # its options section, a top-level key
    study = parse_study(d)
    assert study.stage_options(STAGE) == NoneAgainConfig(split="validation")
    before = {s.stage: (s.done, s.total) for s in study_status(study).stages}
    assert before[STAGE] == (0, 2)

    r = run_study(study)
    assert r.stage_counts[STAGE] == {"computed": 2, "stored": 0}
    st = open_storage(str(store))
    con = duckdb_connect(st)
    rows = con.execute(f"select task, split, accuracy from current_{TABLE} "
                       "order by task").fetchall()
    assert [(t, s) for t, s, _ in rows] == [("pos_a", "validation"), ("pos_b", "validation")]
    assert all(0 <= a <= 1 for _, _, a in rows)
    keys = con.execute(f"select count(*) from run_keys where table_name = '{TABLE}' "
                       "and run_id = ?", [r.run_id]).fetchone()[0]
    assert keys == 2
    after = {s.stage: (s.done, s.total) for s in study_status(study).stages}
    assert after[STAGE] == (2, 2)
    assert "## No prompt, again" in _summary(r.run_id)

    r2 = run_study(study)  # nothing to recompute: the rows are reused, planned as stored
    assert r2.stage_counts[STAGE] == {"computed": 0, "stored": 2}
    assert task_run_names(r2.run_id) == []  # no task run for a stored unit, of any stage
    assert duckdb_connect(st).execute(f"select count(*) from {TABLE}").fetchone()[0] == 2
