"""prompt_core.data: task folders, validation errors, fingerprints, built-ins, HF sources."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from prompt_core import data
from prompt_core.data import (
    COLUMNS,
    PAPER_TASKS,
    SPLITS,
    HFTaskSource,
    TaskDataError,
    builtin_task_names,
    default_label_words,
    load_builtin_task,
    load_hf_task,
    load_task_folder,
    make_spec,
    task_from_hf_dataset,
)
from tests.core_helpers import write_task_folder

# --- task folders --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_load_task_folder_roundtrip(tmp_path, fmt):
    folder = write_task_folder(tmp_path / "toy", fmt=fmt)
    td = load_task_folder(folder)
    assert td.name == "toy"
    assert td.spec.type == "sentiment"
    assert td.spec.label_names == ("negative", "positive")
    assert td.spec.label_words == ("negative", "positive")
    assert td.spec.n_labels == 2
    assert set(td.splits) == set(SPLITS)
    for df in td.splits.values():
        assert list(df.columns) == list(COLUMNS)
        assert str(df["label"].dtype) == "int64"
    train = td.split("train")
    assert train["text_a"].tolist() == ["good", "bad", "fine", "awful"]
    # missing text_b is None (not NaN, not the string '<NA>' or 'None'), present text_b is str
    assert train["text_b"].tolist() == [None, "x", None, "y"]
    assert train["label"].tolist() == [1, 0, 1, 0]
    # a split file without a text_b column gets text_b None throughout
    assert td.split("validation")["text_b"].tolist() == [None, None]
    assert td.split("test")["text_b"].tolist() == ["a", "b", "c"]
    s = td.summary()
    assert (s["n_train"], s["n_validation"], s["n_test"]) == (4, 2, 3)
    assert s["fingerprint"] == td.fingerprint
    with pytest.raises(TaskDataError, match="no split 'dev'"):
        td.split("dev")


def test_load_task_folder_name_override_and_label_words(tmp_path):
    meta = {"name": "nli-toy", "type": "nli",
            "label_names": ["entailment", "neutral", "contradiction"]}
    frames = {s: pd.DataFrame({"text_a": ["p1", "p2", "p3"], "text_b": ["h1", "h2", "h3"],
                               "label": [0, 1, 2]}) for s in SPLITS}
    td = load_task_folder(write_task_folder(tmp_path / "t", meta, frames), name="renamed")
    assert td.name == "renamed"
    assert td.spec.label_words == ("yes", "maybe", "no")
    meta["label_words"] = ["true", "unknown", "false"]
    td = load_task_folder(write_task_folder(tmp_path / "t2", meta, frames))
    assert td.spec.label_words == ("true", "unknown", "false")


def test_default_label_words():
    assert default_label_words(["entailment", "neutral", "contradiction"]) == ("yes", "maybe", "no")
    assert default_label_words(["entailment", "not_entailment"]) == ("yes", "no")
    assert default_label_words(["not_duplicate", "duplicate"]) == ("false", "true")
    assert default_label_words(["world", "sports", "business", "sci/tech"]) == (
        "world", "sports", "business", "technology")
    # unknown names are used as written, underscores become spaces
    assert default_label_words(["very_negative", "positive"]) == ("very negative", "positive")


def test_make_spec_errors():
    with pytest.raises(TaskDataError, match="at least 2 label_names"):
        make_spec("t", "x", ["only"])
    with pytest.raises(TaskDataError, match="1 label_words for 2 label_names"):
        make_spec("t", "x", ["a", "b"], ["w"])
    with pytest.raises(TaskDataError, match="distinct"):
        make_spec("t", "x", ["a", "b"], ["w", "w"])
    with pytest.raises(TaskDataError, match="non-empty string"):
        make_spec("", "x", ["a", "b"])
    assert make_spec("t", "", ["a", "b"]).type == "unknown"


def test_folder_errors_missing_folder_and_task_json(tmp_path):
    with pytest.raises(TaskDataError, match="does not exist") as e:
        load_task_folder(tmp_path / "nope")
    assert "nope" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskDataError, match="task.json is missing"):
        load_task_folder(tmp_path / "empty")


def test_folder_errors_bad_json_and_missing_field(tmp_path):
    folder = write_task_folder(tmp_path / "t")
    (folder / "task.json").write_text("{name: oops")
    with pytest.raises(TaskDataError, match="not valid JSON") as e:
        load_task_folder(folder)
    assert "task.json" in str(e.value)
    (folder / "task.json").write_text(json.dumps({"name": "t"}))
    with pytest.raises(TaskDataError, match="missing field 'label_names'"):
        load_task_folder(folder)


def test_folder_errors_missing_split_file(tmp_path):
    folder = write_task_folder(tmp_path / "t")
    (folder / "test.parquet").unlink()
    with pytest.raises(TaskDataError, match="no test.parquet or test.jsonl"):
        load_task_folder(folder)


def _frames(train: pd.DataFrame) -> dict[str, pd.DataFrame]:
    ok = pd.DataFrame({"text_a": ["a", "b"], "label": [0, 1]})
    return {"train": train, "validation": ok, "test": ok}


def test_folder_error_label_out_of_range(tmp_path):
    train = pd.DataFrame({"text_a": ["a", "b", "c"], "label": [0, 2, 1]})
    folder = write_task_folder(tmp_path / "t", frames=_frames(train))
    with pytest.raises(TaskDataError) as e:
        load_task_folder(folder)
    msg = str(e.value)
    assert "split 'train'" in msg and "outside 0..1" in msg and "row 1" in msg
    assert str(folder) in msg
    train = pd.DataFrame({"text_a": ["a", "b"], "label": [0, -1]})
    with pytest.raises(TaskDataError, match="outside 0..1"):
        load_task_folder(write_task_folder(tmp_path / "t2", frames=_frames(train)))
    train = pd.DataFrame({"text_a": ["a", "b"], "label": [0.0, 0.5]})
    with pytest.raises(TaskDataError, match="outside 0..1"):
        load_task_folder(write_task_folder(tmp_path / "t3", frames=_frames(train)))


def test_folder_error_missing_column(tmp_path):
    train = pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]})
    folder = write_task_folder(tmp_path / "t", frames=_frames(train))
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['text_a'\]") as e:
        load_task_folder(folder)
    assert "sentence" in str(e.value)  # names the columns it does have
    train = pd.DataFrame({"text_a": ["a", "b"]})
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['label'\]"):
        load_task_folder(write_task_folder(tmp_path / "t2", frames=_frames(train)))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("bad", ["", "   ", None])
def test_folder_error_empty_text_a(tmp_path, fmt, bad):
    train = pd.DataFrame({"text_a": ["fine", bad, "ok"], "label": [0, 1, 0]})
    folder = write_task_folder(tmp_path / "t", frames=_frames(train), fmt=fmt)
    with pytest.raises(TaskDataError, match="1 empty text_a value.*row 1"):
        load_task_folder(folder)


def test_folder_error_no_rows(tmp_path):
    train = pd.DataFrame({"text_a": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)})
    with pytest.raises(TaskDataError, match="no rows"):
        load_task_folder(write_task_folder(tmp_path / "t", frames=_frames(train)))


def test_fingerprint_stable_and_sensitive(tmp_path):
    folder = write_task_folder(tmp_path / "t")
    fp = load_task_folder(folder).fingerprint
    assert len(fp) == 16
    assert load_task_folder(folder).fingerprint == fp  # stable across loads
    # the same rows as jsonl give the same fingerprint
    assert load_task_folder(write_task_folder(tmp_path / "j", fmt="jsonl")).fingerprint == fp

    df = pd.read_parquet(folder / "test.parquet")
    df.loc[2, "label"] = 0  # one label changes
    df.to_parquet(folder / "test.parquet", index=False)
    assert load_task_folder(folder).fingerprint != fp

    # the verbalizer is part of it too
    folder2 = write_task_folder(tmp_path / "t2")
    meta = json.loads((folder2 / "task.json").read_text())
    meta["label_words"] = ["bad", "good"]
    (folder2 / "task.json").write_text(json.dumps(meta))
    assert load_task_folder(folder2).fingerprint != fp


@pytest.mark.shared_data
def test_real_shared_folder_mrpc(shared_data):
    td = load_task_folder(shared_data / "mrpc")
    assert td.name == "mrpc" and td.spec.type == "paraphrase"
    assert td.spec.label_names == ("not_equivalent", "equivalent")
    for s in SPLITS:
        df = td.split(s)
        assert len(df) > 100
        assert set(df["label"].unique()) == {0, 1}
        assert df["text_b"].map(lambda v: isinstance(v, str) and v.strip() != "").all()
    # a single-text task: text_b is None, never the string '<NA>'
    sst2 = load_task_folder(shared_data / "sst2")
    assert sst2.split("train")["text_b"].isna().all()
    assert sst2.split("train")["text_b"].map(lambda v: v is None).all()


# --- built-in tasks ------------------------------------------------------------------------


def test_builtin_tasks_catalogue():
    names = builtin_task_names()
    assert len(names) >= 6, f"expected >= 6 built-in demo tasks in {data.BUILTIN_DIR}, got {names}"
    types = set()
    for n in names:
        td = load_builtin_task(n)
        assert td.name == n
        assert td.source == f"builtin:{n}"
        types.add(td.spec.type)
        n_rows = sum(len(td.split(s)) for s in SPLITS)
        assert n_rows >= 150, f"built-in task {n} has only {n_rows} labelled rows"
        for s in SPLITS:
            assert td.split(s)["label"].between(0, td.spec.n_labels - 1).all()
    assert len(types) >= 3, f"built-in tasks span only the types {types}"


def test_unknown_builtin_task():
    with pytest.raises(TaskDataError, match="no built-in task 'no-such-task'"):
        load_builtin_task("no-such-task")


# --- Hugging Face sources ------------------------------------------------------------------


def _dataset_dict():
    import datasets

    def ds(a, b, lab):
        return datasets.Dataset.from_dict({"premise": a, "hypothesis": b, "gold": lab,
                                           "extra": list(range(len(a)))})

    return datasets.DatasetDict({
        "train": ds(["p1", "p2", "p3", "p4"], ["h1", None, "h3", "h4"], [0, 2, -1, 1]),
        "validation": ds(["v1", "v2"], ["w1", "w2"], [2, -1]),
        "test": ds(["t1", "t2", "t3"], ["u1", "u2", "u3"], [1, 0, 2]),
    })


NLI_SRC = HFTaskSource("local/nli", None, "nli", "premise", "hypothesis", "gold",
                       ("entailment", "neutral", "contradiction"))


def test_task_from_hf_dataset_basic():
    td = task_from_hf_dataset(_dataset_dict(), "toy_nli", NLI_SRC)
    assert td.name == "toy_nli" and td.spec.type == "nli"
    assert td.spec.label_words == ("yes", "maybe", "no")
    assert td.source == "hf:local/nli"
    train = td.split("train")
    # label -1 rows (no gold label) are dropped
    assert train["text_a"].tolist() == ["p1", "p2", "p4"]
    assert train["text_b"].tolist() == ["h1", None, "h4"]
    assert train["label"].tolist() == [0, 2, 1]
    assert td.split("validation")["label"].tolist() == [2]
    assert len(td.split("test")) == 3
    assert list(train.columns) == list(COLUMNS)


def test_task_from_hf_dataset_label_map_and_max_rows():
    src = HFTaskSource("local/nli", None, "nli", "premise", None, "gold",
                       ("entailment", "neutral", "contradiction"),
                       label_map=((0, 2), (1, 1), (2, 0)))
    td = task_from_hf_dataset(_dataset_dict(), "mapped", src, max_rows={"test": 2}, seed=0)
    assert td.split("train")["label"].tolist() == [2, 0, 1]
    assert td.split("train")["text_b"].tolist() == [None, None, None]
    test = td.split("test")
    assert len(test) == 2
    mapping = {"t1": 1, "t2": 2, "t3": 0}
    assert all(mapping[a] == lab for a, lab in zip(test["text_a"], test["label"], strict=True))
    # an unmapped label value is an error, not a silent NaN
    bad = HFTaskSource("local/nli", None, "nli", "premise", None, "gold",
                       ("entailment", "neutral", "contradiction"), label_map=((0, 0), (1, 1)))
    with pytest.raises(TaskDataError, match="outside 0..2"):
        task_from_hf_dataset(_dataset_dict(), "bad", bad)


def test_task_from_hf_dataset_errors():
    src = HFTaskSource("local/nli", None, "nli", "premise", "nope", "gold",
                       ("entailment", "neutral", "contradiction"))
    with pytest.raises(TaskDataError, match=r"no column\(s\) \['nope'\]"):
        task_from_hf_dataset(_dataset_dict(), "t", src)
    src = HFTaskSource("local/nli", None, "nli", "premise", None, "gold",
                       ("entailment", "neutral", "contradiction"),
                       splits=(("train", "train"), ("validation", "dev"), ("test", "test")))
    with pytest.raises(TaskDataError, match="no split 'dev'"):
        task_from_hf_dataset(_dataset_dict(), "t", src)


def test_task_from_hf_dataset_test_split_is_not_the_dev_split():
    """When the dataset's validation split serves as our test split (GLUE), the checkpoint-picking
    validation split is carved from train instead, disjoint and deterministic."""
    import datasets

    n = 50
    dsd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"s": [f"train {i}" for i in range(n)],
                                             "label": [i % 2 for i in range(n)]}),
        "validation": datasets.Dataset.from_dict({"s": ["dev a", "dev b"], "label": [0, 1]}),
    })
    src = HFTaskSource("local/glue-like", None, "sentiment", "s", None, "label",
                       ("negative", "positive"),
                       splits=(("train", "train"), ("validation", "validation"),
                               ("test", "validation")))
    td = task_from_hf_dataset(dsd, "g", src)
    assert td.split("test")["text_a"].tolist() == ["dev a", "dev b"]
    val, train = td.split("validation"), td.split("train")
    assert len(val) == 5 and len(train) == 45
    assert set(val["text_a"]).isdisjoint(train["text_a"])
    assert set(val["text_a"]) | set(train["text_a"]) == {f"train {i}" for i in range(n)}
    assert not set(val["text_a"]) & set(td.split("test")["text_a"])
    again = task_from_hf_dataset(dsd, "g", src)
    assert again.fingerprint == td.fingerprint
    # every catalogue task whose test comes from its validation split gets this treatment
    glue_like = [k for k, s in PAPER_TASKS.items() if dict(s.splits)["validation"]
                 == dict(s.splits)["test"]]
    assert {"sst2", "mrpc", "qnli", "qqp", "imdb"} <= set(glue_like)


def test_load_hf_task_parquet_builder(tmp_path, monkeypatch):
    """The real datasets.load_dataset path, offline, on local parquet files."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    files = {}
    for split, rows in {
        "train": (["good film", "bad film", "no label", "great"], [1, 0, -1, 1]),
        "validation": (["nice", "poor"], [1, 0]),
        "test": (["fine", "awful", "ok"], [1, 0, 1]),
    }.items():
        p = tmp_path / f"{split}.parquet"
        pd.DataFrame({"sentence": rows[0], "lab": rows[1]}).to_parquet(p, index=False)
        files[split] = str(p)
    src = HFTaskSource("parquet", None, "sentiment", "sentence", None, "lab",
                       ("negative", "positive"), ("bad", "good"))
    td = load_hf_task("local_parquet", src, data_files=files, max_rows={"train": 2})
    assert td.spec.label_words == ("bad", "good")
    assert td.source == "hf:parquet"
    assert len(td.split("train")) == 2  # -1 dropped, then capped
    assert td.split("train")["text_a"].isin(["good film", "bad film", "great"]).all()
    assert td.split("test")["text_a"].tolist() == ["fine", "awful", "ok"]
    assert td.split("test")["text_b"].tolist() == [None, None, None]

    with pytest.raises(TaskDataError, match=r"no column\(s\) \['text'\]"):
        load_hf_task("x", HFTaskSource("parquet", None, "sentiment", "text", None, "lab",
                                       ("negative", "positive")), data_files=files)
    missing = {**files, "test": str(tmp_path / "absent.parquet")}
    with pytest.raises(TaskDataError, match="cannot load HF dataset 'parquet'"):
        load_hf_task("x", src, data_files=missing)


