"""prompt_core.recommend: rankers, the leave-one-task-out evaluation with exact expected
hit@k / regret under tie-breaking, and the train-split probe on the tiny encoder."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prompt_core.data import TaskData, normalise_split
from prompt_core.evaluation import evaluate_prompts
from prompt_core.prompts import init_prompt
from prompt_core.recommend import (
    RANKERS,
    evaluate_rankings,
    expected_hit,
    loo_scores,
    probe_sample,
    probe_scores,
    rank_sources,
    summarise_rankings,
    targets,
    truth_table,
    with_ranks,
)
from tests.core_helpers import keyword_task

# a 4-task study: TRUE[target][source] = accuracy of the source's prompt on the target
TYPES = {"a": "sentiment", "b": "sentiment", "c": "sentiment", "d": "nli"}
TRUE = {
    "a": {"b": 0.70, "c": 0.50, "d": 0.60},
    "b": {"a": 0.80, "c": 0.40, "d": 0.40},
    "c": {"a": 0.30, "b": 0.35, "d": 0.55},
    "d": {"a": 0.45, "b": 0.65, "c": 0.65},  # two tied best sources
}
OWN = {"a": 0.9, "b": 0.85, "c": 0.6, "d": 0.7}


def pkey(task: str) -> str:
    return f"m:{task}:0"


def _cells() -> pd.DataFrame:
    rows = []

    def add(kind, src, tgt, score):
        rows.append({"model": "m", "seed": 0, "source_kind": kind, "source_task": src,
                     "source_task_type": TYPES.get(src), "source_prompt_key":
                     pkey(src) if src else None, "target_task": tgt,
                     "target_task_type": TYPES[tgt], "target_prompt_key": pkey(tgt),
                     "metric": "accuracy", "score": score, "same_type": None,
                     "relative_score": score / OWN[tgt]})

    for tgt, row in TRUE.items():
        add("prompt", tgt, tgt, OWN[tgt])
        for src, s in row.items():
            add("prompt", src, tgt, s)
        add("none", None, tgt, 0.5)
    return pd.DataFrame(rows)


def _probe(values: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Probe scores keyed by the source's prompt key, as the flow stores them."""
    return pd.DataFrame([{"model": "m", "seed": 0, "target_task": t,
                          "source_prompt_key": pkey(s), "score": v}
                         for t, row in values.items() for s, v in row.items()])


def _per_target(scores: pd.DataFrame, k=(1, 3)) -> pd.DataFrame:
    return evaluate_rankings(scores, truth_table(_cells()), k=k).set_index(
        ["target_task", "method"])


def test_probe_ranking_the_true_best_first_is_perfect():
    # order-preserving but different numbers; the own task's probe score is ignored
    probe = _probe({t: {**{s: v / 2 + 0.1 for s, v in row.items()}, t: 1.0}
                    for t, row in TRUE.items()})
    res = _per_target(loo_scores(_cells(), probe=probe, methods=["probe"]))
    assert (res["hit_at_1"] == 1.0).all() and (res["hit_at_3"] == 1.0).all()
    assert np.allclose(res["regret"], 0.0)
    assert (res["n_sources"] == 3).all() and len(res) == 4


def test_random_gives_exact_chance():
    res = _per_target(loo_scores(_cells(), methods=["random"]))
    for t, row in TRUE.items():
        r = res.loc[(t, "random")]
        n_best = sum(v == max(row.values()) for v in row.values())
        assert r["hit_at_1"] == pytest.approx(n_best / 3)  # 1/3, and 2/3 for d's tie
        assert r["hit_at_3"] == 1.0
        assert r["regret"] == pytest.approx(max(row.values()) - np.mean(list(row.values())))


