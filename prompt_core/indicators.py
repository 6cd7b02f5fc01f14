"""Transferability indicators between two soft prompts of one model (METHOD.md), and the neuron
masking ablation that checks the neurons ON counts matter.

* Embedding similarity (ES), prompts p1, p2 (n, D): :data:`ES_INDICATORS`, the official
  ``CosineSimilarity``, ``CosineSimilarity_per_token``, ``EuclideanDistances`` and
  ``EuclideanDistances_per_token`` of ``caculate_metric_value_for_correlation.py``
  (thunlp/Prompt-Transferability 1.0; the per-token ones average over all n x n token pairs),
  plus the aligned per-token cosine.
* Model stimulation similarity (ON), FFN activations (L, F) of each prompt's stimulus
  (:meth:`Backbone.ffn_activations`): a neuron is activated when its value is > 0, and ON is the
  cosine of the two binary masks, |A and B| / sqrt(|A| |B|), over all layers and per window of
  consecutive layers (:func:`on_indicators`).
* :func:`masking_ablation`: a prompt's own-task accuracy with its top-k% activated neurons
  zeroed, against the same number of random neurons.

All indicator functions are pure and return Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from prompt_core.backbones import Backbone
from prompt_core.config import DEFAULT_ON_POSITION, OnPosition
from prompt_core.data import TaskData
from prompt_core.evaluation import EncodedSplit

# --- embedding similarity (ES) -------------------------------------------------------------


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _pair(p1: torch.Tensor, p2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts (n, D) of the same shape, as float64 on the CPU."""
    _check_same_shape(p1, p2, "prompts")
    if p1.ndim != 2:
        raise ValueError(f"prompts must be (n, D), got shape {tuple(p1.shape)}")
    return p1.detach().cpu().double(), p2.detach().cpu().double()