# --- the paper's catalogue -----------------------------------------------------------------

PAPER_NAMES = {
    "sst2", "imdb", "laptop", "restaurant", "movie_rationales", "tweeteval_sentiment",
    "tweeteval_emotion", "mnli", "qnli", "snli", "ethics_deontology", "ethics_justice", "qqp",
    "mrpc",
}


def test_paper_tasks_catalogue():
    assert set(PAPER_TASKS) == PAPER_NAMES
    for name, src in PAPER_TASKS.items():
        assert src.label_words is not None, name
        assert len(src.label_words) == len(src.label_names), name
        assert len(set(src.label_words)) == len(src.label_words), name
        assert [ours for ours, _ in src.splits] == list(SPLITS), name
        make_spec(name, src.task_type, src.label_names, src.label_words)  # valid spec
    types = {s.task_type for s in PAPER_TASKS.values()}
    assert {"sentiment", "nli", "paraphrase"} <= types
    assert PAPER_TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert PAPER_TASKS["mrpc"].text_b == "sentence2"


@pytest.mark.shared_data
def test_shipped_demo_tasks_are_exactly_what_the_sampler_writes(tmp_path, shared_data):
    """The sampler lives in tests/, the package ships its output: the two must agree."""
    from prompt_core.data import BUILTIN_DIR as DEMO_DIR
    from tests.demo_data.sample_demo_tasks import main

    main(shared_data, tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(DEMO_DIR) for p in DEMO_DIR.rglob("*") if p.is_file())
    assert written == shipped and len(written) == 6 * 4 + 1  # + NOTICE.md
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (DEMO_DIR / rel).read_bytes(), rel


