"""The task data model: a :class:`TaskSpec` (name, type, label names and the verbalizer's
label words) and :class:`TaskData` (the spec plus ``train``/``validation``/``test`` splits as
pandas DataFrames with exactly the columns ``text_a`` (str), ``text_b`` (str or None) and
``label`` (int, 0..K-1)), and how a split is checked and normalised.

The loaders (task folders, built-in demo tasks, Hugging Face datasets, the paper's catalogue)
are in :mod:`prompt_core.data`, which re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from prompt_core.config import name_problem
from prompt_core.errors import InputError

SPLITS = ("train", "validation", "test")
COLUMNS = ("text_a", "text_b", "label")

# Label names in the data -> words a verbalizer scores (METHOD.md: negative/positive,
# no/neutral/yes for NLI, false/true for paraphrase). Unknown names are used as written,
# with underscores turned into spaces.
DEFAULT_LABEL_WORDS: dict[str, str] = {
    "entailment": "yes",
    "neutral": "maybe",
    "contradiction": "no",
    "not_entailment": "no",
    "equivalent": "true",
    "not_equivalent": "false",
    "duplicate": "true",
    "not_duplicate": "false",
    "sci/tech": "technology",
}


def plain_value(value: Any) -> Any:
    """A numpy scalar as the plain Python value (messages show 7, not np.int64(7))."""
    return value.item() if hasattr(value, "item") else value


class TaskDataError(InputError):
    """Raised when task data or its description is malformed; the message names the source."""


@dataclass(frozen=True)
class TaskSpec:
    """What a classification task is: its name, type and label vocabulary."""

    name: str
    type: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    description: str = ""

    @property
    def n_labels(self) -> int:
        return len(self.label_names)


@dataclass
class TaskData:
    """A task spec with its normalised splits (DataFrames: ``text_a``, ``text_b``, ``label``)."""

    spec: TaskSpec
    splits: dict[str, pd.DataFrame]
    source: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def split(self, name: str) -> pd.DataFrame:
        if name not in self.splits:
            raise TaskDataError(
                f"task {self.name!r} has no split {name!r} (has {list(self.splits)})"
            )
        return self.splits[name]

    @property
    def fingerprint(self) -> str:
        """sha256 over the spec and every row: changes whenever the data or verbalizer does."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(
                json.dumps(
                    {
                        "type": self.spec.type,
                        "label_names": self.spec.label_names,
                        "label_words": self.spec.label_words,
                    },
                    sort_keys=True,
                ).encode()
            )
            for s in SPLITS:
                df = self.splits.get(s)
                if df is None:
                    continue
                h.update(s.encode())
                hashed = pd.util.hash_pandas_object(df[list(COLUMNS)], index=False)
                h.update(hashed.values.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.spec.type,
            "labels": list(self.spec.label_names),
            "label_words": list(self.spec.label_words),
            "fingerprint": self.fingerprint,
            **{f"n_{s}": len(df) for s, df in self.splits.items()},
        }


def default_label_words(label_names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(DEFAULT_LABEL_WORDS.get(n, n.replace("_", " ")) for n in label_names)


def make_spec(
    name: str,
    type: str,
    label_names: list[str] | tuple[str, ...],
    label_words: list[str] | tuple[str, ...] | None = None,
    description: str = "",
    source: str = "",
) -> TaskSpec:
    """Validate and build a :class:`TaskSpec`; ``label_words`` default from the label names."""
    where = f" ({source})" if source else ""
    if not name or not isinstance(name, str):
        raise TaskDataError(f"task name must be a non-empty string{where}")
    if problem := name_problem(name):
        raise TaskDataError(f"task name {name!r}{where} {problem}; set `name:` in the study")
    for field_name, names in (("label_names", label_names), ("label_words", label_words)):
        if names is not None and (isinstance(names, str) or not all(
                isinstance(n, str) for n in names)):
            raise TaskDataError(f"task {name!r}{where}: {field_name} must be a list of strings, "
                                f"got {names!r}")
    if not label_names or len(label_names) < 2:
        raise TaskDataError(
            f"task {name!r}{where}: needs at least 2 label_names, got {label_names}"
        )
    words = tuple(label_words) if label_words else default_label_words(label_names)
    if len(words) != len(label_names):
        raise TaskDataError(
            f"task {name!r}{where}: {len(words)} label_words for {len(label_names)} label_names"
        )
    if len(set(words)) != len(words):
        raise TaskDataError(f"task {name!r}{where}: label_words must be distinct, got {words}")
    return TaskSpec(name, type or "unknown", tuple(label_names), words, description)


def normalise_split(df: pd.DataFrame, spec: TaskSpec, split: str, source: str) -> pd.DataFrame:
    """Check columns, types and label range; return a clean frame with exactly ``COLUMNS``."""
    where = f"task {spec.name!r} split {split!r} ({source})"
    missing = [c for c in ("text_a", "label") if c not in df.columns]
    if missing:
        raise TaskDataError(f"{where}: missing column(s) {missing}; has {list(df.columns)}")
    if len(df) == 0:
        raise TaskDataError(f"{where}: no rows")
    text_b = df["text_b"] if "text_b" in df.columns else pd.Series([None] * len(df))
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = labels.isna() | (labels % 1 != 0) | (labels < 0) | (labels >= spec.n_labels)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise TaskDataError(
            f"{where}: {int(bad.sum())} label(s) outside 0..{spec.n_labels - 1}; "
            f"first at row {i}: {plain_value(df['label'].iloc[i])!r}"
        )
    text_a = df["text_a"]
    empty = text_a.isna() | (text_a.astype(str).str.strip() == "")
    if empty.any():
        i = int(empty.to_numpy().nonzero()[0][0])
        raise TaskDataError(f"{where}: {int(empty.sum())} empty text_a value(s); first at row {i}")
    text_b = text_b.reset_index(drop=True)
    # Missing text_b is None whatever the reader used (None, NaN, pd.NA from string dtypes), and
    # the column stays object dtype: pandas would turn None into NaN in a str column.
    text_b = pd.Series(
        [None if (pd.api.types.is_scalar(v) and pd.isna(v)) else str(v) for v in text_b],
        dtype=object,
    )
    return pd.DataFrame(
        {
            "text_a": text_a.astype(str).reset_index(drop=True),
            "text_b": text_b,
            "label": labels.astype("int64").reset_index(drop=True),
        }
    )
