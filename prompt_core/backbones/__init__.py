"""Backbone kinds behind one interface; ``BACKBONES`` maps kind -> adapter class."""

from __future__ import annotations

import threading
from typing import Any

from prompt_core.backbones.base import (
    Backbone,
    Encoded,
    EncodeError,
    LengthError,
    config_positions,
    prepend_prompt,
    usable_positions,
)
from prompt_core.backbones.causal import CausalBackbone, LabelWordError
from prompt_core.backbones.device import autocast, bf16_active, resolve_device
from prompt_core.backbones.encoder import MINILM_ID, EncoderBackbone
from prompt_core.backbones.mlm import MaskTokenError, MLMBackbone
from prompt_core.backbones.seq2seq import LabelTargets, Seq2SeqBackbone

BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(cls: type[Backbone]) -> type[Backbone]:
    BACKBONES[cls.kind] = cls
    return cls


register_backbone(EncoderBackbone)
register_backbone(MLMBackbone)
register_backbone(Seq2SeqBackbone)
register_backbone(CausalBackbone)


def backbone_class(kind: str) -> type[Backbone]:
    try:
        return BACKBONES[kind]
    except KeyError:
        raise ValueError(
            f"unknown backbone kind {kind!r}; known kinds: {sorted(BACKBONES)}"
        ) from None


def load_backbone(
    kind: str, model_id: str | None = None, revision: str | None = None, device: str = "cpu",
    **options: Any,
) -> Backbone:
    """Load a backbone of ``kind`` (default model of the kind when ``model_id`` is None) onto
    ``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``; see :func:`resolve_device`)."""
    cls = backbone_class(kind)
    device = resolve_device(device)  # before loading weights: a missing GPU fails fast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return cls.from_pretrained(model_id or cls.default_model_id, revision, device, **options)


_cache: dict[tuple, Backbone] = {}
_lock = threading.Lock()


def cached_backbone(
    kind: str, model_id: str | None = None, revision: str | None = None, device: str = "cpu",
    **options: Any,
) -> Backbone:
    """Like :func:`load_backbone`, but one instance per process and arguments (models are
    frozen, so training and evaluation threads can share it). ``auto`` and the device it
    resolves to share one instance."""
    device = resolve_device(device)
    key = (kind, model_id, revision, device, tuple(sorted(options.items())))
    with _lock:
        if key not in _cache:
            _cache[key] = load_backbone(kind, model_id, revision, device, **options)
        return _cache[key]


__all__ = [
    "BACKBONES", "Backbone", "CausalBackbone", "Encoded", "EncodeError", "EncoderBackbone",
    "LengthError",
    "LabelTargets", "LabelWordError", "MINILM_ID", "MLMBackbone", "MaskTokenError",
    "Seq2SeqBackbone", "autocast", "backbone_class", "bf16_active",
    "cached_backbone", "config_positions", "load_backbone", "prepend_prompt",
    "register_backbone", "resolve_device", "usable_positions",
]
