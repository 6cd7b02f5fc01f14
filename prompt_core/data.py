"""NLP tasks: specs, loaders and the paper's catalogue.

Every loader returns a :class:`TaskData`: a :class:`TaskSpec` (name, type, label names and the
verbalizer's label words) plus ``train``/``validation``/``test`` splits as pandas DataFrames with
exactly the columns ``text_a`` (str), ``text_b`` (str or None) and ``label`` (int, 0..K-1).

Three sources:

* a task folder (``train/validation/test.parquet`` + ``task.json``), the format of
  ``shared/data``: :func:`load_task_folder`;
* a Hugging Face dataset by name/config (or local files through a builder such as ``parquet``)
  with a column and label-word mapping: :func:`load_hf_task`, or an already built
  ``datasets.DatasetDict``: :func:`task_from_hf_dataset`;
* the project's built-in demo tasks, shipped with the package: :func:`load_builtin_task`.

The task data model (:class:`TaskSpec`, :class:`TaskData`, :func:`normalise_split`) is in
:mod:`prompt_core.task_spec`, re-exported here. ``PAPER_TASKS`` catalogues the paper's
classification tasks as Hugging Face sources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prompt_core.config import TaskConfig, format_error_line, name_problem
from prompt_core.task_spec import (  # re-exported: the names other modules import from here
    COLUMNS,
    DEFAULT_LABEL_WORDS,
    SPLITS,
    TaskData,
    TaskDataError,
    TaskSpec,
    default_label_words,
    make_spec,
    normalise_split,
)

__all__ = [
    "BUILTIN_DIR", "COLUMNS", "DEFAULT_LABEL_WORDS", "PAPER_TASKS", "SPLITS", "HFTaskSource",
    "TaskData", "TaskDataError", "TaskJson", "TaskSpec", "builtin_task_names",
    "default_label_words", "load_builtin_task", "load_hf_task", "load_nlp_task",
    "load_task_folder", "make_spec", "normalise_split", "read_task_json",
    "task_from_hf_dataset", "task_from_parquet", "task_to_parquet"]

BUILTIN_DIR = Path(__file__).resolve().parent / "demo_tasks"


def _read_split_file(folder: Path, split: str) -> pd.DataFrame:
    for ext, reader in ((".parquet", pd.read_parquet), (".jsonl", _read_jsonl)):
        p = folder / f"{split}{ext}"
        if p.exists():
            try:
                return reader(p)
            except Exception as e:  # noqa: BLE001 - re-raised with the file named
                raise TaskDataError(f"cannot read {p}: {e}") from e
    raise TaskDataError(f"task folder {folder}: no {split}.parquet or {split}.jsonl")


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype={"text_a": str, "text_b": object})


class TaskJson(BaseModel):
    """The fields of a folder's ``task.json`` this package reads; others (provenance, notes)
    are allowed and ignored. Types are strict: a string is never read as a list."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = Field(description="task name: letters, digits, '_', '.', '-' (a path segment)")
    type: str = Field("unknown", description="task type (sentiment, nli, paraphrase...)")
    label_names: list[str] = Field(description="label names in label id order")
    label_words: list[str] | None = Field(
        None, description="verbalizer words, one per label; default from the label names"
    )
    description: str = Field("", description="free text")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if problem := name_problem(v):
            raise ValueError(f"task name {v!r} {problem}")
        return v


def read_task_json(meta_path: Path) -> TaskJson:
    """Parse and check ``task.json``; errors name the file and the field."""
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TaskDataError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise TaskDataError(f"{meta_path}: expected a JSON object, got {type(raw).__name__}")
    try:
        return TaskJson.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            if err["type"] == "missing":
                lines.append(f"missing field {err['loc'][0]!r}")
            else:
                lines.append(f"field {format_error_line(err)}")
        raise TaskDataError(f"{meta_path}: " + "; ".join(lines)) from None


