"""Models derived offline from the shipped MiniLM (prompt_core/derive.py, `derive-model`)."""

from __future__ import annotations

import inspect
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from flows.cli import app
from prompt_core import derive
from prompt_core.backbones import MINILM_ID, load_backbone
from prompt_core.backbones.encoder import resolve_model_path
from prompt_core.config import TrainConfig
from prompt_core.data import load_builtin_task
from prompt_core.training import train_prompt

SOURCE_WEIGHTS = f"{resolve_model_path(MINILM_ID)}/model.safetensors"
TINY = dict(hidden=32, layers=1, heads=2, intermediate=64, steps=30, batch_size=16, lr=3e-3)


def cli(*args: str):
    return CliRunner().invoke(app, ["derive-model", *args])


@pytest.fixture(scope="module")
def minilm_l3(tmp_path_factory):
    return derive.layer_drop(tmp_path_factory.mktemp("m") / "minilm-l3", keep=3)


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """Two tiny students with the same seed."""
    root = tmp_path_factory.mktemp("d")
    return [derive.distill(root / name, seed=0, **TINY) for name in ("a", "b")]


def test_layer_drop_keeps_layers_0_3_5_of_minilm(minilm_l3):
    src, out = load_file(SOURCE_WEIGHTS), load_file(minilm_l3 / "model.safetensors")
    cfg = json.loads((minilm_l3 / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["hidden_size"] == 384
    assert not any(k.startswith("encoder.layer.3.") for k in out)
    for key in ("embeddings.word_embeddings.weight", "pooler.dense.weight"):
        assert torch.equal(out[key], src[key])
    for new, old in enumerate([0, 3, 5]):
        for part in ("attention.self.query.weight", "output.dense.weight"):
            assert torch.equal(out[f"encoder.layer.{new}.{part}"],
                               src[f"encoder.layer.{old}.{part}"])
    pooling = json.loads((minilm_l3 / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 384 and pooling["pooling_mode_mean_tokens"]

    rec = json.loads((minilm_l3 / "derivation.json").read_text())
    assert rec["method"] == "layer_drop" and rec["parameters"] == {"keep": [0, 3, 5]}
    assert rec["source"]["weights_sha256"] == derive.sha256_file(SOURCE_WEIGHTS)
    assert rec["output"]["weights_sha256"] == derive.sha256_file(minilm_l3 / "model.safetensors")
    assert rec["command"] == ("prompt-transfer derive-model layer-drop --keep 0,3,5 "
                              f"--out {minilm_l3}")
    assert 0.3 < rec["agreement"]["spearman_pairwise_cosine"] < 1.0  # measured: 0.645
    assert rec["versions"]["prompt-transfer"] and rec["seconds"] > 0


def test_layer_drop_model_is_an_encoder_backbone_that_prompt_tunes(minilm_l3):
    bb = load_backbone("encoder", str(minilm_l3))
    assert bb.hidden_size == 384 and bb.model.config.num_hidden_layers == 3
    cfg = TrainConfig(n_tokens=4, steps=3, batch_size=8, eval_every=3, max_length=32)
    r = train_prompt(bb, load_builtin_task("tweet_sentiment"), cfg, seed=0)
    assert r.prompt.shape == (4, 384) and r.best_step == 3
    assert 0.0 <= r.best_scores["accuracy"] <= 1.0


@pytest.mark.parametrize("keep, expected", [
    (3, [0, 3, 5]), (1, [5]), (2, [0, 5]), (6, list(range(6))), ("0,4,5", [0, 4, 5]),
    ([5, 0], [0, 5]),
])
def test_parse_keep(keep, expected):
    assert derive.parse_keep(keep, 6) == expected


@pytest.mark.parametrize("keep", [0, 7, "x", "0,6", [1, 1], "", []])
def test_parse_keep_rejects(keep):
    with pytest.raises(derive.DeriveError, match="--keep"):
        derive.parse_keep(keep, 6)


def test_distill_tiny_student(students):
    a = students[0]
    rec = json.loads((a / "derivation.json").read_text())
    losses = [p["loss"] for p in rec["loss_curve"]]
    assert rec["loss_curve"][0]["step"] == 1 and rec["loss_curve"][-1]["step"] == 30
    assert losses[-1] < 0.8 * losses[0]
    assert rec["output"]["hidden_size"] == 32 != rec["source"]["hidden_size"] == 384
    assert rec["texts"]["n_texts"] > 1000  # the demo tasks' train texts + label words
    assert -1.0 <= rec["agreement"]["spearman_pairwise_cosine"] <= 1.0
    assert "--hidden 32 --layers 1 --heads 2" in rec["command"]
    assert rec["command"].endswith(f"--seed 0 --sim-weight 10.0 --out {a}")
    bb = load_backbone("encoder", str(a))
    assert bb.hidden_size == 32 and bb.model.config.num_hidden_layers == 1
    assert bb.tokenizer.vocab_size == 30522  # MiniLM's vocabulary


def test_distill_same_seed_same_weights(students):
    a, b = (json.loads((s / "derivation.json").read_text())["output"]["weights_sha256"]
            for s in students)
    assert a == b == derive.sha256_file(students[1] / "model.safetensors")
    # the training moved the layers away from their seeded init
    torch.manual_seed(0)
    init = derive.make_student(load_backbone("encoder").model, 32, 1, 2, 64).state_dict()
    trained = load_file(students[0] / "model.safetensors")
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(trained[key], init[key])
    assert torch.equal(trained["embeddings.word_embeddings.weight"],
                       init["embeddings.word_embeddings.weight"])  # frozen PCA projection


def test_student_embeddings_are_pca_of_minilm():
    emb = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)) @ torch.diag(
        torch.arange(8, 0, -1).float())
    mean, basis = derive.pca_basis(emb, 3)  # (8,), (8, 3) orthonormal, largest variance first
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    var = ((emb - mean) @ basis).var(0)
    assert var[0] > var[1] > var[2]


def test_distill_bad_sizes_fail_before_loading(tmp_path):
    with pytest.raises(derive.DeriveError, match="not divisible"):
        derive.distill(tmp_path / "x", hidden=30, heads=4)
    with pytest.raises(derive.DeriveError, match="between 1 and 384"):
        derive.distill(tmp_path / "x", hidden=512, heads=4, steps=1)
    assert not (tmp_path / "x").exists()


def test_staged_dir_leaves_nothing_on_a_crash(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(RuntimeError), derive.staged_dir(out, force=False) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_non_empty_out_without_force_and_replaces_with_it(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("keep me")
    res = cli("layer-drop", "--keep", "2", "--out", str(out))
    assert res.exit_code == 2
    assert "exists and is not empty; pass --force" in res.output and "Traceback" not in res.output
    assert [p.name for p in out.iterdir()] == ["stale.txt"]

    res = cli("layer-drop", "--keep", "0,4,5", "--out", str(out), "--force")
    assert res.exit_code == 0, res.output
    assert "derived" in res.output and "agreement" in res.output
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "derivation.json").read_text())["parameters"]["keep"] == [0, 4, 5]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left
    assert out.stat().st_mode & 0o055 == 0o055 & ~os.umask(os.umask(0))  # not mkdtemp's 0700


@pytest.mark.parametrize("args, message", [
    (["layer-drop", "--keep", "9"], "--keep 9: keep between 1 and 6 layers"),
    (["layer-drop", "--keep", "a,b"], "give a layer count"),
    (["layer-drop", "--source", "/nowhere/model"], "no config.json in /nowhere/model"),
    (["distill", "--hidden", "30", "--heads", "4"], "--hidden 30 is not divisible by --heads 4"),
    (["distill", "--steps", "0"], "need steps >= 1"),
    (["distill", "--texts", "/nowhere.txt"], "text file /nowhere.txt: cannot read it"),
])
def test_cli_bad_arguments_one_line_exit_2(tmp_path, args, message):
    res = cli(*args, "--out", str(tmp_path / "m"))
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: invalid input: ") and message in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_cli_needs_out():
    res = cli("distill")
    assert res.exit_code == 2 and "--out" in res.output


def test_cli_distill_defaults_are_the_library_defaults():
    from flows.cli_derive import derive_distill

    lib = inspect.signature(derive.distill).parameters
    for name, p in inspect.signature(derive_distill).parameters.items():
        if name in lib and name not in ("out_dir", "texts", "source", "force"):
            assert p.default == lib[name].default, name