def es_cosine(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """Cosine of the flattened prompts, as the official ``CosineSimilarity``: p1, p2 (n, D) ->
    cos(vec p1, vec p2) over (n*D,)."""
    a, b = _pair(p1, p2)
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _token_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of every token of a (n, D) with every token of b (n, D): (n, n), [i, j] =
    cos(a[i], b[j]) (a zero token: cosine 0)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # (n, n)


def es_token_cosine(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """Mean cosine over ALL n x n token pairs, i from p1 and j from p2, as the official
    ``CosineSimilarity_per_token``: mean_{i,j} cos(p1[i], p2[j]), p1, p2 (n, D).

    It does not depend on the order of either prompt's tokens, so it is 1 only when every
    token of both prompts points the same way (not for two identical prompts of distinct
    tokens: then the diagonal gives 1 and the rest less)."""
    a, b = _pair(p1, p2)
    return float(_token_cosines(a, b).mean())  # (n, n) -> scalar


def es_token_cosine_aligned(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """Mean cosine over the n ALIGNED token pairs: mean_i cos(p1[i], p2[i]), p1, p2 (n, D).

    Not an official indicator (the official per-token cosine is :func:`es_token_cosine`, over
    all pairs). Kept, under its own name, because it is sensitive to token order, which the
    all-pairs mean is not: it is 1 for identical prompts and drops when one prompt's tokens are
    permuted, so it tells whether two prompts agree position by position."""
    a, b = _pair(p1, p2)
    return float(F.cosine_similarity(a, b, dim=1).mean())  # (n,) -> scalar


def es_euclidean(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """1 / (1 + ||vec p1 - vec p2||_2), p1, p2 (n, D), as the official ``EuclideanDistances``:
    1 for identical prompts, -> 0 apart."""
    a, b = _pair(p1, p2)
    return float(1.0 / (1.0 + torch.linalg.vector_norm(a - b)))


def es_token_euclidean(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """1 / (1 + mean over ALL n x n token pairs of ||p1[i] - p2[j]||_2), p1, p2 (n, D), as the
    official ``EuclideanDistances_per_token``. Like :func:`es_token_cosine` it ignores token
    order; it is 1 only when all 2n tokens are equal."""
    a, b = _pair(p1, p2)
    # exact differences (not the matmul shortcut, which leaves ~1e-8 between equal tokens)
    dist = torch.cdist(a, b, p=2, compute_mode="donot_use_mm_for_euclid_dist")  # (n, n)
    return float(1.0 / (1.0 + dist.mean()))


# name -> indicator: the official four (``caculate_metric_value_for_correlation.py``, 1.0) and
# the aligned per-token cosine
ES_INDICATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "es_cosine": es_cosine,
    "es_token_cosine": es_token_cosine,
    "es_euclidean": es_euclidean,
    "es_token_euclidean": es_token_euclidean,
    "es_token_cosine_aligned": es_token_cosine_aligned,
}


# --- model stimulation similarity (ON) -----------------------------------------------------


def binary_activations(acts: torch.Tensor) -> torch.Tensor:
    """Activated neurons: acts (L, F) float -> (L, F) bool, True where the value is > 0."""
    return acts > 0


def _binary(x: torch.Tensor) -> torch.Tensor:
    """A bool mask as is; activations binarised with :func:`binary_activations`."""
    return x if x.dtype == torch.bool else binary_activations(x)


def on_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """ON: |A and B| / sqrt(|A| |B|) over all neurons of two activation patterns of the same
    shape (e.g. (L, F)): bool masks, or activations (binarised with > 0). 0.0 when either
    pattern has no activated neuron."""
    _check_same_shape(a, b, "activation patterns")
    a, b = _binary(a), _binary(b)
    n_a, n_b = int(a.sum()), int(b.sum())
    if not n_a or not n_b:
        return 0.0
    return int((a & b).sum()) / math.sqrt(n_a * n_b)


def layer_windows(n_layers: int, window: int) -> list[tuple[int, int]]:
    """Consecutive windows of ``window`` layers as 0-based half-open (start, stop); the last one
    may be shorter. 5 layers, window 2 -> [(0, 2), (2, 4), (4, 5)]."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"ON layer window must be a positive integer, got {window!r}")
    return [(s, min(s + window, n_layers)) for s in range(0, n_layers, window)]


def on_indicators(a: torch.Tensor, b: torch.Tensor, window: int) -> dict[str, float]:
    """ON over all layers (``"on"``) and per window of ``window`` consecutive layers
    (``"on_layers_{first}-{last}"``, 1-based inclusive; the last window may be shorter).

    a, b: (L, F) activations (binarised with > 0) or bool masks. 3 layers, window 2 ->
    ``{"on", "on_layers_1-2", "on_layers_3-3"}``.
    """
    _check_same_shape(a, b, "activation patterns")
    if a.ndim != 2:
        raise ValueError(f"activation patterns must be (L, F), got shape {tuple(a.shape)}")
    a, b = _binary(a), _binary(b)
    out = {"on": on_overlap(a, b)}
    for start, stop in layer_windows(a.shape[0], window):
        out[f"on_layers_{start + 1}-{stop}"] = on_overlap(a[start:stop], b[start:stop])
    return out


def all_indicators(p1: torch.Tensor, p2: torch.Tensor, act1: torch.Tensor, act2: torch.Tensor,
                   window: int) -> dict[str, float]:
    """Every ES indicator of the prompts p1, p2 (n, D) and every ON indicator of their FFN
    activations act1, act2 (L, F) (:func:`on_indicators`): ``{indicator name: value}``."""
    out = {name: fn(p1, p2) for name, fn in ES_INDICATORS.items()}
    out.update(on_indicators(act1, act2, window))
    return out


# --- neuron masking ablation ---------------------------------------------------------------


def _mask_count(n_neurons: int, fraction: float) -> int:
    """round(fraction * n_neurons), at least 1; fraction in (0, 1]."""
    if not 0 < fraction <= 1:
        raise ValueError(f"masking fraction must be in (0, 1], got {fraction!r}")
    return max(1, round(fraction * n_neurons))


def top_neuron_mask(acts: torch.Tensor, fraction: float) -> torch.Tensor:
    """The top ``fraction`` of neurons by activation value over all layers: acts (L, F) ->
    (L, F) bool with round(fraction * L * F) (at least 1) True entries."""
    flat = acts.detach().flatten()
    k = _mask_count(flat.numel(), fraction)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.topk(flat, k).indices] = True
    return mask.view(acts.shape)


def random_neuron_mask(shape: Sequence[int], fraction: float, seed: int) -> torch.Tensor:
    """As many neurons as :func:`top_neuron_mask` would mask, uniformly at random: (L, F) bool.

    One seeded permutation per call, so for one seed the masks of growing fractions are
    nested, like the top-k masks.
    """
    n = math.prod(shape)
    k = _mask_count(n, fraction)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:k]] = True
    return mask.view(*shape)


def masking_ablation(
    backbone: Backbone,
    task_data: TaskData,
    prompt: torch.Tensor,
    fractions: Sequence[float],
    split: str = "test",
    max_examples: int | None = None,
    max_length: int = 128,
    seed: int = 0,
    batch_size: int = 64,
    bf16: bool = False,
    on_position: OnPosition = DEFAULT_ON_POSITION,
) -> list[dict]:
    """The prompt's own-task accuracy with its top-k% activated FFN neurons zeroed, against
    the same number of random neurons, for each fraction k in ``fractions``.

    The neurons are ranked by the prompt's ON activations (:meth:`Backbone.ffn_activations`
    with ``on_position``, (L, F)); the split is tokenised and the label scorer built once,
    unmasked (so an encoder kind's label embeddings are not masked), then scored under
    :meth:`Backbone.masked_neurons`.
    One row per fraction: ``fraction``, ``n_masked``, ``metric`` ("accuracy"), ``score``
    (unmasked), ``top_masked_score``, ``random_masked_score``, ``top_drop`` and ``random_drop``
    (score - masked score), ``n_examples``.
    """
    for fraction in fractions:  # every fraction valid before any forward pass
        _mask_count(1, fraction)
    acts = backbone.ffn_activations(prompt, on_position)  # (L, F)
    split_data = EncodedSplit(backbone, task_data, split, max_length, max_examples, bf16=bf16)

    def accuracy() -> float:
        return split_data.evaluate(prompt, batch_size)["accuracy"]

    score = accuracy()
    rows = []
    for fraction in fractions:
        top = top_neuron_mask(acts, fraction)
        rand = random_neuron_mask(acts.shape, fraction, seed)
        with backbone.masked_neurons(top):
            top_score = accuracy()
        with backbone.masked_neurons(rand):
            random_score = accuracy()
        rows.append({
            "fraction": float(fraction), "n_masked": int(top.sum()), "metric": "accuracy",
            "score": score, "top_masked_score": top_score, "random_masked_score": random_score,
            "top_drop": score - top_score, "random_drop": score - random_score,
            "n_examples": len(split_data),
        })
    return rows
