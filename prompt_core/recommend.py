"""Which trained source prompt to start a new task from: source rankers and their
leave-one-task-out evaluation against the cross-task matrix.

Each task of a study in turn plays the NEW task (the target): every other task's prompt (same
model, same seed) is a candidate source, and a ranker scores the candidates (higher = better)
from what it may know about the target:

* ``probe`` (the recommender): the candidates' accuracy on a small sample of the target's
  TRAIN split (:func:`probe_scores`), i.e. cheap information from the new task's data;
* ``same_type``: 1 where the candidate's task type is the target's, else 0;
* ``random``: every candidate equal (the chance baseline: ties are broken uniformly);
* one ranker per indicator name (``es_cosine``, ``on``...): the indicator between the
  candidate's prompt and the target's own trained prompt. Baselines: they need the very prompt
  a new task does not have yet.

No ranker reads a score of the matrix: candidates and the target are described by task names,
types and prompt keys only. The truth (the candidates' cross-task accuracy on the target) is
used only by :func:`evaluate_rankings`, which scores each ranking by its EXPECTED hit@k and
regret under uniform random tie-breaking, computed exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch

from prompt_core.analysis import check_one_configuration
from prompt_core.backbones import Backbone
from prompt_core.correlations import indicator_table
from prompt_core.data import TaskData
from prompt_core.evaluation import EncodedSplit

SCORE_COLUMNS = ("model", "seed", "target_task", "method", "source_task", "score")
TRUTH_COLUMNS = ("model", "seed", "target_task", "source_task", "true_score")
PROBE_COLUMNS = ("model", "seed", "target_task", "source_prompt_key", "score")
# what loo_scores adds to SCORE_COLUMNS to describe each candidate
DESCRIBE_COLUMNS = ("source_prompt_key", "source_task_type", "target_task_type")


@dataclass(frozen=True)
class Prompt:
    """A trained prompt as a ranker sees it: its task, the task's type, its prompt key."""

    task: str
    type: str
    key: str


@dataclass(frozen=True)
class Target:
    """One leave-one-out round: the new task's own prompt (for the indicator baselines) and
    the candidate sources (every other task's prompt of the same model and seed)."""

    model: str
    seed: int
    own: Prompt
    candidates: tuple[Prompt, ...]


@dataclass(frozen=True)
class Evidence:
    """What rankers may read besides the target: ``probe`` {(model, seed, target task):
    {source prompt key: accuracy}}; ``indicators`` {(model, key_lo, key_hi, indicator):
    value}."""

    probe: Mapping[tuple[str, int, str], Mapping[str, float]]
    indicators: Mapping[tuple[str, str, str, str], float]


# a ranker: {source task: score} for the target's candidates, or None when it has no
# information for this target (e.g. no probe was run): then that method skips the target
Ranker = Callable[[Target, Evidence], "dict[str, float] | None"]


def _complete(target: Target, got: Mapping[str, float], what: str) -> dict[str, float] | None:
    """``got`` restricted to the candidates; None if it covers none, an error if only some."""
    names = [c.task for c in target.candidates]
    have = {n: float(got[n]) for n in names if n in got}
    if not have:
        return None
    if len(have) < len(names):
        raise ValueError(f"{what} for target {target.own.task} ({target.model}, seed "
                         f"{target.seed}) is missing source(s) "
                         f"{sorted(set(names) - set(have))}")
    return have


def rank_probe(target: Target, evidence: Evidence) -> dict[str, float] | None:
    """The candidates' probe accuracy on the target's train sample."""
    by_key = evidence.probe.get((target.model, target.seed, target.own.task), {})
    got = {c.task: by_key[c.key] for c in target.candidates if c.key in by_key}
    return _complete(target, got, "the probe scores")


def rank_same_type(target: Target, evidence: Evidence) -> dict[str, float]:
    """1 for a candidate of the target's task type, else 0."""
    return {c.task: float(c.type == target.own.type) for c in target.candidates}


def rank_random(target: Target, evidence: Evidence) -> dict[str, float]:
    """Every candidate 0: all tied, so the evaluation's uniform tie-breaking is chance."""
    return {c.task: 0.0 for c in target.candidates}


def rank_indicator(target: Target, evidence: Evidence, *, name: str) -> dict[str, float] | None:
    """Indicator ``name`` between each candidate's prompt and the target's own prompt."""
    got = {}
    for c in target.candidates:
        lo, hi = sorted((c.key, target.own.key))
        v = evidence.indicators.get((target.model, lo, hi, name))
        if v is not None and v == v:
            got[c.task] = v
    return _complete(target, got, f"indicator {name!r}")


