"""The same study on every task runner gives the same tables: threads, Prefect's process pool and
a real Dask ``LocalCluster`` with two worker processes. Units in other processes read the NLP
tasks from storage (the prepare unit copies them there), load their model once per process
and report to the run's Prefect API; progress comes from the flow's futures."""

from __future__ import annotations

import contextlib
import os

import pytest

from flows.transfer_matrix import run_study
from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import read_table
from tests.flow_helpers import study_dict


def _tables(root: str) -> dict[str, list[tuple]]:
    """What must not depend on where units ran: keys and scores, in a canonical order."""
    storage = open_storage(root)
    cells = read_table(storage, "cross_task").to_pandas()
    prompts = read_table(storage, "prompts").to_pandas()
    return {
        "cells": sorted(cells[["cell_key", "metric", "source_kind", "source_task",
                               "target_task", "score", "relative_score"]]
                        .itertuples(index=False, name=None), key=str),
        "prompts": sorted(prompts[["prompt_key", "config_key", "task", "best_step",
                                   "dev_accuracy"]].itertuples(index=False, name=None)),
    }


@contextlib.contextmanager
def _existing_dask_cluster(monkeypatch):
    """A Dask cluster started outside the run, as an operator starts one: two worker processes
    on 127.0.0.1 whose environment names the Prefect API; yields the scheduler address."""
    from distributed import LocalCluster
    from prefect.settings import get_current_settings

    with monkeypatch.context() as env:
        env.setenv("PREFECT_API_URL", str(get_current_settings().api.url))
        env.setenv("OMP_NUM_THREADS", "1")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            yield cluster.scheduler_address


@pytest.mark.slow
def test_threads_processes_and_dask_give_identical_tables(prefect_harness, tiny_models,
                                                          tasks_root, tmp_path, monkeypatch):
    names = ["pos_a", "pair_c"]
    base = study_dict(tasks_root, names, str(tmp_path / "threads"), tiny_models["encoder"])
    seen: dict[str, list] = {}
    results = {}
    api_env = os.environ.get("PREFECT_API_URL")
    for kind in ("threads", "processes", "dask", "dask-address"):
        study = parse_study({**base, "storage": str(tmp_path / kind)})
        events: list = []
        def observer(*e, ev=events):
            ev.append(e)

        if kind == "dask-address":
            with _existing_dask_cluster(monkeypatch) as address:
                results[kind] = run_study(study, dask_address=address, observer=observer)
        else:
            results[kind] = run_study(study, task_runner=kind, max_workers=2,
                                      observer=observer)
        seen[kind] = events
        assert os.environ.get("PREFECT_API_URL") == api_env  # the runner's env is restored

    want = _tables(str(tmp_path / "threads"))
    assert len(want["cells"]) == 2 * (2 + 2) * 2  # 2 targets x (2 prompts, random, none) x 2
    for kind in ("processes", "dask", "dask-address"):
        r = results[kind]
        assert (r.status, r.n_prompts_trained, r.n_cells_evaluated) == ("completed", 2, 8)
        got = _tables(str(tmp_path / kind))
        assert got == want, kind  # same keys, same scores, bit for bit
        # progress came back from the futures: every unit of every stage, then the stage done
        finished = [(s, d, t) for s, d, t, label in seen[kind] if label is not None]
        assert [f for f in finished if f[0] == "train"][-1][1:] == (2, 2)
        assert [f for f in finished if f[0] == "evaluate"][-1][1:] == (2, 2)
        assert [f for f in finished if f[0] == "prepare"][-1][1:] == (2, 2)
        assert {label for _, _, _, label in seen[kind] if label} >= {
            "train tiny/pos_a seed=0", "evaluate tiny -> pair_c", "prepare pos_a"}

    # the units read task data from storage: one self-contained file per NLP task
    files = sorted(p.name for p in (tmp_path / "dask" / "task_data").rglob("*.parquet"))
    assert len(files) == 2


