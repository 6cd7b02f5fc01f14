"""Training fanned out as one flow run per (model, source task) of the train-prompts
deployment (runner.train_deployment), against a real `prefect server` with a process pool of
two workers: child runs, their names and links, the rows they write, idempotence."""

from __future__ import annotations

import time

import pytest

from prompt_core.config import parse_study
from tests.flow_helpers import write_task
from tests.prefect_server import REPO, PrefectServer, prefect_server

PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
DEPLOYMENT = "train-prompts/local"

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> PrefectServer:
    """A server, the process pool with two workers, the train-prompts/local deployment."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as s:
        s.create_pool("prompt-transfer", "process")
        for name in ("trainer-1", "trainer-2"):
            s.start_worker("prompt-transfer", name)
        s.deploy(PREFECT_YAML, "local")  # train-prompts/local
        s.wait_workers_online("prompt-transfer", {"trainer-1", "trainer-2"})
        yield s


def _client_call(server: PrefectServer, fn):
    from prefect.client.orchestration import get_client

    with server.api(), get_client(sync_client=True) as client:
        return fn(client)


def _child_runs(server: PrefectServer) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = _client_call(server, lambda c: c.read_deployment_by_name(DEPLOYMENT))
    return _client_call(server, lambda c: c.read_flow_runs(deployment_filter=DeploymentFilter(
        id=DeploymentFilterId(any_=[dep.id]))))


def _task_run_names(server: PrefectServer, flow_run_id: str, want: set[str],
                    deadline_s: float = 30.0) -> set[str]:
    """Task run names of a flow run, once ``want`` is among them (they are recorded from
    events, a moment after the run) or at the deadline."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    end = time.monotonic() + deadline_s
    while True:
        names = {t.name for t in _client_call(server, lambda c: c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))))}
        if want <= names or time.monotonic() > end:
            return names
        time.sleep(0.5)


def test_training_fans_out_one_flow_run_per_model_and_task(server, tiny_models, tmp_path,
                                                           monkeypatch):
    import flows.fan_out
    from flows.transfer_matrix import run_study
    from tasks.storage import open_storage
    from tasks.tables import part_path, read_table

    tasks = tmp_path / "tasks"
    for name in ("cheer", "gloom"):
        write_task(tasks, name, "sentiment")
    store = tmp_path / "store"
    study = parse_study({
        "name": "fan-study", "storage": str(store),
        "models": [{"kind": "encoder", "name": "tiny", "model_id": tiny_models["encoder"]}],
        "tasks": [{"path": str(tasks / "cheer")}, {"path": str(tasks / "gloom")}],
        "seeds": [0, 1],
        "training": {"steps": 4, "batch_size": 8, "eval_every": 2, "n_tokens": 4, "lr": 0.05},
        "evaluation": {"batch_size": 8},
        "runner": {"train_deployment": DEPLOYMENT},
    })

    monkeypatch.setattr(flows.fan_out, "DEFAULT_TIMEOUT_S", 300.0)  # a child's deadline
    with server.api():
        r1 = run_study(study)
    assert (r1.n_prompts_trained, r1.n_prompts_cached) == (4, 0), server.logs()
    children = _child_runs(server)
    assert sorted(c.name for c in children) == ["train tiny/cheer (fan-study)",
                                                "train tiny/gloom (fan-study)"]
    for c in children:
        assert c.state.is_completed(), c.state
        assert c.parameters["run_id"] == r1.run_id
        assert c.parameters["study_uri"].startswith(str(store / "studies" / "fan-study"))
        # linked to the study's run: a subflow of its "fan out train" task
        parent = _client_call(server, lambda cl, c=c: cl.read_task_run(c.parent_task_run_id))
        assert str(parent.flow_run_id) == r1.run_id
    names = _task_run_names(server, r1.run_id, {"fan out train tiny/cheer",
                                                "fan out train tiny/gloom"})
    assert {"fan out train tiny/cheer", "fan out train tiny/gloom"} <= names
    assert not any(n.startswith("train tiny/") for n in names)  # trained in the children
    for c in children:  # each child trained its pair's seeds as tasks
        pair = c.name.removesuffix(" (fan-study)")
        want = {f"{pair} seed=0", f"{pair} seed=1"}
        assert _task_run_names(server, str(c.id), want) == want

    st = open_storage(str(store))
    prompts = read_table(st, "prompts").to_pandas()
    assert sorted(zip(prompts["task"], prompts["seed"], strict=True)) == [
        ("cheer", 0), ("cheer", 1), ("gloom", 0), ("gloom", 1)]
    assert set(prompts["run_id"]) == {r1.run_id}
    ct = read_table(st, "cross_task").to_pandas()
    assert len(ct) == 2 * (2 + 1 + 1) * 2 * 2  # targets x sources per seed x seeds x metrics

    # the same study again: every prompt is stored, so no flow run starts and nothing trains
    with server.api():
        r2 = run_study(study)
    assert (r2.n_prompts_trained, r2.n_prompts_cached) == (0, 4)
    assert len(_child_runs(server)) == 2
    again = read_table(st, "prompts").to_pandas()
    assert sorted(again["created_at"]) == sorted(prompts["created_at"])

    # a lost prompts row: the pair's idempotency key still names the first (completed) run,
    # so a new run starts under the key + this run's id and writes the row again
    lost = prompts[(prompts["task"] == "gloom") & (prompts["seed"] == 1)].iloc[0]
    st.delete(part_path("prompts", {"study": "fan-study", "model": "tiny"}, lost["prompt_key"]))
    with server.api():
        r3 = run_study(study)
    assert r3.n_prompts_trained + r3.n_prompts_cached == 4
    runs = _child_runs(server)
    new = [c for c in runs if c.id not in {c0.id for c0 in children}]
    assert [c.name for c in new] == ["train tiny/gloom (fan-study)"]
    first = next(c for c in children if c.name == new[0].name)
    assert new[0].idempotency_key == f"{first.idempotency_key}:{r3.run_id}"
    assert new[0].state.is_completed()
    assert len(read_table(st, "prompts").to_pandas()) == 4


def test_a_failed_child_run_fails_the_stage_naming_the_pair(server, tmp_path):
    """A child run that fails (its model folder is not there) fails the train stage with an
    error naming the pair, the child run and its state message; this run's own failed child
    is not tried again."""
    from prefect import flow

    from flows.fan_out import FanOutError, fan_out_training
    from prompt_core.config import StudyConfig
    from tasks.units import NlpTaskInfo, RunContext

    study = StudyConfig.model_validate({
        "name": "broken-study",
        "models": [{"kind": "encoder", "name": "gone", "model_id": str(tmp_path / "no-model")}],
        "tasks": [{"path": str(tmp_path / "t")}],
        "training": {"steps": 2, "n_tokens": 4},
    })
    info = NlpTaskInfo("t", "t", "sentiment", "f" * 16, 8, 4, 4, 2, data_key="task_data/t.pq")
    ctx = RunContext(str(tmp_path / "store"), study.name, "run-x", "cpu")

    @flow(name="fan-out-failure")
    def parent() -> None:
        fan_out_training(ctx, study, [info], DEPLOYMENT, timeout_s=240)

    with server.api(), pytest.raises(FanOutError) as err:
        parent()
    (child,) = [c for c in _child_runs(server) if c.name == "train gone/t (broken-study)"]
    assert child.state.is_failed()  # this run's own failure: no second try
    msg = str(err.value)
    assert "1 of 1 training flow run(s) did not complete" in msg
    assert f"train gone/t: flow run 'train gone/t (broken-study)' ({child.id})" in msg
    assert child.state.message and child.state.message in msg
