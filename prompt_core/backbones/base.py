"""The small interface every backbone kind implements, and the helpers they share.

A backbone wraps a frozen pretrained model and its tokenizer. The training and evaluation loops
only ever call four things:

* ``encode(text_a, text_b)``      -> token id lists laid out for this kind (no padding yet)
* ``collate(items)``              -> a padded batch of tensors
* ``label_scorer(label_words)``   -> whatever this kind precomputes to score a task's labels
* ``logits(prompt, batch, scorer)`` -> (B, K) class logits for a soft prompt (or none)

so a new kind (seq2seq, causal) slots in by implementing these and registering itself.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class Encoded:
    """One tokenised example: ``input_ids`` and ``token_type_ids`` (same length)."""

    input_ids: list[int]
    token_type_ids: list[int]


def prepend_prompt(
    embeds: torch.Tensor, attention_mask: torch.Tensor, prompt: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the soft prompt in front of the input embeddings and extend the mask with ones.

    embeds (B, T, D), attention_mask (B, T), prompt (n, D) -> (B, n+T, D), (B, n+T).
    Padding positions of the input keep their 0 in the mask.
    """
    if prompt is None:
        return embeds, attention_mask
    B = embeds.shape[0]
    p = prompt.to(embeds.dtype).unsqueeze(0).expand(B, -1, -1)  # (B, n, D)
    ones = attention_mask.new_ones(B, prompt.shape[0])  # (B, n)
    return torch.cat([p, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


def pad_batch(items: list[Encoded], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples: ids/type ids/mask, each (B, T)."""
    T = max(len(it.input_ids) for it in items)
    B = len(items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    types = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it.input_ids)
        ids[i, :n] = torch.tensor(it.input_ids)
        types[i, :n] = torch.tensor(it.token_type_ids)
        mask[i, :n] = 1
    return {
        "input_ids": ids.to(device),
        "token_type_ids": types.to(device),
        "attention_mask": mask.to(device),
    }


class Backbone(ABC):
    """A frozen model that scores a task's label words for (soft prompt + text) inputs."""

    kind: ClassVar[str]
    default_model_id: ClassVar[str]
    default_lr: ClassVar[float]

    def __init__(self, model: nn.Module, tokenizer: Any, model_id: str, device: str = "cpu"):
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = torch.device(device)
        # fast tokenizers raise "Already borrowed" when two threads tokenise at once
        self._tokenizer_lock = threading.Lock()

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls, model_id: str, revision: str | None = None, device: str = "cpu", **options: Any
    ) -> Backbone:
        """Load model and tokenizer (hub id or local directory)."""

    @property
    def hidden_size(self) -> int:
        return self.input_embeddings.embedding_dim

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The word embedding table (V, D) the soft prompt lives beside."""
        return self.model.get_input_embeddings()

    @property
    def max_positions(self) -> int | None:
        """Longest input (prompt + text tokens) the model's position embeddings allow."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def check_lengths(self, n_tokens: int, max_length: int) -> None:
        """Fail early, with the numbers, when prompt + text cannot fit the model."""
        limit = self.max_positions
        if limit is not None and n_tokens + max_length > limit:
            raise ValueError(
                f"{self.model_id}: n_tokens {n_tokens} + max_length {max_length} exceeds the "
                f"model's {limit} positions; lower one of them"
            )

    def token_type_ids(self, encoding: dict) -> list[int]:
        ids = encoding["input_ids"]
        return encoding.get("token_type_ids") or [0] * len(ids)

    @abstractmethod
    def encode(self, text_a: str, text_b: str | None, max_length: int) -> Encoded:
        """Tokenise one example in this kind's input layout."""

    def encode_many(
        self, text_a: list[str], text_b: list[str | None], max_length: int
    ) -> list[Encoded]:
        with self._tokenizer_lock:
            return [self.encode(a, b, max_length) for a, b in zip(text_a, text_b, strict=True)]

    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        return pad_batch(items, self.tokenizer.pad_token_id or 0, self.device)

    @abstractmethod
    def label_scorer(self, label_words: tuple[str, ...] | list[str]) -> Any:
        """Precompute what scoring these label words needs (token ids, label embeddings...)."""

    @abstractmethod
    def logits(
        self, prompt: torch.Tensor | None, batch: dict[str, torch.Tensor], scorer: Any
    ) -> torch.Tensor:
        """Class logits (B, K) for the batch with ``prompt`` (n, D) prepended, or no prompt."""

    def embed_with_prompt(
        self, prompt: torch.Tensor | None, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Model kwargs with the prompt prepended: inputs_embeds (B, n+T, D), mask, type ids."""
        embeds = self.input_embeddings(batch["input_ids"])  # (B, T, D)
        embeds, mask = prepend_prompt(embeds, batch["attention_mask"], prompt)
        types = batch["token_type_ids"]
        if prompt is not None:
            types = torch.cat([types.new_zeros(types.shape[0], prompt.shape[0]), types], dim=1)
        return {"inputs_embeds": embeds, "attention_mask": mask, "token_type_ids": types}
