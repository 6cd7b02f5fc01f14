"""No choice the pipeline makes reads a test label (METHOD.md; issue "method fidelity").

Best checkpoint and early stopping (validation), TPT's top-k sources (validation rankings),
projector training (train), the recommender's probe (train) and the neuron-masking ablation
(validation by default) must never touch the test split: only the final scoring of the
cross-task and cross-model matrices may. One study runs every stage on tiny models while every
split read is recorded with the call stack that made it; each test-split read must come from a
final-scoring unit."""

from __future__ import annotations

import traceback

import pytest

from flows.transfer_matrix import run_study
from prompt_core import data as data_mod
from prompt_core.config import parse_study
from tests.flow_helpers import study_dict

# the Prefect units whose job is the final, reported score on the test split
FINAL_SCORING = {"evaluate_target_unit", "evaluate_cross_model_unit"}


@pytest.fixture
def split_reads(monkeypatch):
    """Every ``TaskData.split`` call as (split name, names of the functions on the stack)."""
    reads: list[tuple[str, set[str]]] = []
    original = data_mod.TaskData.split

    def recording(self, name):
        reads.append((name, {f.name for f in traceback.extract_stack()}))
        return original(self, name)

    monkeypatch.setattr(data_mod.TaskData, "split", recording)
    return reads


def test_only_final_scoring_reads_the_test_split(prefect_harness, tiny_models, tasks_root,
                                                 tmp_path, split_reads):
    tiny = tiny_models["encoder"]
    d = study_dict(tasks_root, ["pos_a", "pos_b", "pair_c"], str(tmp_path / "store"), tiny)
    d["models"].append({"kind": "mlm", "name": "tiny_b", "model_id": tiny_models["mlm"]})
    d["stages"] = ["cross_task", "cross_model", "tpt", "indicators"]
    d["training"]["patience"] = 1  # early stopping on, so it too is watched
    d["cross_model"] = {"train_tasks": ["pos_a", "pair_c"],
                        "pairs": [{"source": "tiny", "target": "tiny_b"}],
                        "projector": {"hidden": 8, "steps": 2, "batch_size": 8,
                                      "max_length": 64}}
    d["tpt"] = {"models": ["tiny"], "targets": ["pos_b"], "top_k": 1, "steps": 4,
                "eval_every": 2, "rank_max_examples": 8}
    d["indicators"] = {"models": ["tiny"], "window": 1, "ablation_fractions": [0.5],
                       "ablation_max_examples": 8, "probe_examples": 4}
    run_study(parse_study(d))

    test_reads = [stack for name, stack in split_reads if name == "test"]
    assert test_reads, "the matrices were scored on the test split (the recording works)"
    bad = [sorted(stack & {"train_prompt", "rank_tpt_sources_unit", "tpt_unit",
                           "train_projector_unit", "ablation_unit", "probe_unit",
                           "indicators_unit"}) or "unknown caller"
           for stack in test_reads if not stack & FINAL_SCORING]
    assert not bad, f"the test split was read outside final scoring: {bad}"
    # and the choices did run, on other splits: TPT's ranking and the trainings on validation
    validation = [stack for name, stack in split_reads if name == "validation"]
    assert any("rank_tpt_sources_unit" in s for s in validation)
    assert any("train_prompt" in s for s in validation)
