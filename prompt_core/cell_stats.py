"""The statistics stored with every scored cell of one target task (a ``cross_task`` or
``cross_model`` row): its score, the score's bootstrap interval, its score relative to the
target's own prompt and its transfer gain over no prompt.

:func:`cell_statistics` is a pure function of per-source predictions on the target's test
examples (plus the stored scores of reference cells that are not rescored): the evaluation
units load the predictions, call it and store what it returns. Sources are any hashable ids
(the units use their cells' ``source_id``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from prompt_core.analysis import bootstrap_interval, transfer_gain
from prompt_core.evaluation import scores as score_predictions

METRICS = ("accuracy", "macro_f1")
N_BOOT = 1000  # bootstrap resamples of the test examples per score interval


@dataclass(frozen=True)
class CellStats:
    """One (cell, metric)'s statistics.

    ``score``: the metric of the cell's predictions; ``score_low`` / ``score_high``: its 95%
    percentile bootstrap interval (:func:`~prompt_core.analysis.bootstrap_interval`);
    ``relative_score``: score / the own prompt's score of the same seed (None without an own
    score, or when it is 0); ``transfer_gain``: :func:`~prompt_core.analysis.transfer_gain`
    against no prompt and the own prompt of the same seed; ``own_score``: that own score.
    """

    score: float
    score_low: float
    score_high: float
    relative_score: float | None
    transfer_gain: float | None
    own_score: float | None


def cell_statistics(
    rows: Mapping[Hashable, int],
    predictions: Mapping[Hashable, np.ndarray],
    gold: np.ndarray,
    n_labels: int,
    *,
    own: Mapping[int, Hashable],
    none: Mapping[int, Hashable] | None = None,
    scores: Mapping[Hashable, Mapping[str, float]] | None = None,
    stored: Mapping[Hashable, Mapping[str, tuple[float, float | None]]] | None = None,
    metrics: tuple[str, ...] = METRICS,
    n_boot: int = N_BOOT,
) -> dict[tuple[Hashable, str], CellStats]:
    """The :class:`CellStats` of every (source in ``rows``, metric in ``metrics``).

    * ``rows``: source -> its seed, for the sources whose rows are wanted (each must be in
      ``predictions``). The seed picks the own prompt and no prompt of the same seed and seeds
      the source's bootstrap interval (``n_boot`` resamples; an interval is computed once per
      source and metric).
    * ``predictions``: source -> predicted label ids (N,) on the target's examples, for every
      source scored now (the rows' sources, and reference sources that were rescored);
      ``gold`` (N,), ``n_labels``: the target's labels.
    * ``own`` / ``none``: seed -> the source id of the target's own prompt / of no prompt.
      A reference source is read from ``predictions`` when it is there, else from ``stored``.
    * ``scores``: source -> metric -> its score as the evaluation already computed it from
      ``predictions`` (saves recomputing it); a source scored now without an entry is scored
      here with :func:`prompt_core.evaluation.scores`.
    * ``stored``: source -> metric -> (score, score_low) of a reference cell that is not
      rescored (its stored row): its score is the denominator of ``relative_score``, its score
      and interval's lower end (``own_low``) feed ``transfer_gain``. A missing entry makes
      ``relative_score`` / ``transfer_gain`` None, as no own or no-prompt score does.

    ``transfer_gain`` is computed only when the seed has both an own and a no-prompt score
    (else None; the own prompt's interval is then not needed, so not computed).
    ValueError: a source of ``rows`` has no predictions.
    """
    none = none or {}
    stored = stored or {}
    missing = [s for s in rows if s not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} source(s) to report have no predictions, "
                         f"e.g. {missing[0]!r}")
    computed: dict[Hashable, Mapping[str, float]] = {}
    intervals: dict[tuple[Hashable, str], tuple[float, float]] = {}

    def scored(source: Hashable) -> Mapping[str, float]:
        """Every metric of a source scored now."""
        if scores is not None and source in scores:
            return scores[source]
        if source not in computed:
            computed[source] = score_predictions(predictions[source], gold, n_labels)
        return computed[source]

    def interval(source: Hashable, metric: str, seed: int) -> tuple[float, float]:
        if (source, metric) not in intervals:
            intervals[source, metric] = bootstrap_interval(predictions[source], gold, n_labels,
                                                           metric, n_boot, seed=seed)
        return intervals[source, metric]

    def reference(source: Hashable | None, metric: str) -> float | None:
        """A reference cell's score: scored now, or its stored row's (None: neither)."""
        if source is None:
            return None
        if source in predictions:
            return scored(source)[metric]
        return stored.get(source, {}).get(metric, (None, None))[0]

    def reference_low(source: Hashable, metric: str, seed: int) -> float | None:
        """The lower end of a reference cell's interval: computed now, or its stored row's."""
        if source in predictions:
            return interval(source, metric, seed)[0]
        return stored.get(source, {}).get(metric, (None, None))[1]

    out: dict[tuple[Hashable, str], CellStats] = {}
    for source, seed in rows.items():
        s = scored(source)
        for metric in metrics:
            score = s[metric]
            base = reference(own.get(seed), metric)
            none_score = reference(none.get(seed), metric)
            own_low = (reference_low(own[seed], metric, seed)
                       if base is not None and none_score is not None else None)
            low, high = interval(source, metric, seed)
            out[source, metric] = CellStats(
                score=score, score_low=low, score_high=high,
                relative_score=score / base if base else None,
                transfer_gain=transfer_gain(score, none_score, base, own_low=own_low),
                own_score=base)
    return out