RANKERS: dict[str, Ranker] = {
    "probe": rank_probe,
    "same_type": rank_same_type,
    "random": rank_random,
}


def rankers_for(indicator_names: Iterable[str]) -> dict[str, Ranker]:
    """:data:`RANKERS` plus one ranker per indicator name (sorted); a name may not shadow a
    fixed ranker."""
    out = dict(RANKERS)
    for name in sorted(set(indicator_names)):
        if name in RANKERS:
            raise ValueError(f"indicator name {name!r} clashes with the ranker of that name")
        out[name] = partial(rank_indicator, name=name)
    return out


# -- the leave-one-task-out study ------------------------------------------------------------


def _prompt_cells(cells: pd.DataFrame, metric: str) -> pd.DataFrame:
    need = ("model", "seed", "source_kind", "source_task", "source_task_type",
            "source_prompt_key", "target_task", "target_task_type", "target_prompt_key",
            "metric")
    missing = [c for c in need if c not in cells.columns]
    if missing:
        raise ValueError(f"the cross_task cells lack column(s) {missing}")
    for _, g in cells.groupby("model", sort=False):
        check_one_configuration(g)
    return cells[(cells["metric"] == metric) & (cells["source_kind"] == "prompt")]


def targets(cells: pd.DataFrame, metric: str = "accuracy") -> list[Target]:
    """One :class:`Target` per (model, seed, target task) of the cross-task cells.

    The trained prompts of a (model, seed) are read from the cells' DESCRIPTIONS (task, type,
    prompt key; no score): each target's own prompt from ``target_prompt_key``, and the
    candidates are all other tasks' prompts of that model and seed, wherever they appear as a
    source. The target's own prompt is never a candidate.
    """
    d = _prompt_cells(cells, metric)
    out = []
    for (model, seed), g in d.groupby(["model", "seed"], sort=True):
        own = {r.target_task: Prompt(r.target_task, r.target_task_type, r.target_prompt_key)
               for r in g.itertuples()}
        src = {r.source_task: Prompt(r.source_task, r.source_task_type, r.source_prompt_key)
               for r in g.itertuples()}
        for task in sorted(own):
            cands = tuple(src[t] for t in sorted(src) if t != task)
            out.append(Target(str(model), int(seed), own[task], cands))
    return out


def _probe_map(probe: pd.DataFrame | None) -> dict[tuple[str, int, str], dict[str, float]]:
    if probe is None:
        return {}
    missing = [c for c in PROBE_COLUMNS if c not in probe.columns]
    if missing:
        raise ValueError(f"the probe table lacks column(s) {missing}")
    out: dict[tuple[str, int, str], dict[str, float]] = {}
    for r in probe.itertuples():
        where = (str(r.model), int(r.seed), r.target_task)
        out.setdefault(where, {})[r.source_prompt_key] = float(r.score)
    return out


def loo_scores(cells: pd.DataFrame, indicators: pd.DataFrame | None = None,
               probe: pd.DataFrame | None = None, methods: Sequence[str] | None = None,
               metric: str = "accuracy") -> pd.DataFrame:
    """Every ranker's score of every candidate source, each task in turn the new task.

    ``cells``: ``cross_task`` rows (only their descriptions are read, see :func:`targets`);
    ``indicators``: the indicators table (model, prompt_a, prompt_b, indicator, value) or None;
    ``probe``: :data:`PROBE_COLUMNS` rows (a source prompt's :func:`probe_scores` accuracy on
    the target's train sample) or None; ``methods``: the rankers to run (default: all of
    :func:`rankers_for` the indicators present). A ranker without information for a target
    (no probe, no indicator rows) skips it. Columns: :data:`SCORE_COLUMNS` then
    :data:`DESCRIBE_COLUMNS` (the candidate's prompt key and type, the target's type).
    """
    ind = indicator_table(indicators) if indicators is not None else None
    lookup = ({} if ind is None else
              {(r.model, r.key_lo, r.key_hi, r.indicator): r.value for r in ind.itertuples()})
    available = rankers_for([] if ind is None else ind["indicator"].unique())
    names = list(available) if methods is None else list(methods)
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ValueError(f"unknown ranking method(s) {unknown}; known: {sorted(available)}")
    evidence = Evidence(_probe_map(probe), lookup)
    rows = []
    for t in targets(cells, metric):
        of = {c.task: c for c in t.candidates}
        for name in names:
            got = available[name](t, evidence)
            for source, score in (got or {}).items():
                rows.append((t.model, t.seed, t.own.task, name, source, score,
                             of[source].key, of[source].type, t.own.type))
    return pd.DataFrame(rows, columns=[*SCORE_COLUMNS, *DESCRIBE_COLUMNS])


