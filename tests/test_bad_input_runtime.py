"""Issue 19, item 2: runner settings that cannot work are refused before anything is written.

``--device`` (or ``runner.device``) must be cpu, auto, cuda or cuda:N; a GPU it names must
exist on this machine when the units run here (threads, processes, a local Dask cluster);
``--dask-address`` must be a scheduler address (``[tcp|tls|ws|wss|ucx]://host:port``). Each
case runs the real CLI (``run`` and ``validate``) and checks the exit code (2), one error
line naming the setting and its value, no traceback, and that the case folder (the storage
root included: no runs row) is untouched. Before the fix ``--device cuda`` failed only after
prepare and a training unit ran (a failed runs row written), and ``--dask-address notaurl``
exited 1 with a ValueError after writing a runs row.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from prompt_core.config import RunnerConfig, parse_study
from prompt_core.preflight import StudyCheckError, check_study
from tests.flow_helpers import study_dict

pytestmark = pytest.mark.bad_input


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.fixture
def case(tmp_path, tiny_models, tasks_root, monkeypatch) -> tuple[Path, dict]:
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(d)  # the default root ./results would land here
    study = study_dict(tasks_root, ["pos_a"], str(d / "store"), tiny_models["encoder"])
    return d, study


def run_cli(folder: Path, args: list[str]) -> tuple[int, str]:
    from flows.cli import app

    before = snapshot(folder)
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert snapshot(folder) == before, "the case folder changed: something was written"
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res.exit_code, res.output


BAD_FORMATS = [
    (["--device", "tpu"], ["device: 'tpu' is not one of cpu, cuda, cuda:N or auto"]),
    (["--device", "cuda:abc"], ["device: 'cuda:abc' is not one of"]),
    (["--device", "mps"], ["device: 'mps' is not one of"]),
    (["--dask-address", "notaurl"], ["dask_address: 'notaurl' is not a Dask scheduler address",
                                     "tcp://host:port"]),
    (["--dask-address", "http://sched:8786"], ["dask_address: 'http://sched:8786' has scheme "
                                               "'http'"]),
    (["--dask-address", "tcp://sched"], ["dask_address: 'tcp://sched' is not a Dask"]),
    (["--dask-address", "/shared/scheduler.json"], ["dask_address: '/shared/scheduler.json' "
                                                    "looks like a scheduler file"]),
]


@pytest.mark.parametrize("args,must", BAD_FORMATS, ids=[" ".join(a) for a, _ in BAD_FORMATS])
def test_bad_runner_option_refused_before_anything_is_written(case, args, must):
    folder, study = case
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    code, out = run_cli(folder, ["run", str(path), *args])
    print(out)
    assert code == 2, out
    assert out.startswith("error: invalid input:") and out.count("error:") == 1, out
    assert len(out.strip().splitlines()) == 1, out  # one line
    for s in must:
        assert s in out, (s, out)


def test_bad_runner_section_in_the_study_file_names_its_field(case):
    folder, study = case
    study["runner"] = {**study["runner"], "device": "tpu"}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    for cmd in ("validate", "run"):
        code, out = run_cli(folder, [cmd, str(path)])
        assert code == 2 and "runner.device: 'tpu' is not one of" in out, out


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "CUDA:3"])
def test_missing_gpu_refused_before_anything_is_written(case, device):
    if _cuda():
        pytest.skip("this machine has CUDA: the device exists (cuda:99 aside)")
    folder, study = case
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    for args in (["run", str(path), "--device", device], ["validate", str(path)]):
        if args[0] == "validate":  # the same check, from the study file
            study["runner"] = {**study["runner"], "device": device}
            path.write_text(yaml.safe_dump(study, sort_keys=False))
        code, out = run_cli(folder, args)
        print(out)
        assert code == 2, out
        assert f"runner.device: device {device!r}: CUDA is not available" in out, out
        assert "use device 'cpu' or 'auto'" in out and out.count("error:") == 1
    assert not (folder / "store").exists()


@pytest.mark.parametrize("value", ["cpu", "auto", "cuda", "cuda:0", "cuda:12", " CPU "])
def test_device_formats_accepted(value):
    assert RunnerConfig(device=value).device == value


@pytest.mark.parametrize("value", ["tcp://sched:8786", "sched:8786", "tls://10.0.0.5:8786",
                                   "ws://host.example.org:8787", "tcp://[::1]:8786"])
def test_dask_addresses_accepted(value):
    assert RunnerConfig(task_runner="dask", dask_address=value).dask_address == value


@pytest.mark.parametrize("value", ["notaurl", "tcp://h:0", "tcp://h:70000", "inproc://x",
                                   "tcp://two words:1", ""])
def test_dask_addresses_refused(value):
    with pytest.raises(ValidationError, match="dask_address"):
        RunnerConfig(task_runner="dask", dask_address=value)


def test_gpu_of_an_existing_dask_cluster_is_not_checked_here(tiny_models, tasks_root,
                                                               tmp_path):
    """Only the cluster's workers know whether they have the GPU: the format alone counts."""
    d = study_dict(tasks_root, ["pos_a"], str(tmp_path / "s"), tiny_models["encoder"])
    d["runner"] = {**d["runner"], "device": "cuda:7", "task_runner": "dask",
                   "dask_address": "tcp://gpu-sched:8786"}
    check_study(parse_study(d))  # no problem: not a local device
    if not _cuda():
        d["runner"] = {**d["runner"], "task_runner": "processes", "dask_address": None}
        with pytest.raises(StudyCheckError, match="runner.device: device 'cuda:7'"):
            check_study(parse_study(d))
