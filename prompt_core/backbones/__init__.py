"""Backbone kinds behind one interface; ``BACKBONES`` maps kind -> adapter class.

What a study sees of each kind (default model, learning rate, options) is declared without
torch in :mod:`prompt_core.backbone_kinds`; registering a class checks that they agree.
"""

from __future__ import annotations

import inspect
import threading
import typing
from typing import Any

from prompt_core.backbone_kinds import KINDS, MINILM_ID, NO_DEFAULT, KindSpec, declare_kind
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
from prompt_core.backbones.encoder import EncoderBackbone
from prompt_core.backbones.mlm import MaskTokenError, MLMBackbone
from prompt_core.backbones.seq2seq import LabelTargets, Seq2SeqBackbone

BACKBONES: dict[str, type[Backbone]] = {}


def _params(fn: Any) -> dict[str, inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in inspect.signature(fn).parameters.items()
            if n not in ("self", "cls") and p.kind in kinds}


def kind_spec_of(cls: type[Backbone]) -> KindSpec:
    """What a backbone class offers a study: its defaults, and as options the keyword
    parameters its ``from_pretrained`` and constructor add to those every backbone takes
    (type ``Any`` when unannotated)."""
    common = {*_params(Backbone.__init__), *_params(Backbone.from_pretrained)}
    options: dict[str, tuple[Any, Any]] = {}
    for fn in (cls.from_pretrained, cls.__init__):
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - an unresolvable annotation only skips the type check
            hints = {}
        for name, p in _params(fn).items():
            if name in common:
                continue
            typ, default = options.get(name, (hints.get(name, Any), NO_DEFAULT))
            options[name] = (typ, p.default if default is NO_DEFAULT else default)
    return KindSpec(cls.kind, cls.default_model_id, cls.default_lr, options)


def register_backbone(cls: type[Backbone]) -> type[Backbone]:
    """Make ``cls`` the class of its kind. A kind declared in
    :mod:`prompt_core.backbone_kinds` must match the class (TypeError naming the difference);
    another kind (a plug-in) is declared from the class, so studies may name it."""
    spec = kind_spec_of(cls)
    declared = KINDS.get(cls.kind)
    if declared is None:
        declare_kind(spec)
    elif declared != spec:
        raise TypeError(f"{cls.__name__} does not match its kind {cls.kind!r} in "
                        f"prompt_core.backbone_kinds: the class says {spec}, the declaration "
                        f"{declared}")
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
    "cached_backbone", "config_positions", "kind_spec_of", "load_backbone", "prepend_prompt",
    "register_backbone", "resolve_device", "usable_positions",
]
