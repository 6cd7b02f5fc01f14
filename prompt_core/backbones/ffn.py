"""The FFN neurons of a backbone for the transferability indicators (METHOD.md "model
stimulation similarity", ON): the :class:`Stimulus` a kind feeds its model, how the
activations at several positions combine (:data:`POSITION_REDUCTIONS`), and the hooks that
read (or replace) a kind's FFN intermediate activation (:data:`FFN_HOOKS`).

:class:`~prompt_core.backbones.base.Backbone` uses these; :mod:`prompt_core.backbones.base`
re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Reduce = Literal["max", "mean"]

# how the activations (P, F) of the P positions a stimulus reads become one row (F,): "max" (a
# neuron activated, > 0, at any of them reads > 0, with its largest value) or "mean"
POSITION_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max": lambda acts: acts.amax(dim=0),  # (P, F) -> (F,)
    "mean": lambda acts: acts.mean(dim=0),  # (P, F) -> (F,)
}


@dataclass
class Stimulus:
    """The ON input of one prompt (METHOD.md): the prompt + the kind's empty-input layout.

    ``model_kwargs``: keyword arguments for one forward of ``backbone.model`` on a batch of one
    (e.g. ``inputs_embeds`` (1, n+T, D), ``attention_mask`` (1, n+T)); ``positions``: for each FFN
    layer, in :meth:`Backbone.ffn_modules` order (L lists), the positions of that layer's
    sequence whose activations are read; ``reduce``: how several positions combine
    (:data:`POSITION_REDUCTIONS`; one position reads the same under both).
    """

    model_kwargs: dict[str, Any]
    positions: list[list[int]]
    reduce: Reduce = "max"


FfnRead = Literal["output", "input"]


def hook_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]
                 ) -> RemovableHandle:
    """``fn`` sees the module's forward output (B, T, F); a tensor it returns replaces it."""
    return module.register_forward_hook(lambda _module, _args, output: fn(output))


def hook_input(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]
                ) -> RemovableHandle:
    """``fn`` sees the module's first positional input (B, T, F) before the module runs (a
    forward pre-hook); a tensor it returns replaces that input."""
    def pre(_module, args):
        new = fn(args[0])
        return None if new is None else (new, *args[1:])
    return module.register_forward_pre_hook(pre)


# where a kind's FFN modules carry the intermediate activation: "output", the forward output of
# the activation module (BERT's ``intermediate``); "input", the input of the FFN's output linear
# layer (T5's ``DenseReluDense.wo``, GPT-2's ``mlp.c_proj``, Llama's ``mlp.down_proj``), which
# in a gated FFN is the product act(gate x) * (up x), not the gate alone
FFN_HOOKS: dict[str, Callable[..., RemovableHandle]] = {
    "output": hook_output,
    "input": hook_input,
}
