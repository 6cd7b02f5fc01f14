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


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output and "Errno" not in output, output
    return lines[0]


def test_export_peft_reads_s3_with_the_storage_settings(tiny_models, tmp_path, monkeypatch):
    """export-peft reaches S3 as the storage root does: PROMPT_TRANSFER_S3_ENDPOINT (here a
    moto server; no AWS_ENDPOINT_URL), the usual credentials; a missing object is exit 2."""
    import logging
    import uuid

    import boto3

    from tests.s3_server import clean_s3_env, moto_s3_server

    clean_s3_env(monkeypatch)
    monkeypatch.setattr(logging.getLogger("werkzeug"), "disabled", True)
    src = tmp_path / "p.safetensors"
    save_prompt_file(src, torch.ones(4, 32), {"model_id": tiny_models["encoder"],
                                              "backbone_kind": "encoder"})
    with moto_s3_server() as endpoint:
        monkeypatch.setenv("PROMPT_TRANSFER_S3_ENDPOINT", endpoint)
        bucket = f"peft-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="pt/prompts/tiny/a/p.safetensors",
                      Body=src.read_bytes())
        uri = f"s3://{bucket}/pt/prompts/tiny/a/p.safetensors"
        runner = CliRunner()
        res = runner.invoke(app, ["export-peft", uri, "--out", str(tmp_path / "adapter")])
        assert res.exit_code == 0, res.output
        cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert cfg["num_virtual_tokens"] == 4
        missing = f"s3://{bucket}/pt/prompts/none.safetensors"
        res = runner.invoke(app, ["export-peft", missing, "--out", str(tmp_path / "b")])
        assert res.exit_code == 2, res.output
        assert missing in _one_error_line(res.output)
        assert not (tmp_path / "b").exists()


def test_unwritable_out_is_exit_2_one_line(tiny_models, tmp_path):
    """--out under a file (and, when not root, in a read-only folder): exit 2, one line
    naming --out, nothing written, for export-peft, import-peft and derive-model."""
    import os

    runner = CliRunner()
    src = tmp_path / "p.safetensors"
    save_prompt_file(src, torch.zeros(4, 32), {"model_id": tiny_models["encoder"],
                                               "backbone_kind": "encoder"})
    adapter = tmp_path / "adapter"
    assert runner.invoke(app, ["export-peft", str(src), "--out", str(adapter)]).exit_code == 0
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    targets = [plain / "sub"] + ([locked / "sub"] if os.geteuid() != 0 else [])
    try:
        for target in targets:
            for args in (["export-peft", str(src), "--out", str(target)],
                         ["import-peft", str(adapter), "--out", str(target / "p.safetensors")],
                         ["derive-model", "layer-drop", "--out", str(target)]):
                res = runner.invoke(app, args)
                assert res.exit_code == 2, (args, res.output)
                line = _one_error_line(res.output)
                assert line.startswith(f"error: invalid input: --out {target}"), line
                assert "not a folder" in line or "not writable" in line, line
            assert not (locked / "sub").exists()
    finally:
        locked.chmod(0o755)
    res = runner.invoke(app, ["export-peft", str(src), "--out", str(adapter)])
    assert res.exit_code == 2
    line = _one_error_line(res.output)
    assert "--force" in line and "not empty" in line, line


def test_pickle_adapter_is_refused_without_torch_advice(tmp_path):
    """An adapter_model.bin holding pickled objects is refused and never unpickled; the
    message does not repeat torch's advice to load it with weights_only=False."""
    from prompt_core.peft_io import export_peft

    folder = export_peft(torch.zeros(2, 8), tmp_path / "adapter", backbone_kind="encoder",
                         base_model_name_or_path="some/model")
    (folder / "adapter_model.safetensors").unlink()
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"prompt_embeddings": Evil()}, folder / "adapter_model.bin")
    out = tmp_path / "p.safetensors"
    res = CliRunner().invoke(app, ["import-peft", str(folder), "--out", str(out)])
    assert res.exit_code == 2, res.output
    line = _one_error_line(res.output)
    assert str(folder / "adapter_model.bin") in line and "refused" in line, line
    for advice in ("weights_only", "safe_globals", "Re-running", "trusted source"):
        assert advice not in res.output, res.output
    assert not marker.exists() and not out.exists()


def test_write_error_on_out_is_one_line(tmp_path, monkeypatch):
    """An OSError while the file is written (a read-only file system, a full disk) is exit 2,
    one line naming --out and the reason, not a raw errno (also as root, where a read-only
    folder does not stop a write)."""
    import errno

    from prompt_core import prompts
    from prompt_core.peft_io import export_peft

    folder = export_peft(torch.zeros(2, 8), tmp_path / "adapter", backbone_kind="encoder",
                         base_model_name_or_path="some/model")
    out = tmp_path / "new" / "p.safetensors"

    def read_only_fs(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(prompts, "save_prompt_file", read_only_fs)
    res = CliRunner().invoke(app, ["import-peft", str(folder), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert _one_error_line(res.output) == (
        f"error: invalid input: --out {out}: cannot write there: Read-only file system")
    assert not out.parent.exists()  # the folder made for it is gone again