def test_runner_config_picks_the_task_runner():
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runtime import make_task_runner, torch_threads_per_unit
    from prompt_core.config import RunnerConfig

    assert isinstance(make_task_runner(RunnerConfig(max_workers=3)), ThreadPoolTaskRunner)
    pool = make_task_runner(RunnerConfig(task_runner="processes", max_workers=2))
    assert isinstance(pool, ProcessPoolTaskRunner)
    remote = make_task_runner(RunnerConfig(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    local = make_task_runner(RunnerConfig(task_runner="dask", max_workers=2))
    assert local.address is None
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["host"] == "127.0.0.1"
    # every runner computes with the same torch threads per unit
    cores = os.cpu_count() or 1
    assert torch_threads_per_unit(RunnerConfig(max_workers=2)) == max(1, cores // 2)
    assert torch_threads_per_unit(RunnerConfig(max_workers=64)) == 1
    assert torch_threads_per_unit(RunnerConfig(max_workers=2, torch_threads=3)) == 3
    assert torch_threads_per_unit(RunnerConfig(task_runner="dask", dask_address="tcp://h:1")
                                  ) is None  # the cluster's workers decide


@pytest.mark.parametrize("args, says", [
    (["--runner", "gpu-farm"], "task_runner"),
    (["--runner", "threads", "--dask-address", "tcp://127.0.0.1:8786"],
     "dask_address needs task_runner: dask"),
    (["--workers", "0"], "max_workers"),
])
def test_bad_runner_options_fail_before_anything_runs(tiny_models, tasks_root, tmp_path, args,
                                                      says):
    import yaml
    from typer.testing import CliRunner

    from flows.cli import app

    f = tmp_path / "study.yaml"
    store = tmp_path / "store"
    f.write_text(yaml.safe_dump(study_dict(tasks_root, ["pos_a"], str(store),
                                           tiny_models["encoder"])))
    res = CliRunner().invoke(app, ["run", str(f), *args])
    assert res.exit_code == 2, res.output
    assert says in res.output and "Traceback" not in res.output
    assert not store.exists()  # nothing written


_EARLY_FORKSERVER = """
import json, os, sys, psutil
from flows.runtime import start_local_dask_early
from prompt_core.config import RunnerConfig
before = dict(os.environ)
start_local_dask_early(RunnerConfig(task_runner=sys.argv[1], max_workers=2))
kids = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
from distributed.nanny import _get_env_variables
import dask
print(json.dumps({"env_unchanged": dict(os.environ) == before,
                  "servers": [p.environ() for p in kids],
                  "preload": [" ".join(p.cmdline()) for p in kids],
                  "pre_spawn": _get_env_variables("distributed.nanny.pre-spawn-environ"),
                  "dask": {k: dask.config.get(k) for k in (
                      "distributed.worker.profile.enabled", "distributed.admin.tick.interval",
                      "distributed.admin.system-monitor.interval")}}))
"""


@pytest.mark.parametrize(("runner", "user_trim"), [("dask", None), ("dask", "131072"),
                                                  ("threads", None)])
def test_local_dask_workers_fork_early_from_a_server_without_dasks_malloc_trim(runner, user_trim):
    """The CLI starts the preloading fork server of a local Dask cluster before the flow, with
    the run's thread count and API URL in its environment (this process's unchanged), and
    without Dask's MALLOC_TRIM_THRESHOLD_ (it made every activation tensor a fresh mmap: 17%
    slower units); a value the user sets is inherited. The server preloads the modelling base
    every backbone imports. The cluster's dashboard-only background work is slowed or off,
    except where the user configured Dask (here the tick interval, in the second case). Other
    runners start nothing."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api",
           "MALLOC_ARENA_MAX": "2"}  # a user's own malloc setting passes through
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", None)
    if user_trim:
        env["MALLOC_TRIM_THRESHOLD_"] = user_trim
        env["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] = "50ms"
    out = subprocess.run([sys.executable, "-c", _EARLY_FORKSERVER, runner], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["env_unchanged"]
    if runner == "threads":
        assert got["servers"] == []
        return
    assert "MALLOC_TRIM_THRESHOLD_" not in got["pre_spawn"]
    assert got["pre_spawn"]["OMP_NUM_THREADS"] == "1"  # Dask's other defaults stay
    [server] = got["servers"]
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert server["OMP_NUM_THREADS"] == server["MKL_NUM_THREADS"] == threads
    assert server["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    assert server["MALLOC_ARENA_MAX"] == "2"
    assert server.get("MALLOC_TRIM_THRESHOLD_") == user_trim
    assert "'transformers.modeling_utils'" in got["preload"][0]
    assert got["dask"] == {"distributed.worker.profile.enabled": False,
                           "distributed.admin.tick.interval": "50ms" if user_trim else "1s",
                           "distributed.admin.system-monitor.interval": "5s"}
