"""prompt_core.config: study files, their error messages, TrainConfig, load_nlp_task."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from pydantic import ValidationError

from prompt_core.backbones import MINILM_ID
from prompt_core.config import (
    ModelConfig,
    StudyFileError,
    TaskConfig,
    TrainConfig,
    load_nlp_task,
    load_study,
    parse_study,
    stable_hash,
)
from prompt_core.data import SPLITS, TaskDataError, builtin_task_names, load_builtin_task
from tests.core_helpers import write_task_folder

MINIMAL = {"name": "s1", "models": [{"kind": "encoder"}], "tasks": [{"path": "/abs/task"}]}


def test_parse_minimal_study_defaults():
    study = parse_study(MINIMAL)
    (m,) = study.models
    assert m.kind == "encoder"
    assert m.model_id == MINILM_ID
    assert m.name == "minilm"
    assert study.seeds == [0]
    assert study.training.n_tokens == 20 and study.training.init == "random"
    assert study.evaluation.split == "test"
    assert study.tasks[0].path == "/abs/task"
    assert study.tasks[0].label() == "task"
    # the learning rate falls back model -> training -> backbone kind
    assert m.learning_rate(study.training) == pytest.approx(3e-2)
    assert m.learning_rate(TrainConfig(lr=1e-3)) == pytest.approx(1e-3)
    assert ModelConfig(kind="encoder", lr=5e-4).learning_rate(TrainConfig(lr=1e-3)) == 5e-4


def test_model_name_from_model_id():
    m = ModelConfig(kind="mlm", model_id="/models/my tiny/bert-mini/")
    assert m.name == "bert-mini"
    assert ModelConfig(kind="mlm").name == "roberta-base"
    assert ModelConfig(kind="mlm", model_id="org/some+model").name == "some-model"
    assert m.identity() == {"kind": "mlm", "model_id": "/models/my tiny/bert-mini/",
                            "revision": None, "options": {}}


def test_load_study_resolves_relative_paths(tmp_path):
    sub = tmp_path / "studies"
    sub.mkdir()
    (sub / "s.yaml").write_text(
        "name: rel\nmodels:\n  - kind: encoder\ntasks:\n"
        "  - path: ../data/sst2\n  - path: /abs/other\n  - builtin: movie_sentiment\n"
    )
    study = load_study(sub / "s.yaml")
    assert study.tasks[0].path == str((tmp_path / "data" / "sst2").resolve())
    assert study.tasks[1].path == "/abs/other"
    assert study.tasks[2].builtin == "movie_sentiment" and study.tasks[2].path is None
    # parse_study without base_dir leaves relative paths alone
    assert parse_study({**MINIMAL, "tasks": [{"path": "rel/x"}]}).tasks[0].path == "rel/x"


def _problems(data) -> str:
    with pytest.raises(StudyFileError) as e:
        parse_study(data, source="my.yaml")
    return str(e.value)


def test_study_errors_list_problems_with_locations():
    msg = _problems({
        "name": "bad name!",
        "models": [{"kind": "gpt9"}],
        "tasks": [{"path": "a", "builtin": "b"}],
        "training": {"n_tokens": 4, "colour": "blue"},
    })
    assert msg.startswith("my.yaml: 4 problem(s) in the study file:")
    assert "  - name: study name 'bad name!' may only use letters" in msg
    assert "  - models.0.kind: unknown backbone kind 'gpt9'; known kinds: ['encoder', 'mlm']" in msg
    assert ("  - tasks.0: a task needs exactly one of path, builtin, catalogue, hf; "
            "got path, builtin") in msg
    assert "  - training.colour: Extra inputs are not permitted" in msg


def test_study_error_task_without_source_and_extra_top_level_key():
    msg = _problems({**MINIMAL, "tasks": [{"name": "t"}], "extra": 1})
    assert "tasks.0: a task needs exactly one of path, builtin, catalogue, hf; got none" in msg
    assert "  - extra: Extra inputs are not permitted" in msg


def test_study_error_duplicate_model_names_and_seeds():
    msg = _problems({**MINIMAL, "models": [{"kind": "encoder"}, {"kind": "encoder"}]})
    assert "model names must be unique; repeated: ['minilm']" in msg
    assert "(top level)" in msg
    two = [{"kind": "encoder"}, {"kind": "encoder", "name": "m2"}]
    ok = parse_study({**MINIMAL, "models": two})
    assert [m.name for m in ok.models] == ["minilm", "m2"]
    assert "seeds must be distinct" in _problems({**MINIMAL, "seeds": [1, 1]})


def test_study_error_missing_required_and_not_a_mapping():
    msg = _problems({"name": "x"})
    assert "  - models: Field required" in msg and "  - tasks: Field required" in msg
    with pytest.raises(StudyFileError, match="expected a mapping at the top level, got list"):
        parse_study([1, 2], source="my.yaml")


def test_load_study_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(StudyFileError, match="does not exist"):
        load_study(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\nmodels: {")
    with pytest.raises(StudyFileError, match="not valid YAML") as e:
        load_study(bad)
    assert str(bad) in str(e.value)
    bad.write_text("name: x\nmodels:\n  - kind: nope\ntasks:\n  - builtin: t\n")
    with pytest.raises(StudyFileError, match=r"models\.0\.kind: unknown backbone kind 'nope'") as e:
        load_study(bad)
    assert str(e.value).startswith(str(bad))


def test_train_config_validation():
    with pytest.raises(ValidationError, match="init: text needs init_text"):
        TrainConfig(init="text")
    assert TrainConfig(init="text", init_text="it was great").init_text == "it was great"
    with pytest.raises(ValidationError):
        TrainConfig(n_tokens=0)
    with pytest.raises(ValidationError):
        TrainConfig(init="prompt")
    with pytest.raises(ValidationError):
        TrainConfig(stepz=3)
    assert "init: text needs init_text" in _problems({**MINIMAL, "training": {"init": "text"}})


def test_stable_hash():
    a = {"b": [1, 2, {"x": None}], "a": "s"}
    h = stable_hash(a)
    assert h == stable_hash({"a": "s", "b": [1, 2, {"x": None}]})  # key order does not matter
    assert len(h) == 16 and int(h, 16) >= 0
    assert len(stable_hash(a, n=8)) == 8 and h.startswith(stable_hash(a, n=8))
    assert stable_hash({**a, "a": "t"}) != h
    # the scheme itself (cache keys depend on it): sha256 of the sorted-key JSON
    assert stable_hash({"k": 1, "a": [1]}) == hashlib.sha256(b'{"a": [1], "k": 1}').hexdigest()[:16]
    cfg = TrainConfig(steps=10)
    assert stable_hash(cfg.model_dump()) == stable_hash(TrainConfig(steps=10).model_dump())
    assert stable_hash(cfg.model_dump()) != stable_hash(TrainConfig(steps=11).model_dump())


# --- load_nlp_task -------------------------------------------------------------------------


def test_load_nlp_task_path_with_overrides(tmp_path):
    folder = write_task_folder(tmp_path / "toy")
    plain = load_nlp_task(TaskConfig(path=str(folder)))
    assert plain.name == "toy" and plain.spec.label_words == ("negative", "positive")
    td = load_nlp_task(TaskConfig(path=str(folder), name="renamed", type="opinion",
                                  label_words=["bad", "good"], max_train=2))
    assert td.name == "renamed" and td.spec.type == "opinion"
    assert td.spec.label_words == ("bad", "good")
    assert td.spec.label_names == ("negative", "positive")
    assert len(td.split("train")) == 2
    assert set(td.split("train")["text_a"]) <= {"good", "bad", "fine", "awful"}
    assert len(td.split("test")) == 3  # only train is capped
    assert td.fingerprint != plain.fingerprint
    with pytest.raises(TaskDataError, match="1 label_words for 2 label_names"):
        load_nlp_task(TaskConfig(path=str(folder), label_words=["only"]))


def test_load_nlp_task_builtin():
    names = builtin_task_names()
    assert names, "no built-in demo tasks in prompt_core/demo_tasks"
    name = names[0]
    td = load_nlp_task(TaskConfig(builtin=name, max_train=10))
    assert td.name == name and len(td.split("train")) == 10
    full = load_builtin_task(name)
    assert len(full.split("test")) == len(td.split("test"))
    with pytest.raises(TaskDataError, match="no built-in task"):
        load_nlp_task(TaskConfig(builtin="not-a-task"))


def test_load_nlp_task_unknown_catalogue_task():
    with pytest.raises(TaskDataError, match="no catalogue task 'nope'"):
        load_nlp_task(TaskConfig(catalogue="nope"))


def test_load_nlp_task_hf_parquet(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    files = {}
    for split, n in (("train", 12), ("dev", 4), ("test", 5)):
        p = tmp_path / f"{split}.parquet"
        pd.DataFrame({"q": [f"{split} q{i}" for i in range(n)],
                      "s": [f"{split} s{i}" for i in range(n)],
                      "y": [i % 2 for i in range(n)]}).to_parquet(p, index=False)
        files[split] = str(p)
    cfg = TaskConfig.model_validate({
        "hf": {"path": "parquet", "data_files": files, "text_a": "q", "text_b": "s", "label": "y",
               "label_names": ["entailment", "not_entailment"], "type": "nli",
               "splits": {"train": "train", "validation": "dev", "test": "test"}},
        "name": "qnli_local", "label_words": ["true", "false"], "max_train": 7,
    })
    assert cfg.label() == "qnli_local"
    td = load_nlp_task(cfg)
    assert td.name == "qnli_local" and td.spec.type == "nli"
    assert td.spec.label_words == ("true", "false")
    assert [len(td.split(s)) for s in SPLITS] == [7, 4, 5]
    assert td.split("validation")["text_a"].tolist() == [f"dev q{i}" for i in range(4)]
    assert td.split("test")["text_b"].tolist() == [f"test s{i}" for i in range(5)]
    # defaults: label words from the label names, name from the source
    cfg2 = TaskConfig.model_validate({"hf": {**cfg.hf.model_dump(), "type": "nli"}})
    td2 = load_nlp_task(cfg2)
    assert td2.name == "parquet" and td2.spec.label_words == ("yes", "no")
    assert len(td2.split("train")) == 12


def test_init_prompt_needs_a_file_and_resolves_from_the_study_folder(tmp_path):
    with pytest.raises(ValueError, match="init: prompt and init_prompt"):
        TrainConfig(init="prompt")
    with pytest.raises(ValueError, match="init: prompt and init_prompt"):
        TrainConfig(init_prompt="p.safetensors")
    f = tmp_path / "study.yaml"
    f.write_text("name: s\nmodels: [{kind: encoder}]\ntasks: [{builtin: movie_sentiment}]\n"
                 "training: {init: prompt, init_prompt: prompts/p.safetensors}\n")
    assert load_study(f).training.init_prompt == str(tmp_path / "prompts" / "p.safetensors")