def test_shipped_demo_tasks_are_real_data_with_licence_and_disjoint_splits():
    """Each demo task names its source and licence, and no text pair is in two splits."""
    from prompt_core.data import BUILTIN_DIR as DEMO_DIR

    names = builtin_task_names()
    assert names == sorted(["tweet_sentiment", "tweet_polarity", "tweet_emotion", "ag_news",
                            "news_business_tech", "qnli"])
    assert (DEMO_DIR / "NOTICE.md").is_file()
    texts = {}
    for name in names:
        meta = json.loads((DEMO_DIR / name / "task.json").read_text(encoding="utf-8"))
        assert meta["licence"] and meta["source"] and meta["citation"], name
        assert meta["source_repo"] and len(meta["source_commit"]) == 40, name
        td = load_builtin_task(name)
        pairs = {s: set(zip(df["text_a"], df["text_b"], strict=True))
                 for s, df in td.splits.items()}
        assert len(pairs["train"]) == len(td.split("train")), name
        assert not pairs["train"] & pairs["test"], name
        assert not pairs["train"] & pairs["validation"], name
        assert not pairs["validation"] & pairs["test"], name
        texts[name] = set().union(*pairs.values())
    # a derived task shares no text with the task drawn from the same source (no leakage)
    for derived, parent in (("tweet_polarity", "tweet_sentiment"),
                            ("news_business_tech", "ag_news")):
        meta = json.loads((DEMO_DIR / derived / "task.json").read_text(encoding="utf-8"))
        assert parent in meta["derivation"], derived
        assert not texts[derived] & texts[parent], (derived, parent)
    # the AG News samples say they are for non-commercial research use only
    notice = (DEMO_DIR / "NOTICE.md").read_text(encoding="utf-8")
    assert "non-commercial research use only" in notice
    for name in ("ag_news", "news_business_tech"):
        meta = json.loads((DEMO_DIR / name / "task.json").read_text(encoding="utf-8"))
        assert meta["licence"].startswith("Non-commercial research use only"), name