def test_same_type_with_ties_known_answers():
    res = _per_target(loo_scores(_cells(), methods=["same_type"]), k=(1, 2, 3))
    # target a (sentiment): b, c score 1, d 0 -> top level {b (0.70 best), c}
    a = res.loc[("a", "same_type")]
    assert a["hit_at_1"] == pytest.approx(1 / 2) and a["hit_at_2"] == 1.0
    assert a["regret"] == pytest.approx(0.70 - (0.70 + 0.50) / 2)
    # target b: top level {a (best), c}
    b = res.loc[("b", "same_type")]
    assert b["hit_at_1"] == pytest.approx(1 / 2) and b["regret"] == pytest.approx(0.20)
    # target c: best d is the only 0 -> ranked last
    c = res.loc[("c", "same_type")]
    assert (c["hit_at_1"], c["hit_at_2"], c["hit_at_3"]) == (0.0, 0.0, 1.0)
    assert c["regret"] == pytest.approx(0.55 - (0.30 + 0.35) / 2)
    # target d (nli): every source differs in type -> all tied; best {b, c} tied
    d = res.loc[("d", "same_type")]
    assert d["hit_at_1"] == pytest.approx(2 / 3)
    assert d["hit_at_2"] == 1.0  # 1 - C(1, 2) / C(3, 2)
    assert d["regret"] == pytest.approx(0.65 - (0.45 + 0.65 + 0.65) / 3)
    summary = summarise_rankings(res.reset_index()).set_index("method")
    s = summary.loc["same_type"]
    assert s["hit_at_1"] == pytest.approx((1 / 2 + 1 / 2 + 0 + 2 / 3) / 4)
    assert s["regret"] == pytest.approx((0.10 + 0.20 + 0.225 + (0.65 - 1.75 / 3)) / 4)
    assert s["n_targets"] == 4 and s["n_rankings"] == 4


def test_with_ranks_average_ties():
    cells = _cells()
    r = with_ranks(loo_scores(cells, methods=["same_type"]), truth_table(cells))
    d = r[r["target_task"] == "d"].set_index("source_task")
    assert d["rank"].tolist() == [2.0, 2.0, 2.0]  # all tied
    assert d.loc["b", "true_rank"] == 1.5 and d.loc["a", "true_rank"] == 3.0
    a = r[r["target_task"] == "a"]
    assert a["source_task"].tolist() == ["b", "c", "d"] and a["rank"].tolist() == [1.5, 1.5, 3]
    assert a["source_prompt_key"].tolist() == [pkey("b"), pkey("c"), pkey("d")]
    assert set(a["source_task_type"]) == {"sentiment", "nli"}
    assert set(a["target_task_type"]) == {"sentiment"}


def test_expected_hit_straddling_level():
    score = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    best = np.array([False, False, True, False, False])
    assert expected_hit(score, best, 1) == 0.0
    assert expected_hit(score, best, 2) == pytest.approx(1 / 3)  # 1 place among 3 tied
    assert expected_hit(score, best, 3) == pytest.approx(2 / 3)  # 1 - C(2, 2) / C(3, 2)
    assert expected_hit(score, best, 4) == 1.0
    assert expected_hit(score, best, 10) == 1.0


def test_leave_one_out_never_reads_the_target_or_any_score():
    cells = _cells()
    ts = {t.own.task: t for t in targets(cells)}
    assert sorted(ts) == ["a", "b", "c", "d"]
    for task, t in ts.items():
        assert task not in [c.task for c in t.candidates] and len(t.candidates) == 3
        assert t.own.key == pkey(task)
    ind = pd.DataFrame([{"model": "m", "prompt_a": pkey(s), "prompt_b": pkey(t),
                         "indicator": "on", "value": TRUE[t][s]}
                        for t in TRUE for s in TRUE[t] if s < t])
    probe = _probe({t: {s: 1.0 - v for s, v in row.items()} for t, row in TRUE.items()})
    full = loo_scores(cells, ind, probe)
    assert set(full["method"]) == {"probe", "same_type", "random", "on"}
    assert not (full["source_task"] == full["target_task"]).any()
    # every score of the matrix garbled and the diagonal (own rows) gone: same rankings
    garbled = cells[cells["source_task"] != cells["target_task"]].copy()
    garbled["score"] = np.random.default_rng(0).random(len(garbled))
    garbled["relative_score"] = math.nan
    pd.testing.assert_frame_equal(full, loo_scores(garbled, ind, probe))
    # the indicator ranker reads the unordered pair (source prompt, target's own prompt)
    on = full[(full["method"] == "on") & (full["target_task"] == "a")]
    got = dict(zip(on["source_task"], on["score"], strict=True))
    assert got == {"b": TRUE["b"]["a"], "c": TRUE["c"]["a"], "d": TRUE["d"]["a"]}


