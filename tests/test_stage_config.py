"""The ``stages``, ``cross_model`` and ``tpt`` sections of a study file: defaults keep the
cross-task behaviour, and every inconsistent combination is refused with a message naming it."""

from __future__ import annotations

import pytest

from prompt_core.config import StudyFileError, TrainConfig, parse_study

BASE = {"name": "s", "models": [{"kind": "encoder"}, {"kind": "encoder", "name": "b"}],
        "tasks": [{"builtin": "tweet_sentiment"}, {"builtin": "qnli"}]}


def study(**extra):
    return parse_study({**BASE, **extra})


def test_defaults_keep_the_cross_task_stage_only():
    s = study()
    assert s.stages == ["cross_task"] and s.cross_model is None and s.tpt is None
    assert s.model_pairs() == []


def test_model_pairs_default_to_every_ordered_pair():
    s = study(stages=["cross_model"], cross_model={"train_tasks": ["tweet_sentiment"]})
    assert s.model_pairs() == [("minilm", "b"), ("b", "minilm")]
    assert s.cross_model.objectives == ["distance", "task"]
    assert s.cross_model.projector.hidden == 768  # the paper's


def test_tpt_budget_defaults_to_the_training_config():
    s = study(stages=["cross_task", "tpt"], tpt={"top_k": 2})
    assert s.tpt.train_config(s.training) == s.training
    assert study(stages=["tpt"], tpt={"top_k": 2}).tpt.rank_max_examples == 300  # validation
    s = study(stages=["tpt"], tpt={"sources": [{"task": "qnli"}], "steps": 7})
    assert s.tpt.train_config(s.training) == TrainConfig(steps=7)


@pytest.mark.parametrize("extra, message", [
    ({"stages": ["cross_model"]}, "stage 'cross_model' needs its options section"),
    ({"stages": ["tpt"]}, "stage 'tpt' needs its options section"),
    ({"stages": ["cross_task", "cross_task"]}, "stages repeat"),
    ({"stages": ["everything"]}, "stages.0"),
    ({"stages": ["tpt"], "tpt": {"top_k": 1, "score_at_step": 301}},
     "tpt.score_at_step 301 is beyond the 300 training steps"),
    ({"stages": ["tpt"], "tpt": {"top_k": 1, "steps": 10, "score_at_step": 11}},
     "tpt.score_at_step 11 is beyond the 10 training steps"),
    ({"stages": ["tpt"], "tpt": {"top_k": 1, "sources": [{"task": "x"}]}},
     "exactly one of sources"),
    ({"stages": ["tpt"], "tpt": {}}, "exactly one of sources"),
    ({"stages": ["tpt"], "tpt": {"sources": [{"task": "x", "model": "b"}]}},
     "add stage 'cross_model'"),
    ({"stages": ["tpt"], "tpt": {"sources": [{"task": "x"}], "models": ["nope"]}},
     "tpt: unknown model 'nope'"),
    ({"stages": ["cross_model"], "cross_model": {"train_tasks": []}}, "train_tasks"),
    ({"stages": ["cross_model"],
      "cross_model": {"train_tasks": ["a"], "pairs": [{"source": "b", "target": "zz"}]}},
     "unknown model 'zz'"),
    ({"stages": ["cross_model"],
      "cross_model": {"train_tasks": ["a"], "pairs": [{"source": "b", "target": "b"}]}},
     "'b' -> itself"),
    ({"stages": ["cross_model"],
      "cross_model": {"train_tasks": ["a"], "objectives": ["distance", "distance"]}},
     "objectives repeat"),
    ({"stages": ["cross_model"],
      "cross_model": {"train_tasks": ["a"], "projector": {"activation": "relu"}}},
     "cross_model.projector.activation"),
    ({"stages": ["cross_model", "tpt"],
      "cross_model": {"train_tasks": ["a"], "objectives": ["task"]},
      "tpt": {"sources": [{"task": "a", "model": "b"}]}},
     "tpt.projector_objective 'distance' is not among cross_model.objectives"),
    ({"stages": ["tpt"], "tpt": {"sources": [{"task": "a"}], "fraction": 1.5}},
     "tpt.fraction"),
])
def test_inconsistent_stage_options_are_refused(extra, message):
    with pytest.raises(StudyFileError) as e:
        study(**extra)
    assert message in str(e.value)


def test_cross_model_needs_two_models():
    with pytest.raises(StudyFileError, match="needs at least two models"):
        parse_study({**BASE, "models": [{"kind": "encoder"}], "stages": ["cross_model"],
                     "cross_model": {"train_tasks": ["tweet_sentiment"]}})


def test_relative_model_folder_resolves_from_the_study_file(tmp_path):
    s = parse_study({**BASE, "models": [{"kind": "encoder", "model_id": "../models/x"}]},
                    base_dir=tmp_path / "studies")
    assert s.models[0].model_id == str((tmp_path / "models" / "x").resolve())
    assert s.models[0].name == "x"
