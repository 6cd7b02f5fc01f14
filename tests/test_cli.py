"""The ``prompt-transfer`` CLI on tiny models: run, query, validate, exit codes."""

from __future__ import annotations

import yaml

from tests.flow_helpers import study_dict, write_task


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
    res = runner.invoke(app, ["run", str(f)])
    assert res.exit_code == 2 and "invalid input" in res.output
    assert "empty text_a" in res.output
    res = runner.invoke(app, ["run", "--help"])
    assert res.exit_code == 0 and "--storage" in res.output and "--workers" in res.output
