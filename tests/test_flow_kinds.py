"""The seq2seq (T5) and causal (GPT) kinds run through the whole flow like the others: one
study with a tiny T5 and a tiny GPT-2 trains, evaluates, writes the tables, and a rerun
computes nothing."""

from __future__ import annotations

from flows.transfer_matrix import run_study
from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import read_table
from tests.flow_helpers import study_dict


def test_seq2seq_and_causal_kinds_in_one_study(prefect_harness, tasks_root, tmp_path, t5_dir,
                                                gpt2_dir):
    t5, gpt = t5_dir, gpt2_dir
    d = study_dict(tasks_root, ["pos_a", "pair_c"], str(tmp_path / "store"), t5)
    d["models"] = [{"kind": "seq2seq", "name": "t5", "model_id": t5},
                   {"kind": "causal", "name": "gpt", "model_id": gpt}]
    d["training"]["max_length"] = d["evaluation"]["max_length"] = 64  # GPT-2: 128 positions
    study = parse_study(d)

    r = run_study(study)
    assert (r.status, r.n_prompts_trained, r.n_cells_evaluated) == ("completed", 4, 16)
    cells = read_table(open_storage(str(tmp_path / "store")), "cross_task").to_pandas()
    # per model: 2 targets x (2 prompts + random + none) x 2 metrics, every score a probability
    assert cells.groupby("model").size().to_dict() == {"t5": 16, "gpt": 16}
    assert cells["score"].between(0, 1).all()
    prompts = read_table(open_storage(str(tmp_path / "store")), "prompts").to_pandas()
    kinds = set(zip(prompts["model"], prompts["backbone_kind"], strict=True))
    assert kinds == {("t5", "seq2seq"), ("gpt", "causal")}
    again = run_study(study)
    assert (again.n_prompts_trained, again.n_cells_evaluated) == (0, 0)
