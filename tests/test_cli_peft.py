"""``prompt-transfer export-peft`` / ``import-peft``: a stored prompt file out to a PEFT
adapter folder and back, and their one-line errors."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from flows.cli import app
from prompt_core.prompts import load_prompt_file, save_prompt_file


def test_export_then_import_round_trips_a_prompt_file(tiny_models, tmp_path):
    runner = CliRunner()
    prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    src = tmp_path / "p.safetensors"
    save_prompt_file(src, prompt, {"model_id": tiny_models["encoder"], "backbone_kind": "encoder",
                                   "task": "pos_a", "prompt_key": "abc"})
    folder = tmp_path / "adapter"
    res = runner.invoke(app, ["export-peft", str(src), "--out", str(folder)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["num_virtual_tokens"] == 4
    assert cfg["base_model_name_or_path"] == tiny_models["encoder"]
    # a non-empty folder is refused without --force
    res = runner.invoke(app, ["export-peft", str(src), "--out", str(folder)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert runner.invoke(app, ["export-peft", str(src), "--out", str(folder), "--force"]
                         ).exit_code == 0

    back = tmp_path / "back.safetensors"
    res = runner.invoke(app, ["import-peft", str(folder), "--out", str(back)])
    assert res.exit_code == 0, res.output
    got, meta = load_prompt_file(back, hidden_size=32, n_tokens=4)
    assert torch.equal(got, prompt)
    assert meta["task"] == "pos_a" and meta["imported_from"] == str(folder)
    res = runner.invoke(app, ["import-peft", str(folder), "--out", str(back)])
    assert res.exit_code == 2 and "exists" in res.output


def test_export_needs_a_base_model_and_kind(tmp_path):
    runner = CliRunner()
    src = tmp_path / "p.safetensors"
    save_prompt_file(src, torch.zeros(2, 8), {})
    res = runner.invoke(app, ["export-peft", str(src), "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "give --base-model" in res.output
    res = runner.invoke(app, ["export-peft", str(src), "--out", str(tmp_path / "a"),
                              "--base-model", "some/model"])
    assert res.exit_code == 2 and "give --kind" in res.output
    res = runner.invoke(app, ["import-peft", str(tmp_path / "none"), "--out",
                              str(tmp_path / "x.safetensors")])
    assert res.exit_code == 2 and "Traceback" not in res.output