def test_bad_inputs_are_refused():
    cells = _cells()
    with pytest.raises(ValueError, match=r"unknown ranking method\(s\) \['on'\]"):
        loo_scores(cells, methods=["on"])
    probe = _probe({"a": {"b": 0.5}})
    with pytest.raises(ValueError, match=r"missing source\(s\) \['c', 'd'\]"):
        loo_scores(cells, probe=probe, methods=["probe"])
    scores = loo_scores(cells, methods=["random"])
    truth = truth_table(cells)
    with pytest.raises(ValueError, match="scores 2 sources; the truth has 3"):
        evaluate_rankings(scores.iloc[1:], truth)
    own = scores.iloc[:1].assign(source_task="a")
    with pytest.raises(ValueError, match="its own target task"):
        evaluate_rankings(pd.concat([scores, own]), truth)
    assert set(RANKERS) == {"probe", "same_type", "random"}


def test_rank_sources_best_first_ties_by_name():
    assert rank_sources({"c": 0.5, "a": 0.5, "b": 0.9}) == [("b", 0.9), ("a", 0.5), ("c", 0.5)]
    assert rank_sources({"c": 0.5, "a": 0.5, "b": 0.9}, top=1) == [("b", 0.9)]
    with pytest.raises(ValueError, match=r"no score for source\(s\) \['x'\]"):
        rank_sources({"x": math.nan})


class _Unreadable:
    """A split that fails any use: proves the probe never touches it."""

    def __getattr__(self, name):
        raise AssertionError(f"the probe read a non-train split ({name})")

    def __len__(self):
        raise AssertionError("the probe read a non-train split (len)")


def _probe_task(labels: int | None = None) -> TaskData:
    td = keyword_task(n_train=40, n_dev=8)
    train = td.splits["train"]
    if labels is not None:
        train = normalise_split(train.assign(label=labels), td.spec, "train", "synthetic")
    return TaskData(td.spec, {"train": train, "validation": _Unreadable(),
                              "test": _Unreadable()}, source="synthetic")


def test_probe_scores_read_only_a_seeded_train_sample(encoder):
    sources = {"p0": init_prompt("random", encoder, 4, seed=0, std=0.5),
               "p1": init_prompt("random", encoder, 4, seed=1, std=0.5)}
    task = _probe_task()
    got = probe_scores(encoder, task, sources, n_examples=16, seed=3, max_length=32)
    assert list(got) == ["p0", "p1"]
    assert all(0.0 <= v <= 1.0 for v in got.values())
    # the same numbers as scoring the seeded train sample directly
    sample = task.splits["train"].sample(n=16, random_state=3)
    ref = TaskData(task.spec, {"test": sample})
    expect = evaluate_prompts(encoder, ref, sources, split="test", max_length=32)
    assert got == {k: v["accuracy"] for k, v in expect.items()}
    assert got == probe_scores(encoder, task, sources, 16, 3, 32)  # deterministic
    # the labels are the train split's: with all labels 0, then all 1, a 2-class accuracy
    # on the same sample sums to 1 (and every value is a multiple of 1/16)
    zeros = probe_scores(encoder, _probe_task(0), sources, 16, 3, 32)
    ones = probe_scores(encoder, _probe_task(1), sources, 16, 3, 32)
    for k in sources:
        assert zeros[k] + ones[k] == pytest.approx(1.0)
        assert (zeros[k] * 16) == pytest.approx(round(zeros[k] * 16))
    assert len(probe_sample(task, 100, seed=0).splits["train"]) == 40  # all of a small train
    with pytest.raises(ValueError, match="n_examples must be >= 1"):
        probe_scores(encoder, task, sources, 0, 3, 32)


def test_probe_sample_differs_by_seed():
    task = _probe_task()
    a = probe_sample(task, 10, seed=0).splits["train"]
    b = probe_sample(task, 10, seed=1).splits["train"]
    assert set(probe_sample(task, 10, seed=0).splits) == {"train"}
    assert not a.equals(b)
    pd.testing.assert_frame_equal(a, probe_sample(task, 10, seed=0).splits["train"])
