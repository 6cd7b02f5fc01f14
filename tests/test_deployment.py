"""The deployments as an operator runs them, against a real `prefect server`: work pools,
`prefect deploy` of deployments/prefect.yaml, a process worker, `prefect deployment run` with
custom parameters; the Kubernetes GPU job template accepted by the server and rendered into a
pod spec."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.flow_helpers import write_task
from tests.prefect_server import REPO, PrefectServer, prefect_server

PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
GPU_TEMPLATE = REPO / "deployments" / "work-pools" / "kubernetes-gpu.json"
RUN_DEADLINE_S = 300.0

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> PrefectServer:
    """A server with both work pools, every deployment of deployments/prefect.yaml and a
    process worker (started before the deploy, so both start up at once)."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as s:
        s.create_pool("prompt-transfer", "process")
        s.start_worker("prompt-transfer", "deploy-worker")
        s.create_pool("prompt-transfer-gpu", "kubernetes", GPU_TEMPLATE)
        s.deploy(PREFECT_YAML)  # --all
        yield s


@pytest.fixture(scope="module")
def study_file(tmp_path_factory, tiny_models) -> Path:
    """A two-task study on the tiny encoder, as a person would write it (no storage)."""
    root = tmp_path_factory.mktemp("deploy-study")
    for name in ("cheer", "gloom"):
        write_task(root / "tasks", name, "sentiment")
    study = {
        "name": "deploy-study",
        "models": [{"kind": "encoder", "name": "tiny", "model_id": tiny_models["encoder"]}],
        "tasks": [{"path": "tasks/cheer"}, {"path": "tasks/gloom"}],
        "training": {"steps": 4, "batch_size": 8, "eval_every": 2, "n_tokens": 4, "lr": 0.05},
        "evaluation": {"batch_size": 8},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _read(server: PrefectServer, fn):
    from prefect.client.orchestration import get_client

    with server.api(), get_client(sync_client=True) as client:
        return fn(client)


def test_every_deployment_is_registered(server):
    """`prefect deploy --all` registered the four deployments: schedules, pools, pull steps,
    default parameters."""
    deps = {(d.name, d.work_pool_name): d for d in _read(server, lambda c: c.read_deployments())}
    assert set(deps) == {("nightly", "prompt-transfer"), ("local", "prompt-transfer"),
                         ("nightly-gpu", "prompt-transfer-gpu"), ("gpu", "prompt-transfer-gpu")}
    nightly = deps[("nightly", "prompt-transfer")]
    (sched,) = nightly.schedules
    assert (sched.schedule.cron, sched.schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
    assert nightly.parameters["study"] == "deployments/studies/demo.yaml"
    assert nightly.entrypoint == "flows/transfer_matrix.py:study_flow"
    assert {"study", "storage", "task_runner", "workers", "dask_address", "device",
            "train_deployment"} <= set(nightly.parameter_openapi_schema["properties"])
    # the process pool's runs start in the repository (where `prefect deploy` ran)
    step = nightly.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
    assert Path(step["directory"]).resolve() == REPO.resolve()
    gpu = deps[("nightly-gpu", "prompt-transfer-gpu")]
    assert gpu.parameters["train_deployment"] == "train-prompts/gpu"
    assert gpu.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    assert gpu.job_variables["gpu_count"] == 1
    assert deps[("local", "prompt-transfer")].entrypoint == "flows/fan_out.py:train_prompts_flow"


def test_nightly_deployment_runs_a_study_on_a_process_worker(server, study_file, tmp_path):
    """A custom run of the nightly deployment (another study file and storage, as typed in the
    UI) is picked up by a process worker and writes the tables and the artifacts."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.storage import open_storage
    from tasks.tables import read_table

    store = tmp_path / "store"
    out = server.cli("deployment", "run", "prompt-transfer-study/nightly",
                     "--param", f"study={study_file}", "--param", f"storage={store}")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    run = server.wait_flow_run(flow_run_id, RUN_DEADLINE_S)
    assert run.state.is_completed(), f"{run.state}\n{server.logs()}"
    assert run.name.startswith("deploy-study 20"), run.name  # "<study> <date time>"
    assert run.parameters == {"study": str(study_file), "storage": str(store)}

    st = open_storage(str(store))
    runs = read_table(st, "runs").to_pandas()
    assert runs["status"].tolist() == ["completed"]
    prompts = read_table(st, "prompts").to_pandas()
    assert sorted(prompts["task"]) == ["cheer", "gloom"]
    ct = read_table(st, "cross_task").to_pandas()
    # 2 targets x (2 prompts + random + none) cells x 2 metrics
    assert len(ct) == 16 and set(ct["study"]) == {"deploy-study"}

    # the transfer matrix ran as a subflow of the deployment's run; its artifacts are there
    matrix_run_id = runs["run_id"].item()
    matrix_run = _read(server, lambda c: c.read_flow_run(matrix_run_id))
    parent_task = _read(server, lambda c: c.read_task_run(matrix_run.parent_task_run_id))
    assert str(parent_task.flow_run_id) == flow_run_id
    arts = _read(server, lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[matrix_run.id]))))
    keys = {a.key for a in arts}
    assert {"deploy-study--transfer-matrix-summary", "deploy-study--heatmap-tiny",
            "deploy-study--cross-task-tiny"} <= keys, keys
    summary = next(a.data for a in arts if a.key == "deploy-study--transfer-matrix-summary")
    assert "deploy-study" in summary
    assert matrix_run.name.startswith("deploy-study transfer matrix 20"), matrix_run.name

    # the run a user lands on (the deployment's) shows the same summary
    parent_arts = _read(server, lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))))
    key = "deploy-study--transfer-matrix-summary"
    assert [a.data for a in parent_arts if a.key == key] == [summary]


def test_kubernetes_gpu_template_renders_a_gpu_pod(server):
    """The server accepted the GPU pool's template (the fixture created the pool with it); the
    nightly-gpu deployment's job variables, and custom ones, land in the pod spec."""
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    pool = _read(server, lambda c: c.read_work_pool("prompt-transfer-gpu"))
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(GPU_TEMPLATE.read_text())
    dep = _read(server, lambda c: c.read_deployment_by_name("prompt-transfer-study/nightly-gpu"))

    def render(values: dict) -> dict:
        with server.api():
            cfg = run_coro_as_sync(KubernetesWorkerJobConfiguration.from_template_and_values(
                pool.base_job_template, values))
        return cfg.job_manifest["spec"]["template"]["spec"]

    pod = render(dep.job_variables)
    (container,) = pod["containers"]
    assert container["image"] == "prompt-transfer:latest"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]

    custom = {"image": "registry.example/prompt-transfer:1.2", "gpu_count": 4,
              "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
              "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                               "effect": "NoSchedule"}]}
    pod = render(custom)
    (container,) = pod["containers"]
    assert container["image"] == custom["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == custom["node_selector"]
    assert pod["tolerations"] == custom["tolerations"]
    assert "cpu" not in container["resources"]["limits"]  # unset limits are left out


def test_the_custom_run_form_describes_every_parameter_and_the_schedule_zone():
    """The UI's parameter form shows a description per parameter (from the docstring), and a
    scheduled deployment says when it runs, with the time zone."""
    from prefect.utilities.callables import parameter_schema

    from flows.transfer_matrix import study_flow

    props = parameter_schema(study_flow.fn).model_dump()["properties"]
    assert set(props) == {"study", "storage", "task_runner", "workers", "dask_address", "device",
                          "train_deployment"}
    assert all(len(p.get("description", "")) > 20 for p in props.values()), props
    spec = yaml.safe_load((Path(__file__).parents[1] / "deployments/prefect.yaml").read_text())
    for d in spec["deployments"]:
        for sched in d.get("schedules") or []:
            assert sched["timezone"] in d["description"], d["name"]


def test_cli_run_sends_its_logs_to_the_api_without_verbose(server, study_file, tmp_path):
    """`prompt-transfer run` against a server, no --verbose: the terminal keeps to the bars and
    the summary, and the training task runs' dev scores are in the UI (through the API)."""
    import subprocess
    import sys

    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterTaskRunId,
    )

    from tasks.storage import open_storage
    from tasks.tables import read_table

    store = tmp_path / "cli-store"
    cli = Path(sys.executable).parent / "prompt-transfer"
    out = subprocess.run([str(cli), "run", str(study_file), "--storage", str(store)],
                         cwd=study_file.parent, env=server.env, capture_output=True, text=True,
                         timeout=RUN_DEADLINE_S)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| INFO" not in out.stdout + out.stderr  # Prefect's INFO lines stay off the terminal
    run_id = read_table(open_storage(str(store)), "runs").to_pandas()["run_id"].item()
    tasks = _read(server, lambda c: c.read_task_runs(flow_run_filter=FlowRunFilter(
        id=FlowRunFilterId(any_=[run_id]))))
    train = [t.id for t in tasks if t.name.startswith("train tiny/")]
    assert len(train) == 2
    logs = _read(server, lambda c: c.read_logs(log_filter=LogFilter(
        task_run_id=LogFilterTaskRunId(any_=train))))
    text = "\n".join(lg.message for lg in logs)
    assert "dev accuracy" in text and "best dev accuracy" in text, text