# --- task names and task.json fields (issue 5, item 11) ------------------------------------


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["..", ".", "a/b", "has space", ""])
def test_task_json_unsafe_name_names_the_file_and_field(tmp_path, name):
    folder = write_task_folder(tmp_path / "t", meta={"name": name,
                                                     "label_names": ["negative", "positive"]})
    with pytest.raises(TaskDataError) as e:
        load_task_folder(folder)
    msg = str(e.value)
    assert str(folder / "task.json") in msg
    assert "field name:" in msg and repr(name) in msg


@pytest.mark.bad_input
@pytest.mark.parametrize(("field", "value", "problem"), [
    ("label_names", "negative positive", "Input should be a valid list"),
    ("label_words", "no yes", "Input should be a valid list"),
    ("label_names", ["negative", 1], "Input should be a valid string"),
    ("name", 7, "Input should be a valid string (got 7)"),
    ("type", ["x"], "Input should be a valid string"),
])
def test_task_json_field_types_name_the_file_and_field(tmp_path, field, value, problem):
    meta = {"name": "toy", "label_names": ["negative", "positive"], field: value}
    folder = write_task_folder(tmp_path / "t", meta=meta)
    with pytest.raises(TaskDataError) as e:
        load_task_folder(folder)
    msg = str(e.value)
    assert msg.startswith(f"{folder / 'task.json'}: field {field}")
    assert problem in msg


