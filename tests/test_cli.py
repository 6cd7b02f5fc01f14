"""The ``prompt-transfer`` CLI on tiny models: run, query, validate, exit codes, and errors
as one clear line (no traceback, never wrapped) also when run as a real process."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.flow_helpers import study_dict, write_task

REPO = Path(__file__).resolve().parents[1]


def test_cli_run_query_validate(prefect_harness, tiny_models, tasks_root, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    storage = tmp_path / "cli-store"
    d = study_dict(tasks_root, ["pos_a", "pos_b"], str(storage), tiny_models["encoder"])
    d["runner"] = {"max_workers": 2}  # two units at once share one model and tokenizer
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(d))
    res = runner.invoke(app, ["validate", str(f)])
    assert res.exit_code == 0, res.output
    assert "pos_a" in res.output and "valid" in res.output
    res = runner.invoke(app, ["run", str(f)])
    assert res.exit_code == 0, res.output
    assert "prompts trained 2" in res.output
    res = runner.invoke(app, ["query", "select count(*) as n from cross_task", "--storage",
                              str(storage), "--format", "csv"])
    assert res.exit_code == 0 and res.output.strip().splitlines() == ["n", "16"]
    res = runner.invoke(app, ["query", "select * from nope", "-s", str(storage)])
    assert res.exit_code == 1 and "query failed" in res.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: [{kind: gpt9}]\ntasks: []\n")
    res = runner.invoke(app, ["run", str(bad)])
    assert res.exit_code == 2
    assert "models.0.kind: unknown backbone kind 'gpt9'" in res.output
    assert "tasks" in res.output
    broken = tmp_path / "broken_task"
    write_task(tmp_path, "broken_task", "sentiment")
    (broken / "train.jsonl").write_text('{"text_a": "", "text_b": null, "label": 0}\n')
    d["tasks"].append({"path": str(broken)})
    f.write_text(yaml.safe_dump(d))
    fresh = tmp_path / "never-written"
    res = runner.invoke(app, ["run", str(f), "--storage", str(fresh)])
    assert res.exit_code == 2
    # the CLI's own line, whole: rich never wraps an error line (it once split this one)
    line = next(ln for ln in res.output.splitlines() if "broken_task" in ln)
    assert "empty text_a value(s); first at row 0" in line, res.output
    assert "error: invalid input:" in res.output and "Traceback" not in res.output
    assert not fresh.exists()  # found before anything is written
    res = runner.invoke(app, ["run", "--help"])
    assert res.exit_code == 0 and "--storage" in res.output and "--workers" in res.output


def _cli(args: list[str], tmp_path: Path, columns: int = 40) -> subprocess.CompletedProcess:
    """``prompt-transfer ARGS`` as a real process on a narrow terminal, with its own Prefect
    home and no Prefect API (so the ephemeral one starts, as for a user)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(COLUMNS=str(columns), PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_LOGGING_LEVEL", None)
    env.pop("PROMPT_TRANSFER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.bad_input
def test_cli_process_bad_task_data_one_line(tiny_models, tasks_root, tmp_path):
    """Bad task data: exit 2 before anything is written, one unwrapped message, no traceback."""
    broken = write_task(tmp_path, "broken_task", "sentiment")
    (broken / "train.jsonl").write_text('{"text_a": "", "text_b": null, "label": 0}\n')
    store = tmp_path / "store"
    d = study_dict(tasks_root, ["pos_a"], str(store), tiny_models["encoder"])
    d["tasks"].append({"path": str(broken)})
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(d))
    for cmd in ("validate", "run"):
        res = _cli([cmd, str(f)], tmp_path)
        assert res.returncode == 2, (cmd, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        assert len(_error_lines(res.stderr)) == 1, res.stderr
        assert any("broken_task" in ln and "1 empty text_a value(s); first at row 0" in ln
                   for ln in res.stderr.splitlines()), res.stderr
        assert not store.exists()


def test_cli_process_failing_unit_one_line(tiny_models, tasks_root, tmp_path):
    """A unit that fails at runtime (weights file truncated; config.json is fine, so the check
    before compute passes): exit 1, `run failed: ...` once, no Prefect traceback."""
    import shutil

    model = tmp_path / "broken-model"
    shutil.copytree(tiny_models["encoder"], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(study_dict(tasks_root, ["pos_a"], str(tmp_path / "store"),
                                           str(model))))
    res = _cli(["run", str(f)], tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "Task run failed" not in res.stderr  # Prefect's own report stays off the console
    assert _error_lines(res.stderr) == [
        "error: run failed: UnitFailed: train tiny/pos_a seed=0: SafetensorError: Error while "
        "deserializing header: invalid header length"], res.stderr


def test_cli_process_tables_damaged_part_and_missing_root(tmp_path):
    """`tables` with a 0-byte part: the other tables are listed, the damaged one is named with
    its file, exit 1, no traceback. `query`/`tables` on a root that does not exist: exit 2."""
    part = tmp_path / "store" / "tables" / "prompts" / "study=s" / "model=m" / "part-x.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"")
    res = _cli(["tables", "--storage", str(tmp_path / "store")], tmp_path, columns=200)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    [line] = _error_lines(res.stderr)
    assert line.startswith("error: table prompts: ") and str(part) in line, res.stderr
    rows = {ln.split("│")[1].strip(): ln.split("│")[2].strip()
            for ln in res.stdout.splitlines() if ln.count("│") > 3}
    assert rows["prompts"] == "unreadable" and rows["cross_task"] == "0", res.stdout

    missing = tmp_path / "no-such-root"
    for args in (["query", "select * from runs"], ["tables"]):
        res = _cli([*args, "--storage", str(missing)], tmp_path)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        assert _error_lines(res.stderr) == [
            f"error: storage root {missing} does not exist (no tables there)"]
        assert not missing.exists()


@pytest.mark.bad_input
def test_cli_tables_root_without_tables(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["query", "select 1", "-s", str(tmp_path / "empty")])
    assert res.exit_code == 2
    assert f"storage root {tmp_path / 'empty'} has no tables/" in res.output


def test_cli_error_line_never_wrapped(monkeypatch, capsys):
    """On a 40-column console the whole message stays on one line (rich used to wrap it)."""
    import typer
    from rich.console import Console

    from flows import cli_support

    monkeypatch.setattr(cli_support, "console", Console(stderr=True, width=40))
    msg = ("task 'x' split 'train' (/a/rather/long/path/to/the/task): 1 empty text_a "
           "value(s); first at row 0 [not markup]")
    with pytest.raises(typer.Exit):
        cli_support.fail(msg, 2)
    assert capsys.readouterr().err.splitlines() == [f"error: {msg}"]


def test_cli_debug_shows_traceback(tmp_path):
    """`--debug` (global, per command, or PROMPT_TRANSFER_DEBUG) adds the traceback."""
    from typer.testing import CliRunner

    from flows.cli import app

    part = tmp_path / "tables" / "runs" / "study=s" / "part-x.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1")
    runner = CliRunner()
    res = runner.invoke(app, ["query", "select * from runs", "-s", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "error: query failed: " in res.output and str(part) in res.output
    for args, env in ((["--debug", "query"], {}), (["query", "--debug"], {}),
                      (["query"], {"PROMPT_TRANSFER_DEBUG": "1"})):
        res = runner.invoke(app, [*args, "select * from runs", "-s", str(tmp_path)], env=env)
        assert res.exit_code == 1 and "Traceback (most recent call last)" in res.output, args
        assert "error: query failed: " in res.output


@pytest.mark.filterwarnings("ignore:Logger 'prefect:UserWarning")  # no flow run for the API
def test_prefect_run_errors_kept_off_the_console():
    """While a run is reported by the CLI, Prefect's ERROR records of flow/task runs (with
    their tracebacks) do not reach the console handlers; other records do, and the filter is
    gone afterwards."""
    from flows.runtime import quiet_prefect_errors

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with quiet_prefect_errors(True):
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("prefect.task_runs").error("task failed", exc_info=True)
                logging.getLogger("prefect.flow_runs").error("flow failed", exc_info=True)
            logging.getLogger("prefect.task_runs").warning("a warning")
            logging.getLogger("other.lib").error("another library's error")
        logging.getLogger("prefect.flow_runs").error("after the run")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "failed" not in text and "Traceback" not in text
    assert "a warning" in text and "another library's error" in text and "after the run" in text


@pytest.mark.bad_input
def test_cli_validate_and_run_check_models_before_compute(tasks_root, tmp_path):
    """`validate` and `run` run the whole check before compute: a model folder that does not
    exist is exit 2 naming the field, and `run` writes nothing."""
    from typer.testing import CliRunner

    from flows.cli import app

    store = tmp_path / "store"
    d = study_dict(tasks_root, ["pos_a"], str(store), str(tmp_path / "no-such-model"))
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(d))
    runner = CliRunner()
    for cmd in ("validate", "run"):
        res = runner.invoke(app, [cmd, str(f)])
        assert res.exit_code == 2, res.output
        assert "models.0.model_id" in res.output and "no-such-model" in res.output
        assert "does not exist" in res.output
    assert not store.exists()


def test_cli_verify_lists_and_quarantines_damage(tmp_path, monkeypatch):
    """`verify`: a 0-byte part is listed by path (exit 1); --quarantine moves it aside (exit 0);
    then the root is clean (exit 0); a root that does not exist is exit 2."""
    from rich.console import Console
    from typer.testing import CliRunner

    from flows import cli

    monkeypatch.setattr(cli, "out", Console(width=400))
    part = tmp_path / "tables" / "runs" / "study=s" / "part-x.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"")
    runner = CliRunner()
    res = runner.invoke(cli.app, ["verify", "-s", str(tmp_path)])
    assert res.exit_code == 1, res.output
    assert str(part) in res.output and "unreadable" in res.output
    assert "1 damaged object(s)" in res.output and part.exists()
    res = runner.invoke(cli.app, ["verify", "-s", str(tmp_path), "--quarantine"])
    assert res.exit_code == 0, res.output
    assert not part.exists()
    assert (tmp_path / "_quarantine" / "tables" / "runs" / "study=s" / "part-x.parquet").exists()
    res = runner.invoke(cli.app, ["verify", "-s", str(tmp_path)])
    assert res.exit_code == 0 and "nothing damaged" in res.output, res.output
    res = runner.invoke(cli.app, ["verify", "-s", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.bad_input
def test_cli_query_s3_root_without_tables(monkeypatch):
    """On S3 a bucket/prefix with no `tables/` (or no bucket at all) is exit 2 naming the
    root, not an empty answer."""
    import uuid

    import boto3
    from typer.testing import CliRunner

    from flows.cli import app
    from tests.s3_server import moto_s3_server

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # the in-process moto server logs each request; keep that out of the CLI's captured output
    monkeypatch.setattr(logging.getLogger("werkzeug"), "disabled", True)
    with moto_s3_server() as endpoint:
        monkeypatch.setenv("PROMPT_TRANSFER_S3_ENDPOINT", endpoint)
        bucket = f"bkt-{uuid.uuid4().hex[:12]}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="other/x.txt", Body=b"x")
        runner = CliRunner()
        cases = {f"s3://{bucket}/other": "has no tables/",
                 f"s3://{bucket}/nothing-here": f"does not exist at {endpoint} (no tables there)",
                 f"s3://no-{bucket}/p": f"does not exist at {endpoint} (no tables there)"}
        for root, problem in cases.items():
            res = runner.invoke(app, ["query", "select count(*) from runs", "-s", root])
            assert res.exit_code == 2, (root, res.output)
            assert f"error: storage root {root} {problem}" in res.output, res.output
            assert "Traceback" not in res.output


def test_run_summary_prints_paths_in_full(monkeypatch):
    """Issue 19 C: two heatmap URIs that differ only at their end, on a 40-column console:
    each is printed whole on its own line (a table cell cut both to the same "…")."""
    from rich.console import Console

    from flows import cli_support
    from flows.stage_api import StudyResult

    buf = io.StringIO()
    monkeypatch.setattr(cli_support, "out", Console(file=buf, width=40))
    root = "s3://a-rather-long-bucket-name/with/a/deep/prefix/for/results"
    summary = {"own_beats_none": 2, "n_tasks": 3, "same_type_rel": 0.9, "diff_type_rel": 0.8,
               "random_rel": 0.5}
    heatmaps = {m: f"{root}/artifacts/demo/{'0' * 32}/heatmap-{m}.png"
                for m in ("minilm", "minilm-l3")}
    cli_support.print_run_summary(StudyResult(
        run_id="f" * 32, study="demo", storage=root, seconds=12.0,
        summaries={m: summary for m in heatmaps}, heatmaps=heatmaps,
        stage_counts={"cross_model": {"computed": 2, "stored": 0}}))
    lines = buf.getvalue().splitlines()
    assert "…" not in buf.getvalue()
    for model, uri in heatmaps.items():
        assert f"heatmap {model}: {uri}" in lines
    assert f"run id: {'f' * 32}" in lines and f"tables: {root}/tables/" in lines
    assert "cross_model: 2 computed, 0 stored before" in lines


def test_status_says_a_run_is_in_flight(tmp_path):
    """Issue 19 C: no finished run of the study, but live unit claims under the root: status
    says a run is in flight (and --json has it); an expired claim does not count."""
    import json

    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.claims import try_claim
    from tasks.storage import open_storage
    from tests.table_helpers import write_tables

    st = open_storage(str(tmp_path / "root"))
    write_tables(st, "other", 0.0)  # another study's finished run: none of demo's
    study = str(REPO / "deployments" / "studies" / "demo.yaml")
    runner = CliRunner()
    args = ["status", study, "--storage", st.root]
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "no finished run of this study recorded" in res.output
    assert "in flight" not in res.output
    try_claim(st, "prompt-old", "run-crashed/host/1/2", 0.001)  # expires at once
    lease = try_claim(st, "prompt-abc", "run-live/host/1/2", 300.0)
    assert lease is not None
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert (f"a run is in flight under {st.root}: 1 unit(s) claimed now (run run-live)"
            in res.output), res.output
    assert "no finished run of this study recorded" in res.output
    doc = json.loads(runner.invoke(app, [*args, "--json"]).output)
    assert doc["in_flight"] == {"live_claims": 1, "run_ids": ["run-live"]}


def test_verbose_before_the_command(monkeypatch, tmp_path):
    """Issue 19 D: `prompt-transfer --verbose run ...` is accepted, like `--debug`, and means
    what `run --verbose` means (Prefect's INFO lines on the terminal too; without it only the
    terminal's handler is kept at WARNING, the API gets the logs either way)."""
    from typer.testing import CliRunner

    from flows import cli

    levels = []
    monkeypatch.setattr(cli, "prefect_defaults",
                        lambda log_level=None, console_level=None: levels.append(console_level))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: [{kind: gpt9}]\ntasks: []\n")
    runner = CliRunner()
    for args in (["--verbose", "run", str(bad)], ["-v", "run", str(bad)],
                 ["run", str(bad), "--verbose"], ["--debug", "--verbose", "run", str(bad)]):
        levels.clear()
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "No such option" not in res.output and "unknown backbone kind" in res.output
        assert levels[-1] is None, (args, levels)
    levels.clear()
    res = runner.invoke(cli.app, ["run", str(bad)])
    assert res.exit_code == 2 and levels[-1] == "WARNING"
    res = runner.invoke(cli.app, ["--help"])
    assert "--verbose" in res.output and "--debug" in res.output


def test_no_telemetry_notice_on_a_terminal(tmp_path):
    """Issue 19 C: Prefect prints a first-run telemetry notice when it is imported on a
    terminal (unless DO_NOT_TRACK is set); the CLI sets DO_NOT_TRACK before Prefect is
    imported, so nothing comes before the bars. The control run shows the notice."""
    import pty
    import select

    def on_a_terminal(code: str, home: Path) -> str:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DO_NOT_TRACK", "CI", "GITHUB_ACTIONS", "PREFECT_HOME")}
        env["PREFECT_HOME"] = str(home)
        primary, secondary = pty.openpty()
        p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                             stdin=secondary, stdout=secondary, stderr=secondary)
        os.close(secondary)
        chunks = []
        try:
            while True:
                ready, _, _ = select.select([primary], [], [], 120)
                if not ready:
                    break
                try:
                    data = os.read(primary, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            p.wait(timeout=120)
            os.close(primary)
        return b"".join(chunks).decode(errors="replace")

    control = on_a_terminal("import prefect", tmp_path / "home-a")
    assert "anonymous usage data" in control, control  # the notice this test looks for
    quiet = on_a_terminal("from flows.cli_support import quiet_startup\n"
                          "quiet_startup()\nimport prefect\nprint('imported')",
                          tmp_path / "home-b")
    assert "imported" in quiet and "anonymous usage data" not in quiet, quiet


def test_make_demo_has_titled_sections_and_what_next():
    """Issue 19 C: `make demo` shows titled sections, not make's echo of the SQL, and ends
    with what to do next (the UI, queries, the files)."""
    text = (REPO / "Makefile").read_text()
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    queries = [i for i, ln in enumerate(recipe)
               if "prompt-transfer query" in ln and not ln.startswith("\t@echo")]
    assert len(queries) == 3
    for i in queries:
        assert recipe[i].startswith("\t@"), recipe[i]  # make does not echo the SQL
        j = i - 1  # the @echo lines just above it hold a title
        while recipe[j].startswith("\t@echo") and '"==' not in recipe[j]:
            j -= 1
        assert recipe[j].startswith('\t@echo "== '), recipe[i - 3:i]
    tail = "\n".join(recipe[queries[-1]:])
    for needle in ("prefect server start", "PREFECT_API_URL", "prompt-transfer query",
                   "results/tables", "results/artifacts"):
        assert needle in tail, needle
