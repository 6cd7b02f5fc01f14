"""Soft prompts: initialisation strategies and the file format.

A soft prompt is a tensor P of shape (n_tokens, d_model) that sits in front of the input
embeddings of a frozen backbone. Files are safetensors (never pickle): one tensor named
``prompt`` plus the metadata (model, task, config hash, scores...) as JSON in the safetensors
header under ``prompt_transfer``; storage writes the same metadata beside it as ``.json``. The
format's constants and the shape check need no torch: :mod:`prompt_core.prompt_file`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prompt_core.backbones import Backbone
from prompt_core.prompt_file import (
    FORMAT_VERSION,
    META_KEY,
    TENSOR_NAME,
    PromptFileError,
    check_prompt_shape,
    prompt_metadata,
)

__all__ = ["FORMAT_VERSION", "META_KEY", "TENSOR_NAME", "PROMPT_INITS", "PromptFileError",
           "check_prompt_shape", "init_prompt", "load_prompt_file", "prompt_from_bytes",
           "prompt_to_bytes", "register_init", "save_prompt_file"]

# --- initialisation ------------------------------------------------------------------------

InitFn = Callable[..., torch.Tensor]
PROMPT_INITS: dict[str, InitFn] = {}


def register_init(name: str) -> Callable[[InitFn], InitFn]:
    def deco(fn: InitFn) -> InitFn:
        PROMPT_INITS[name] = fn
        return fn

    return deco


@register_init("random")
def init_random(backbone: Backbone, n_tokens: int, generator: torch.Generator, std: float = 0.02,
                **_: Any) -> torch.Tensor:
    """Normal(0, std) entries, (n, D)."""
    return torch.randn(n_tokens, backbone.hidden_size, generator=generator) * std


@register_init("vocab")
def init_vocab(backbone: Backbone, n_tokens: int, generator: torch.Generator, **_: Any):
    """Copies of n embeddings sampled (without replacement) from the non-special vocabulary."""
    table = backbone.input_embeddings.weight.detach().cpu()  # (V, D)
    special = backbone.special_ids
    candidates = torch.tensor([i for i in range(1000, table.shape[0]) if i not in special])
    if len(candidates) < n_tokens:
        candidates = torch.tensor([i for i in range(table.shape[0]) if i not in special])
    pick = candidates[torch.randperm(len(candidates), generator=generator)[:n_tokens]]
    return table[pick].clone()


@register_init("text")
def init_text(backbone: Backbone, n_tokens: int, generator: torch.Generator,
              text: str | None = None, **_: Any) -> torch.Tensor:
    """Embeddings of the tokens of ``text``, repeated or cut to n tokens."""
    if not text:
        raise ValueError("prompt init 'text' needs init_text")
    ids = backbone.tokenize(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"init_text {text!r} has no tokens")
    ids = (ids * (n_tokens // len(ids) + 1))[:n_tokens]
    return backbone.input_embeddings.weight.detach().cpu()[torch.tensor(ids)].clone()


@register_init("prompt")
def init_from_prompt(backbone: Backbone, n_tokens: int, generator: torch.Generator,
                     prompt: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
    """A copy of an existing prompt (transferable prompt tuning starts here)."""
    if prompt is None:
        raise ValueError("prompt init 'prompt' needs an existing prompt tensor or file")
    check_prompt_shape(prompt, backbone.hidden_size, n_tokens, where="init prompt")
    return prompt.detach().cpu().float().clone()


def init_prompt(kind: str, backbone: Backbone, n_tokens: int, seed: int, **kwargs: Any):
    """Make an initial prompt (n, D) with the named strategy, reproducibly from ``seed``."""
    if kind not in PROMPT_INITS:
        raise ValueError(f"unknown prompt init {kind!r}; known: {sorted(PROMPT_INITS)}")
    g = torch.Generator().manual_seed(seed)
    return PROMPT_INITS[kind](backbone, n_tokens, g, **kwargs)


# --- file format ---------------------------------------------------------------------------


def prompt_to_bytes(prompt: torch.Tensor, metadata: dict[str, Any]) -> bytes:
    """Serialise (n, D) prompt + JSON-able metadata to safetensors bytes."""
    meta = {"format_version": FORMAT_VERSION, **metadata}
    tensor = prompt.detach().cpu().float().contiguous()
    return st_save({TENSOR_NAME: tensor}, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def prompt_from_bytes(data: bytes, where: str = "prompt file", hidden_size: int | None = None,
                      n_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """Parse safetensors bytes into (prompt (n, D), metadata); clear errors for bad files.

    ``where`` (the file name or URI) starts every error message; ``hidden_size`` / ``n_tokens``,
    when given, are checked too (:func:`check_prompt_shape`), so a prompt that does not fit the
    model it is used with fails here, naming the file, instead of inside a forward pass.
    """
    try:
        tensors = st_load(data)
    except (SafetensorError, Exception) as e:  # noqa: BLE001 - any parse failure
        raise PromptFileError(f"{where}: not a valid safetensors file ({e})") from e
    if TENSOR_NAME not in tensors:
        raise PromptFileError(f"{where}: no tensor named {TENSOR_NAME!r} (has {list(tensors)})")
    prompt = tensors[TENSOR_NAME].float()
    check_prompt_shape(prompt, hidden_size, n_tokens, where=where)
    return prompt, prompt_metadata(data, where)


def save_prompt_file(path: str | Path, prompt: torch.Tensor, metadata: dict[str, Any]) -> None:
    Path(path).write_bytes(prompt_to_bytes(prompt, metadata))


def load_prompt_file(path: str | Path, hidden_size: int | None = None,
                     n_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    p = Path(path)
    if not p.exists():
        raise PromptFileError(f"prompt file {p} does not exist")
    return prompt_from_bytes(p.read_bytes(), str(p), hidden_size, n_tokens)
