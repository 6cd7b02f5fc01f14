"""Several soft prompts in one forward pass of a frozen backbone.

A kind that splits its :meth:`~Backbone.logits` into :meth:`~Backbone.features` (the frozen
forward pass, label-independent, one row per batch row) and :meth:`~Backbone.score_features`
(the label scoring) accepts one prompt per row, (R, n, D). Rows are independent in these
transformers (eval mode: no dropout; no batch norm; attention masks keep padding out), so K
prompts x B examples can run as one (K*B)-row batch, and several tasks' batches, each with its
own prompt and label scorer, as one stacked batch: row r's result is row r's single-prompt
result up to float rounding (larger matrix products may sum in another order; padding to a
longer batch adds exact zeros). All prompts of one pass must have the same length n.

A kind without the split (a plug-in implementing :meth:`~Backbone.logits` only) is scored one
prompt at a time by the same functions, so callers need not care.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prompt_core.backbones.base import Backbone, Encoded


def splits_logits(backbone: Backbone) -> bool:
    """Whether ``backbone``'s kind implements :meth:`~Backbone.features` and
    :meth:`~Backbone.score_features` (several prompts per forward pass)."""
    cls = type(backbone)
    return (cls.features is not Backbone.features
            and cls.score_features is not Backbone.score_features)


def tile_batch(batch: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The batch's tensors (B, ...) repeated ``k`` times along dim 0: (k*B, ...), row
    ``i*B + b`` = row ``b``."""
    return {name: t.repeat(k, *([1] * (t.ndim - 1))) for name, t in batch.items()}


def row_prompts(prompts: Sequence[torch.Tensor], counts: Sequence[int]) -> torch.Tensor:
    """One prompt per row: prompt i (n, D) for the next ``counts[i]`` rows -> (sum, n, D).

    Built from expanded views, so under autograd each prompt's gradient is the sum over its own
    rows only."""
    shapes = {tuple(p.shape) for p in prompts}
    if len(shapes) != 1:
        raise ValueError(f"prompts of one forward pass must have one shape (n, D), got "
                         f"{sorted(shapes)}")
    return torch.cat([p.unsqueeze(0).expand(c, -1, -1)
                      for p, c in zip(prompts, counts, strict=True)], dim=0)


def slice_rows(features: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of :meth:`~Backbone.features` output (a tensor or a tuple of them)."""
    if isinstance(features, tuple):
        return tuple(f[start:stop] for f in features)
    return features[start:stop]


def logits_many(backbone: Backbone, prompts: Sequence[torch.Tensor] | torch.Tensor,
                batch: dict[str, torch.Tensor], scorer: Any) -> torch.Tensor:
    """Class logits (K, B, C) of K prompts (each (n, D), or a (K, n, D) tensor) on one batch
    (B rows), in one forward pass of K*B rows where the kind :func:`splits_logits` (else one
    :meth:`~Backbone.logits` call per prompt). Row k equals ``backbone.logits(prompts[k],
    batch, scorer)`` up to float rounding."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("logits_many: no prompts")
    if not splits_logits(backbone) or len(prompts) == 1:
        return torch.stack([backbone.logits(p, batch, scorer) for p in prompts])
    k, b = len(prompts), batch["input_ids"].shape[0]
    feats = backbone.features(row_prompts(prompts, [b] * k), tile_batch(batch, k))
    return backbone.score_features(feats, scorer).view(k, b, -1)


def stacked_logits(backbone: Backbone, prompts: Sequence[torch.Tensor],
                   parts: Sequence[Sequence[Encoded]], scorers: Sequence[Any]
                   ) -> list[torch.Tensor]:
    """Several batches, each with its own prompt (n, D) and label scorer, in one forward pass:
    part i's examples (B_i encoded items) are collated together with the others' (padded to the
    longest of all), prompt i goes in front of its rows, and each part's rows are scored with
    its scorer. Returns the logits (B_i, C_i) of each part, differentiable in each prompt (its
    gradient comes from its own part's rows only). A kind that does not
    :func:`splits_logits` runs one forward pass per part."""
    if not (len(prompts) == len(parts) == len(scorers)):
        raise ValueError(f"stacked_logits: {len(prompts)} prompts, {len(parts)} parts, "
                         f"{len(scorers)} scorers")
    if not splits_logits(backbone):
        return [backbone.logits(p, backbone.collate(list(items)), s)
                for p, items, s in zip(prompts, parts, scorers, strict=True)]
    counts = [len(items) for items in parts]
    batch = backbone.collate([it for items in parts for it in items])
    feats = backbone.features(row_prompts(prompts, counts), batch)
    out, start = [], 0
    for c, scorer in zip(counts, scorers, strict=True):
        out.append(backbone.score_features(slice_rows(feats, start, start + c), scorer))
        start += c
    return out