@pytest.mark.bad_input
def test_task_json_must_be_an_object(tmp_path):
    folder = write_task_folder(tmp_path / "t")
    (folder / "task.json").write_text('["toy"]')
    with pytest.raises(TaskDataError, match="task.json: expected a JSON object, got list"):
        load_task_folder(folder)


def test_task_json_extra_fields_are_ignored(tmp_path):
    meta = {"name": "toy.v2", "label_names": ["negative", "positive"], "licence": "MIT",
            "rows": {"train": 4}}
    assert load_task_folder(write_task_folder(tmp_path / "t", meta=meta)).name == "toy.v2"


@pytest.mark.bad_input
def test_make_spec_refuses_unsafe_names_and_string_label_names():
    for bad in ("..", "a/b", "."):
        with pytest.raises(TaskDataError, match=r"set `name:` in the study") as e:
            make_spec(bad, "x", ["a", "b"], source="hf:org/ds")
        assert repr(bad) in str(e.value) and "hf:org/ds" in str(e.value)
    with pytest.raises(TaskDataError, match="label_names must be a list of strings, got 'ab'"):
        make_spec("t", "x", "ab")
    with pytest.raises(TaskDataError, match="label_words must be a list of strings, got 'xy'"):
        make_spec("t", "x", ["a", "b"], "xy")


@pytest.mark.bad_input
def test_hf_task_name_with_a_slash_is_refused():
    import datasets

    dsd = {s: datasets.Dataset.from_dict({"t": ["a", "b"], "y": [0, 1]}) for s in SPLITS}
    src = HFTaskSource("org/ds", None, "sentiment", "t", None, "y", ("neg", "pos"))
    with pytest.raises(TaskDataError, match=r"task name 'org/ds' \(org/ds\) may only use"):
        task_from_hf_dataset(dsd, "org/ds", src)
