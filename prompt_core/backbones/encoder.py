"""Sentence-embedding encoders without an LM head (e.g. all-MiniLM-L6-v2).

Scoring (METHOD.md): embed the prompted input with mean pooling, embed each label word with the
same frozen model (no prompt), and use cosine similarity / temperature as the class logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import torch
import torch.nn.functional as F

from prompt_core.backbone_kinds import (
    DEFAULT_ON_POSITION,
    MINILM_ID,
    OnPosition,
    Pool,
    resolve_model_path,
)
from prompt_core.backbones.base import Backbone, Encoded, Reduce, Stimulus

# IndicatorsConfig.on_position -> (the stimulus positions read, from the pooled positions and
# the prompt length n; how they combine, POSITION_REDUCTIONS). A neuron is activated (> 0) at a
# position: "max" keeps a neuron that is > 0 at any position read > 0
ON_POSITIONS: dict[str, tuple[Callable[[list[int], int], list[int]], Reduce]] = {
    "any": (lambda pooled, n: pooled, "max"),  # any pooled position: what the score reads
    "first": (lambda pooled, n: [n], "max"),  # the first text position, [CLS]
    "prompt": (lambda pooled, n: list(range(n)), "max"),  # any prompt position
    "mean": (lambda pooled, n: pooled, "mean"),  # legacy: the mean over the pooled positions
}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, D), mask (B, T) -> (B, D) mean over unmasked positions."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class EncoderBackbone(Backbone):
    kind = "encoder"
    default_model_id = MINILM_ID
    default_lr = 3e-2
    supports_bf16 = True

    POOLS = get_args(Pool)

    def __init__(self, model, tokenizer, model_id, device="cpu", temperature: float = 0.05,
                 pool: Pool = "text"):
        super().__init__(model, tokenizer, model_id, device)
        if pool not in self.POOLS:
            raise ValueError(f"encoder option pool must be one of {self.POOLS}, got {pool!r}")
        self.temperature = temperature
        self.pool = pool

    @classmethod
    def from_pretrained(cls, model_id, revision=None, device="cpu", **options: Any):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(model_id)
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
        model = AutoModel.from_pretrained(path, revision=revision)
        return cls(model, tok, model_id, device, **options)

    def encode(self, text_a, text_b, max_length):
        enc = self.tokenize(
            text_a, text_b, truncation=True, max_length=max_length, add_special_tokens=True
        )
        return Encoded(enc["input_ids"], self.token_type_ids(enc))

    @torch.no_grad()
    def label_scorer(self, label_words) -> torch.Tensor:
        """Unit-norm label embeddings (K, D) from the frozen model, no prompt."""
        items = self.encode_many(list(label_words), [None] * len(label_words),
                                 min(32, self.max_positions or 32))
        batch = self.collate(items)
        out = self.model(**batch).last_hidden_state  # (K, T, D)
        return F.normalize(mean_pool(out, batch["attention_mask"]), dim=-1)

    def logits(self, prompt, batch, scorer):
        return self.score_features(self.features(prompt, batch), scorer)  # (B, K) float32

    def features(self, prompt, batch):
        """Unit-norm sentence embeddings (B, D) float32 of the prompted inputs; ``prompt``
        (n, D), one per row (B, n, D), or None."""
        kw = self.embed_with_prompt(prompt, batch)
        hidden = self.model(**kw).last_hidden_state  # (B, n+T, D), bf16 under autocast
        # pooling and cosine / temperature in float32 even under autocast: a bf16 cosine
        # (8-bit mantissa) divided by a 0.05 temperature would blur the logits by ~0.1
        mask = kw["attention_mask"]  # (B, n+T)
        if prompt is not None and self.pool == "text":  # the prompt acts only through attention
            n = prompt.shape[-2]
            mask = torch.cat([torch.zeros_like(mask[:, :n]), mask[:, n:]], dim=1)
        with torch.autocast(hidden.device.type, enabled=False):
            return F.normalize(mean_pool(hidden.float(), mask), dim=-1)  # (B, D)

    def score_features(self, features, scorer):
        """Cosine / temperature (B, K) float32 of embeddings (B, D) and label embeddings."""
        with torch.autocast(features.device.type, enabled=False):
            return features @ scorer.float().T / self.temperature

    def stimulus(self, prompt, on_position: OnPosition = DEFAULT_ON_POSITION):
        """ON input: ``[P] [CLS] [SEP]`` (the empty text in :meth:`encode`'s layout), read in
        every FFN layer at the positions ``on_position`` picks (:data:`ON_POSITIONS`).

        This kind has no mask token: the class logits are cosines of the sentence embedding,
        the mean of the last hidden states over the pooled positions (``pool="text"``: the text
        positions ``[CLS] [SEP]`` only, the prompt acting through attention; ``"all"``: the
        prompt too). Those positions are what "the scored position" means here. A neuron is
        activated (> 0) at one position, so by default (``"any"``) a layer's row is the max
        over the pooled positions: > 0 exactly when the neuron is activated at one of them.
        ``"first"`` reads ``[CLS]``, ``"prompt"`` the prompt positions (max), and ``"mean"``
        (legacy) the mean over the pooled positions, which can be <= 0 for a neuron activated
        at one of them.
        """
        try:
            select, reduce = ON_POSITIONS[on_position]
        except KeyError:
            raise ValueError(f"on_position must be one of {sorted(ON_POSITIONS)}, got "
                             f"{on_position!r}") from None
        p = self._stimulus_prompt(prompt)
        kw = self.embed_with_prompt(p, self._empty_input())  # (1, n+T, D)
        n = 0 if p is None else p.shape[0]
        first = n if self.pool == "text" else 0
        pooled = list(range(first, kw["attention_mask"].shape[1]))
        positions = select(pooled, n)
        if not positions:
            raise ValueError(f"on_position {on_position!r} reads the prompt positions: it needs "
                             "a prompt")
        return Stimulus(kw, [positions] * len(self.ffn_modules()), reduce)