def load_task_folder(path: str | Path, name: str | None = None) -> TaskData:
    """Load a task folder: ``task.json`` plus ``train/validation/test`` as .parquet or .jsonl."""
    folder = Path(path)
    if not folder.is_dir():
        raise TaskDataError(f"task folder {folder} does not exist or is not a directory")
    meta_path = folder / "task.json"
    if not meta_path.exists():
        raise TaskDataError(f"task folder {folder}: task.json is missing")
    meta = read_task_json(meta_path)
    spec = make_spec(
        name or meta.name,
        meta.type,
        meta.label_names,
        meta.label_words,
        meta.description,
        source=str(folder),
    )
    splits = {s: normalise_split(_read_split_file(folder, s), spec, s, str(folder)) for s in SPLITS}
    return TaskData(spec, splits, source=str(folder))


def builtin_task_names() -> list[str]:
    """Names of the demo tasks shipped with the package."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "task.json").exists())


def load_builtin_task(name: str) -> TaskData:
    """Load one of the built-in demo tasks by name (see :func:`builtin_task_names`)."""
    names = builtin_task_names()
    if name not in names:
        raise TaskDataError(f"no built-in task {name!r}; built-in tasks are {names}")
    data = load_task_folder(BUILTIN_DIR / name)
    data.source = f"builtin:{name}"
    return data


@dataclass(frozen=True)
class HFTaskSource:
    """Where and how to read a task from a Hugging Face dataset.

    ``splits`` maps our split names to the dataset's (e.g. ``test -> validation`` for GLUE, whose
    test labels are hidden). ``label_map`` maps dataset label values to our ids when they differ.
    """

    path: str
    name: str | None
    task_type: str
    text_a: str
    text_b: str | None
    label: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...] | None = None
    splits: tuple[tuple[str, str], ...] = (
        ("train", "train"),
        ("validation", "validation"),
        ("test", "test"),
    )
    label_map: tuple[tuple[Any, int], ...] | None = None


def task_from_hf_dataset(
    dataset_dict: Any,
    task_name: str,
    src: HFTaskSource,
    max_rows: dict[str, int] | None = None,
    seed: int = 0,
) -> TaskData:
    """Normalise a ``datasets.DatasetDict`` (or a dict of ``datasets.Dataset``) into TaskData."""
    spec = make_spec(task_name, src.task_type, src.label_names, src.label_words, source=src.path)
    lmap = dict(src.label_map) if src.label_map else None
    splits = {}
    for ours, theirs in src.splits:
        if theirs not in dataset_dict:
            raise TaskDataError(
                f"HF dataset {src.path}/{src.name}: no split {theirs!r} (has {list(dataset_dict)})"
            )
        ds = dataset_dict[theirs]
        cols = [c for c in (src.text_a, src.text_b, src.label) if c]
        absent = [c for c in cols if c not in ds.column_names]
        if absent:
            raise TaskDataError(
                f"HF dataset {src.path}/{src.name} split {theirs!r}: no column(s) {absent}; "
                f"has {ds.column_names}"
            )
        df = ds.select_columns(cols).to_pandas()
        df = df[df[src.label] != -1]  # HF convention: -1 = no gold label (e.g. SNLI)
        if max_rows and ours in max_rows and len(df) > max_rows[ours]:
            df = df.sample(n=max_rows[ours], random_state=seed)
        labels = df[src.label].map(lmap) if lmap else df[src.label]
        frame = pd.DataFrame(
            {
                "text_a": df[src.text_a],
                "text_b": df[src.text_b] if src.text_b else None,
                "label": labels,
            }
        )
        splits[ours] = normalise_split(frame, spec, ours, f"hf:{src.path}")
    val_from, test_from = dict(src.splits).get("validation"), dict(src.splits).get("test")
    if "train" in splits and val_from is not None and val_from == test_from:
        # The dataset split that serves as our test must not also pick the best checkpoint:
        # carve the validation split from train instead (disjoint, deterministic).
        train = splits["train"]
        if len(train) < 2:
            raise TaskDataError(f"task {task_name!r} (hf:{src.path}): too few train rows to carve "
                                "a validation split from")
        n_val = min(500, max(1, len(train) // 10))
        perm = train.sample(frac=1.0, random_state=seed).index
        splits["validation"] = train.loc[perm[:n_val]].reset_index(drop=True)
        splits["train"] = train.loc[perm[n_val:]].reset_index(drop=True)
    return TaskData(spec, splits, source=f"hf:{src.path}" + (f"/{src.name}" if src.name else ""))


def load_hf_task(
    task_name: str,
    src: HFTaskSource,
    data_files: dict[str, str] | str | None = None,
    revision: str | None = None,
    max_rows: dict[str, int] | None = None,
) -> TaskData:
    """Load a task with ``datasets.load_dataset`` (hub id, or a builder like ``parquet`` with
    ``data_files`` for local files) and normalise it."""
    import datasets

    try:
        dsd = datasets.load_dataset(src.path, src.name, data_files=data_files, revision=revision)
    except Exception as e:  # noqa: BLE001 - hub/network/file errors all surface here
        raise TaskDataError(
            f"cannot load HF dataset {src.path!r} (config {src.name!r}) for task {task_name!r}: "
            f"{type(e).__name__}: {e}"
        ) from e
    return task_from_hf_dataset(dsd, task_name, src, max_rows=max_rows)


def _glue(name, a, b, labels, words, task_type, test_from="validation"):
    return HFTaskSource(
        "nyu-mll/glue", name, task_type, a, b, "label", tuple(labels), tuple(words),
        splits=(("train", "train"), ("validation", "validation"), ("test", test_from)),
    )


# The paper's classification tasks (Su et al. 2022, Table 1) as Hugging Face sources. Where a
# dataset has no labelled test split, the validation split serves as test; prompt training then
# picks its checkpoint on a slice of train (task_from_hf_dataset carves it: up to 10%, <= 500).
PAPER_TASKS: dict[str, HFTaskSource] = {
    "sst2": _glue("sst2", "sentence", None, ["negative", "positive"],
                  ["negative", "positive"], "sentiment"),
    "imdb": HFTaskSource("stanfordnlp/imdb", None, "sentiment", "text", None, "label",
                         ("negative", "positive"), ("negative", "positive"),
                         splits=(("train", "train"), ("validation", "test"), ("test", "test"))),
    "laptop": HFTaskSource("jakartaresearch/semeval-absa", "laptop", "sentiment", "text", "aspect",
                           "label", ("negative", "neutral", "positive"),
                           ("negative", "neutral", "positive")),
    "restaurant": HFTaskSource("jakartaresearch/semeval-absa", "restaurant", "sentiment", "text",
                               "aspect", "label", ("negative", "neutral", "positive"),
                               ("negative", "neutral", "positive")),
    "movie_rationales": HFTaskSource("eraser-benchmark/movie_rationales", None, "sentiment",
                                     "review", None, "label", ("negative", "positive"),
                                     ("negative", "positive")),
    "tweeteval_sentiment": HFTaskSource("cardiffnlp/tweet_eval", "sentiment", "sentiment", "text",
                                        None, "label", ("negative", "neutral", "positive"),
                                        ("negative", "neutral", "positive")),
    "tweeteval_emotion": HFTaskSource("cardiffnlp/tweet_eval", "emotion", "emotion", "text", None,
                                      "label", ("anger", "joy", "optimism", "sadness"),
                                      ("anger", "joy", "optimism", "sadness")),
    "mnli": HFTaskSource("nyu-mll/glue", "mnli", "nli", "premise", "hypothesis", "label",
                         ("entailment", "neutral", "contradiction"), ("yes", "maybe", "no"),
                         splits=(("train", "train"), ("validation", "validation_matched"),
                                 ("test", "validation_mismatched"))),
    "qnli": _glue("qnli", "question", "sentence", ["entailment", "not_entailment"],
                  ["yes", "no"], "nli"),
    "snli": HFTaskSource("stanfordnlp/snli", None, "nli", "premise", "hypothesis", "label",
                         ("entailment", "neutral", "contradiction"), ("yes", "maybe", "no")),
    "ethics_deontology": HFTaskSource("hendrycks/ethics", "deontology", "ethics", "scenario",
                                      "excuse", "label", ("unreasonable", "reasonable"),
                                      ("no", "yes")),
    "ethics_justice": HFTaskSource("hendrycks/ethics", "justice", "ethics", "scenario", None,
                                   "label", ("unreasonable", "reasonable"), ("no", "yes")),
    "qqp": _glue("qqp", "question1", "question2", ["not_duplicate", "duplicate"],
                 ["false", "true"], "paraphrase"),
    "mrpc": _glue("mrpc", "sentence1", "sentence2", ["not_equivalent", "equivalent"],
                  ["false", "true"], "paraphrase"),
}


# --- one self-contained file per task (what a worker on another machine reads) ---------------

_SPEC_META_KEY = b"prompt_transfer.task_spec"


def task_to_parquet(td: TaskData) -> bytes:
    """All splits of ``td`` in one Parquet file (a ``split`` column) with the spec and the
    fingerprint in the file's metadata: :func:`task_from_parquet` gives back the same task."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = [td.splits[s].assign(split=s) for s in SPLITS if s in td.splits]
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False,
                                 schema=pa.schema([("text_a", pa.string()),
                                                   ("text_b", pa.string()),
                                                   ("label", pa.int64()),
                                                   ("split", pa.string())]))
    spec = {"name": td.spec.name, "type": td.spec.type, "label_names": td.spec.label_names,
            "label_words": td.spec.label_words, "description": td.spec.description,
            "fingerprint": td.fingerprint, "source": td.source}
    table = table.replace_schema_metadata({_SPEC_META_KEY: json.dumps(spec).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def task_from_parquet(data: bytes, source: str) -> TaskData:
    """The task written by :func:`task_to_parquet`; a file whose rows no longer hash to the
    fingerprint it was written with is refused (:class:`TaskDataError` naming ``source``)."""
    import io

    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
        spec = json.loads(table.schema.metadata[_SPEC_META_KEY])
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise TaskDataError(f"{source}: not a task data file ({type(e).__name__}: {e})") from e
    df = table.to_pandas()
    splits = {}
    for s in SPLITS:
        part = df[df["split"] == s].drop(columns="split").reset_index(drop=True)
        if len(part):
            part["text_b"] = pd.Series([None if v is None or v != v else v
                                        for v in part["text_b"]], dtype=object)
            splits[s] = part
    td = TaskData(TaskSpec(spec["name"], spec["type"], tuple(spec["label_names"]),
                           tuple(spec["label_words"]), spec["description"]),
                  splits, source=spec.get("source") or source)
    if td.fingerprint != spec["fingerprint"]:
        raise TaskDataError(f"{source}: task data does not match its fingerprint "
                            f"({td.fingerprint} != {spec['fingerprint']}): damaged")
    return td


# --- a study's task entry -------------------------------------------------------------------


def load_nlp_task(cfg: TaskConfig) -> TaskData:
    """Load the NLP task a study entry names (folder, built-in, catalogue or HF) as TaskData."""
    if cfg.path is not None:
        td = load_task_folder(cfg.path)
    elif cfg.builtin is not None:
        td = load_builtin_task(cfg.builtin)
    elif cfg.catalogue is not None:
        if cfg.catalogue not in PAPER_TASKS:
            raise TaskDataError(
                f"no catalogue task {cfg.catalogue!r}; known: {sorted(PAPER_TASKS)}"
            )
        max_rows = {"train": cfg.max_train} if cfg.max_train else None
        td = load_hf_task(cfg.catalogue, PAPER_TASKS[cfg.catalogue], max_rows=max_rows)
    else:
        h = cfg.hf
        src = HFTaskSource(
            h.path, h.name, h.type, h.text_a, h.text_b, h.label, tuple(h.label_names),
            splits=tuple(h.splits.items()),
        )
        max_rows = {"train": cfg.max_train} if cfg.max_train else None
        td = load_hf_task(cfg.label(), src, h.data_files, h.revision, max_rows=max_rows)
    if cfg.name or cfg.type or cfg.label_words:
        spec = make_spec(
            cfg.name or td.spec.name, cfg.type or td.spec.type, td.spec.label_names,
            cfg.label_words or td.spec.label_words, td.spec.description, td.source,
        )
        td = TaskData(spec, td.splits, td.source)
    if cfg.max_train and len(td.splits["train"]) > cfg.max_train:
        td = TaskData(td.spec, {**td.splits, "train": td.splits["train"].sample(
            n=cfg.max_train, random_state=0).reset_index(drop=True)}, td.source)
    return td
