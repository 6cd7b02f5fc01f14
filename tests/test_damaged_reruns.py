"""Issue 19, item 1: every kind of stored file a rerun reads back (projectors, probes, task
data, next to the prompts and parts) is found by ``verify`` when damaged, and a rerun
recomputes exactly the damaged thing and succeeds, whether the file was left in place or
moved aside by ``verify --quarantine``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import prompt_core.recommend as recommend_mod
import tasks.stage_units as stage_units
import tasks.units as units_mod
from flows.cli import app
from flows.transfer_matrix import run_study
from prompt_core.config import parse_study
from tasks.integrity import verify_root
from tasks.storage import open_storage
from tests.flow_helpers import Counter, study_dict


@pytest.fixture(scope="module")
def tiny48(tmp_path_factory) -> str:
    """A second tiny encoder, hidden 48: its prompts are reached through a projector."""
    import torch
    from transformers import BertConfig, BertModel

    from tests.conftest import _tokenizer

    d = tmp_path_factory.mktemp("tiny48") / "tiny48"
    tok = _tokenizer()
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=256)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture
def counted(monkeypatch):
    """Calls of the distance projector's trainer, the probe and the copy of task data."""
    objectives = {k: Counter(v) for k, v in stage_units.OBJECTIVES.items()}
    monkeypatch.setattr(stage_units, "OBJECTIVES", objectives)
    probe = Counter(recommend_mod.probe_scores)
    monkeypatch.setattr(recommend_mod, "probe_scores", probe)
    copy = Counter(units_mod.task_to_parquet)
    monkeypatch.setattr(units_mod, "task_to_parquet", copy)
    return {"projector": objectives["distance"], "probe": probe, "copy": copy}


def _study(tasks_root: Path, store: Path, tiny: str, tiny48: str) -> dict:
    d = study_dict(tasks_root, ["pos_a", "pos_b", "pair_c"], str(store), tiny)
    d["models"] = [{"kind": "encoder", "name": "tiny", "model_id": tiny},
                   {"kind": "encoder", "name": "tiny48", "model_id": tiny48}]
    d["stages"] = ["cross_task", "cross_model", "indicators"]
    d["cross_model"] = {"train_tasks": ["pos_a", "pair_c"], "objectives": ["distance"],
                        "pairs": [{"source": "tiny", "target": "tiny48"}],
                        "projector": {"hidden": 16, "steps": 5, "batch_size": 8,
                                      "max_length": 64}}
    d["indicators"] = {"models": ["tiny"], "window": 1, "ablation_fractions": [],
                       "probe_examples": 8}
    return d


def _truncate(store: Path, key: str) -> None:
    p = store / key
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _one(store: Path, pattern: str) -> str:
    (path,) = sorted(store.glob(pattern))
    return str(path.relative_to(store))


def _reset(counted) -> None:
    for c in counted.values():
        c.n = 0


def test_damaged_projector_probe_and_task_data_are_found_and_recomputed(
        prefect_harness, tiny_models, tiny48, tasks_root, tmp_path, counted):
    store = tmp_path / "store"
    st = open_storage(str(store))
    study = parse_study(_study(tasks_root, store, tiny_models["encoder"], tiny48))
    r = run_study(study)
    assert r.status == "completed", r.failures
    assert (counted["projector"].n, counted["probe"].n, counted["copy"].n) == (1, 3, 3)
    assert verify_root(st) == []

    projector = _one(store, "projectors/tiny/tiny48/*.safetensors")
    probe = _one(store, "probes/tiny/pos_b/*.json")
    data = _one(store, "task_data/pos_a/*.parquet")
    for key in (projector, probe, data):
        _truncate(store, key)
    # verify finds each of them (before the fix: "nothing damaged")
    assert {d.key: d.kind for d in verify_root(st)} == {
        projector: "unreadable", probe: "unreadable", data: "unreadable"}

    # a rerun with the damaged files in place: each is quarantined and recomputed, nothing else
    _reset(counted)
    r2 = run_study(study)
    assert r2.status == "completed", r2.failures
    assert (counted["projector"].n, counted["probe"].n, counted["copy"].n) == (1, 1, 1)
    assert r2.stage_counts["project"] == {"computed": 1, "stored": 0}
    assert r2.stage_counts["probe"] == {"computed": 1, "stored": 2}
    assert r2.n_prompts_trained == 0 and r2.n_cells_evaluated == 0
    assert verify_root(st) == []
    quarantined = set(st.list("_quarantine"))
    assert {f"_quarantine/{k}" for k in (projector, probe, data)} <= quarantined
    assert f"_quarantine/{projector.removesuffix('.safetensors')}.json" in quarantined

    # verify --quarantine moves a damaged projector aside (its row stays); the rerun retrains
    # exactly that projector (before the fix: "object not found" on every rerun)
    _truncate(store, projector)
    res = CliRunner().invoke(app, ["verify", "-s", str(store), "--quarantine"])
    assert res.exit_code == 0, res.output
    assert "1 damaged object(s) quarantined" in res.output
    assert not (store / projector).exists()
    _reset(counted)
    r3 = run_study(study)
    assert r3.status == "completed", r3.failures
    assert (counted["projector"].n, counted["probe"].n, counted["copy"].n) == (1, 0, 0)
    assert r3.stage_counts["project"] == {"computed": 1, "stored": 0}
    assert r3.stage_counts["cross_model"] == {"computed": 0, "stored": 3}  # same key
    assert (store / projector).is_file() and verify_root(st) == []