def truth_table(cells: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The true transfer of each source prompt to each other task: :data:`TRUTH_COLUMNS`
    (``true_score`` = the cell's ``score`` of ``metric``), the diagonal left out."""
    d = _prompt_cells(cells, metric)
    d = d[d["source_task"] != d["target_task"]]
    return (d.rename(columns={"score": "true_score"})[list(TRUTH_COLUMNS)]
            .reset_index(drop=True))


# -- exact expected hit@k and regret under uniform tie-breaking -------------------------------


def expected_hit(score: np.ndarray, best: np.ndarray, k: int) -> float:
    """P(the top ``k`` hold at least one best source) when ties in ``score`` are broken
    uniformly at random. score (N,) floats, best (N,) bools.

    The score levels are taken from the highest down; the level that straddles the k-th
    place (m sources, b of them best, r places left) is drawn without replacement, so it
    misses every best one with probability C(m - b, r) / C(m, r).
    """
    left = k
    for level in np.unique(score)[::-1]:
        at = score == level
        m, b = int(at.sum()), int((at & best).sum())
        if m <= left:
            if b:
                return 1.0
            left -= m
            if left == 0:
                return 0.0
            continue
        return 1.0 - math.comb(m - b, left) / math.comb(m, left)
    return 0.0


def _one_ranking(g: pd.DataFrame, ks: Sequence[int]) -> dict[str, float]:
    score, truth = g["score"].to_numpy(float), g["true_score"].to_numpy(float)
    best = truth.max()
    top = truth[score == score.max()].mean()  # the top place is uniform over the top level
    out = {f"hit_at_{k}": expected_hit(score, truth == best, k) for k in ks}
    return {**out, "best_score": float(best), "top_score": float(top),
            "regret": float(best - top), "n_sources": len(g)}


def evaluate_rankings(scores: pd.DataFrame, truth: pd.DataFrame,
                      k: Sequence[int] = (1, 3)) -> pd.DataFrame:
    """Each ranking (model, seed, target task, method) against the true transfer.

    ``scores``: :data:`SCORE_COLUMNS` (:func:`loo_scores`); ``truth``: :data:`TRUTH_COLUMNS`
    (:func:`truth_table`), one row per (model, seed, target, source), the target itself left
    out. A ranking must score exactly the sources its target has a true score for.

    Per ranking, with ties in ``score`` broken uniformly at random (exactly, not sampled):
    ``hit_at_{k}`` = expected chance that the top k hold a best source (a source whose true
    score equals the best; with several, any counts); ``top_score`` = expected true score of
    the top-ranked source; ``best_score``; ``regret`` = best - top_score; ``n_sources``. So
    ``random`` gives hit_at_k = min(k, n) * b / n for one best (b = 1) and the mean true score.
    """
    ks = sorted({int(x) for x in k})
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be positive integers, got {list(k)}")
    key = ["model", "seed", "target_task", "source_task"]
    for df, cols, what in ((scores, SCORE_COLUMNS, "scores"), (truth, TRUTH_COLUMNS, "truth")):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"the {what} table lacks column(s) {missing}")
    if (scores["source_task"] == scores["target_task"]).any():
        raise ValueError("a ranking scores its own target task as a source")
    if truth.duplicated(key).any():
        raise ValueError("the truth table repeats a (model, seed, target, source) cell")
    if scores[["score"]].isna().any().any() or truth["true_score"].isna().any():
        raise ValueError("scores and true scores must not be missing")
    merged = scores.merge(truth[key + ["true_score"]], on=key, how="left")
    if merged["true_score"].isna().any():
        r = merged[merged["true_score"].isna()].iloc[0]
        raise ValueError(f"no true score for source {r['source_task']} on {r['target_task']} "
                         f"({r['model']}, seed {r['seed']})")
    n_true = truth.groupby(key[:3]).size().rename("n_true").reset_index()
    rows = []
    group = ["model", "seed", "target_task", "method"]
    for ids, g in merged.groupby(group, sort=True):
        if g["source_task"].duplicated().any():
            raise ValueError(f"ranking {dict(zip(group, ids, strict=True))} scores a source twice")
        rows.append({**dict(zip(group, ids, strict=True)), **_one_ranking(g, ks)})
    hit = [f"hit_at_{x}" for x in ks]
    out = pd.DataFrame(rows, columns=group + hit + ["best_score", "top_score", "regret",
                                                     "n_sources"])
    check = out.merge(n_true, on=key[:3], how="left")
    short = check[check["n_sources"] != check["n_true"]]
    if len(short):
        r = short.iloc[0]
        raise ValueError(f"ranking {r['method']} of {r['target_task']} ({r['model']}, seed "
                         f"{r['seed']}) scores {r['n_sources']} sources; the truth has "
                         f"{r['n_true']}")
    return out


def with_ranks(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``scores`` (:func:`loo_scores`) with each source's ``true_score``, its ``rank`` in its
    ranking and its ``true_rank`` among the target's sources (1 = best; tied places share
    their average rank, e.g. two tied firsts are both 1.5). Sources without a true score are
    dropped; sorted by model, seed, target, method, rank, source."""
    key = ["model", "seed", "target_task", "source_task"]
    out = scores.merge(truth[key + ["true_score"]], on=key, how="inner")
    ranking = ["model", "seed", "target_task", "method"]
    out["rank"] = out.groupby(ranking)["score"].rank(ascending=False, method="average")
    out["true_rank"] = out.groupby(ranking)["true_score"].rank(ascending=False,
                                                                method="average")
    return out.sort_values(ranking + ["rank", "source_task"], kind="stable").reset_index(
        drop=True)


def summarise_rankings(per_target: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method): the mean of each ``hit_at_k`` and of ``regret`` over the
    rankings of :func:`evaluate_rankings`, ``n_targets`` (distinct target tasks) and
    ``n_rankings`` (rankings averaged: targets x seeds)."""
    hit = [c for c in per_target.columns if c.startswith("hit_at_")]
    g = per_target.groupby(["model", "method"], sort=True)
    out = g[hit + ["regret"]].mean()
    out["n_targets"] = g["target_task"].nunique()
    out["n_rankings"] = g.size()
    return out.reset_index()


def rank_sources(scores: Mapping[str, float], top: int | None = None) -> list[tuple[str, float]]:
    """``scores`` {source: score} as (source, score) pairs, best first, ties by name; the
    first ``top`` only when given. A missing (NaN) score is an error."""
    bad = sorted(s for s, v in scores.items() if v is None or v != v)
    if bad:
        raise ValueError(f"no score for source(s) {bad}")
    ranked = sorted(((s, float(v)) for s, v in scores.items()), key=lambda sv: (-sv[1], sv[0]))
    return ranked if top is None else ranked[:top]


# -- the probe: source prompts on a sample of the new task's train split ----------------------


def probe_sample(task_data: TaskData, n_examples: int, seed: int) -> TaskData:
    """A task holding only a seeded sample of ``n_examples`` rows of ``task_data``'s train
    split (all of it when smaller): nothing else of the task can be read through it."""
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    train = task_data.split("train")
    if train.empty:
        raise ValueError(f"task {task_data.name!r} has an empty train split: nothing to probe")
    sample = train.sample(n=min(n_examples, len(train)), random_state=seed)
    return TaskData(task_data.spec, {"train": sample.reset_index(drop=True)},
                    source=f"{task_data.source} (train sample {len(sample)}, seed {seed})")


def probe_scores(backbone: Backbone, task_data: TaskData, sources: Mapping[str, torch.Tensor],
                 n_examples: int, seed: int, max_length: int, batch_size: int = 64,
                 bf16: bool = False) -> dict[str, float]:
    """Accuracy of each source prompt (n, D) on a seeded sample of ``n_examples`` of
    ``task_data``'s TRAIN split (never validation or test), with the task's verbalizer.

    The sample is tokenised once and every prompt scored on it. Returns {source: accuracy}
    in ``sources``' order.
    """
    enc = EncodedSplit(backbone, probe_sample(task_data, n_examples, seed), "train",
                       max_length, bf16=bf16)
    return {name: enc.evaluate(prompt, batch_size)["accuracy"]
            for name, prompt in sources.items()}
