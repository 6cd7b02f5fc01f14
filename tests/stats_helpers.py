"""Hand-made cross_task tables with known answers, for the tests of the seed summaries and
of the same-minus-different interval: the cells and their per-example predictions are built
from correctness patterns, so every score, relative score and transfer gain is known. Shared
by several test modules; not a test module."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prompt_core.analysis import bootstrap_interval, transfer_gain
from prompt_core.evaluation import accuracy

TYPES = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}


def tables(correct: dict[tuple[str, str, int], np.ndarray], types: dict[str, str] = TYPES
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cross_task rows, cross_task_predictions rows) from correctness patterns:
    ``correct[(source, target, seed)]`` is a bool array over the target's examples; a source
    ``none`` / ``random`` is that baseline. Gold labels alternate 0, 1; a wrong prediction is
    the other label. Scores, relative scores (own prompt = ``(target, target, seed)``) and
    transfer gains are computed as the evaluation unit does (accuracy only)."""
    acc = {k: float(np.mean(v)) for k, v in correct.items()}
    cells, preds = [], []
    for (src, tgt, seed), hit in correct.items():
        kind = src if src in ("none", "random") else "prompt"
        key = f"{src}->{tgt}#{seed}"
        gold = np.arange(len(hit)) % 2
        score, own = acc[(src, tgt, seed)], acc.get((tgt, tgt, seed))
        cells.append({
            "cell_key": key, "source_kind": kind,
            "source_task": src if kind == "prompt" else None, "target_task": tgt,
            "seed": seed, "metric": "accuracy", "score": score,
            "same_type": types[src] == types[tgt] if kind == "prompt" else None,
            "relative_score": score / own if own else None,
            "transfer_gain": transfer_gain(score, acc.get(("none", tgt, seed)), own)})
        preds.append({"cell_key": key, "predicted": np.where(hit, gold, 1 - gold).tolist(),
                      "gold": gold.tolist(), "n_labels": 2})
    return pd.DataFrame(cells), pd.DataFrame(preds)


def four_tasks(same_hit, diff_hit, n: int = 40, seeds=(0,), none_hit=None):
    """Four targets (two per type): own prompts all correct; the same-type source on each
    target gets ``same_hit(n, target, seed)``, each different-type source ``diff_hit``."""
    correct = {}
    for seed in seeds:
        for t in TYPES:
            correct[(t, t, seed)] = np.ones(n, bool)
            for s in TYPES:
                if s != t:
                    f = same_hit if TYPES[s] == TYPES[t] else diff_hit
                    correct[(s, t, seed)] = np.asarray(f(n, t, seed), bool)
            if none_hit is not None:
                correct[("none", t, seed)] = np.asarray(none_hit(n, t, seed), bool)
    return tables(correct)


def halves(first: bool):
    """Correct on the first (or second) half of the examples: accuracy 0.5 either way, but
    a resample's two halves move in opposite directions."""
    return lambda n, t, s: (np.arange(n) < n // 2) == first


def coin(p: float, salt: int = 0):
    """Correct on a fixed pseudo-random fraction ``p`` of the examples."""
    def hit(n, t, s):
        rng = np.random.default_rng([sum(map(ord, t)), s, salt])
        out = np.zeros(n, bool)
        out[rng.choice(n, size=round(p * n), replace=False)] = True
        return out
    return hit


# -- predictions with a known transfer gain -------------------------------------------------


def hits_first(n: int, right: int, gold: np.ndarray) -> np.ndarray:
    """Predictions right on the first ``right`` examples, wrong (the other label) after."""
    return np.where(np.arange(n) < right, gold, 1 - gold)


N = 20
GOLD = np.arange(N) % 2


def gain_tables(hits: dict[tuple[str, str], np.ndarray], gain: dict[str, bool]
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cross_task rows, cross_task_predictions rows), seed 0, accuracy, from predictions
    ``hits[(source, target)]`` (a source ``none`` is no prompt). The stored transfer_gain is
    the rule's: with the own score's bootstrap interval where ``gain[target]`` is False (so
    a narrow own gain gets None), without (the plain own > none rule) where it is True."""
    acc = {k: accuracy(v, GOLD) for k, v in hits.items()}
    cells, preds = [], []
    for (src, tgt), pred in hits.items():
        kind = "none" if src == "none" else "prompt"
        key = f"{src}->{tgt}"
        score, own, none = acc[src, tgt], acc[tgt, tgt], acc["none", tgt]
        own_low = (None if gain[tgt] else
                   bootstrap_interval(hits[tgt, tgt], GOLD, 2, "accuracy", 1000, seed=0)[0])
        cells.append({"cell_key": key, "source_kind": kind,
                      "source_task": src if kind == "prompt" else None, "target_task": tgt,
                      "seed": 0, "metric": "accuracy", "score": score,
                      "same_type": TYPES[src] == TYPES[tgt] if kind == "prompt" else None,
                      "relative_score": score / own,
                      "transfer_gain": transfer_gain(score, none, own, own_low=own_low)})
        preds.append({"cell_key": key, "predicted": pred.tolist(), "gold": GOLD.tolist(),
                      "n_labels": 2})
    return pd.DataFrame(cells), pd.DataFrame(preds)


def known_targets(narrow: str, narrow_sources: str) -> dict[tuple[str, str], np.ndarray]:
    """Every target but ``narrow``: own prompt all right, no prompt all wrong (own - none = 1
    on every resample), same-type sources copy the own prompt's predictions (gain exactly 1
    on every resample), different-type ones copy no prompt's (gain 0). ``narrow``: own right
    on the first 11 examples, none on the first 10, so own - none = 1/20 and is 0 on a
    resample that misses example 10; its sources copy the own prompt / no prompt as above
    (``narrow_sources="copy"``) or are all right (``"right"``: gain (1 - 0.5) / 0.05 = 10)."""
    hits = {}
    for t in TYPES:
        own, none = ((hits_first(N, 11, GOLD), hits_first(N, 10, GOLD)) if t == narrow
                     else (hits_first(N, N, GOLD), hits_first(N, 0, GOLD)))
        hits[t, t], hits["none", t] = own, none
        for s in TYPES:
            if s != t:
                copy = own if TYPES[s] == TYPES[t] else none
                right = hits_first(N, N, GOLD)
                hits[s, t] = copy if t != narrow or narrow_sources == "copy" else right
    return hits
