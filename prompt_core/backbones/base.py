"""The small interface every backbone kind implements, and the helpers they share.

A backbone wraps a frozen pretrained model and its tokenizer. The training and evaluation loops
only ever call four things:

* ``encode(text_a, text_b)``      -> token id lists laid out for this kind (no padding yet)
* ``collate(items)``              -> a padded batch of tensors
* ``label_scorer(label_words)``   -> whatever this kind precomputes to score a task's labels
* ``logits(prompt, batch, scorer)`` -> (B, K) class logits for a soft prompt (or none)

so a new kind (seq2seq, causal) slots in by implementing these and registering itself.

For the transferability indicators (METHOD.md "model stimulation similarity", ON) every kind also
exposes its FFN neurons: :meth:`Backbone.ffn_modules` (the modules that carry the FFN
intermediate activation, found by a module-name suffix per kind: as their forward output, or as
the input of the FFN's output linear layer, see :data:`FFN_HOOKS`), :meth:`Backbone.stimulus`
(the prompt + the kind's empty-input layout, and the position(s) scoring reads),
:meth:`Backbone.ffn_activations` ((L, F) at those positions) and :meth:`Backbone.masked_neurons`
(zero chosen neurons during any forward pass inside the block).

Threads share one backbone (``cached_backbone``), and a fast tokenizer is not thread-safe (it
raises "Already borrowed" when two threads use it at once), so every tokenizer call goes through
:meth:`Backbone.tokenize`, which holds the backbone's lock; the ids the loops need per batch (pad,
mask, special ids) are read once at construction.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prompt_core.backbone_kinds import DEFAULT_ON_POSITION, OnPosition
from prompt_core.backbones.device import autocast, resolve_device
from prompt_core.backbones.ffn import (  # re-exported: the names other modules import from here
    FFN_HOOKS,
    POSITION_REDUCTIONS,
    FfnRead,
    Reduce,
    Stimulus,
)
from prompt_core.errors import InputError
from prompt_core.prompt_file import check_prompt_shape

__all__ = [
    "FFN_HOOKS", "POSITION_REDUCTIONS", "Backbone", "EncodeError", "Encoded", "FfnRead",
    "LengthError", "Reduce", "Stimulus", "config_positions", "pad_batch", "position_table",
    "prepend_prompt", "usable_positions"]


class LengthError(InputError):
    """Prompt + text do not fit the model's positions, or leave no room for the text."""


class EncodeError(InputError):
    """An example cannot be laid out for a backbone kind (e.g. no room for its mask token).

    ``index`` is the example's position in the list being encoded, when known.
    """

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


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
    Padding positions of the input keep their 0 in the mask. ``prompt`` may also be one prompt
    per row, (B, n, D) (several prompts scored or trained in one forward pass).
    """
    if prompt is None:
        return embeds, attention_mask
    B = embeds.shape[0]
    if prompt.ndim == 3:  # one prompt per row
        if prompt.shape[0] != B:
            raise ValueError(f"prepend_prompt: {prompt.shape[0]} row prompts for {B} rows")
        p = prompt.to(embeds.dtype)  # (B, n, D)
    else:
        p = prompt.to(embeds.dtype).unsqueeze(0).expand(B, -1, -1)  # (B, n, D)
    ones = attention_mask.new_ones(B, prompt.shape[-2])  # (B, n)
    return torch.cat([p, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


def position_table(model: nn.Module) -> nn.Embedding | None:
    """The learned absolute position embedding table of ``model``, or None (e.g. relative or
    rotary positions): ``embeddings.position_embeddings`` of the base model, else the first
    module named ``*position_embeddings`` that is an ``nn.Embedding``."""
    base = getattr(model, "base_model", model)
    table = getattr(getattr(base, "embeddings", None), "position_embeddings", None)
    if isinstance(table, nn.Embedding):
        return table
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding):
            return module
    return None


def usable_positions(model: nn.Module) -> tuple[int | None, int]:
    """(positions an input may use, index of the first position id) for ``model``.

    BERT-style tables start at position 0: all ``max_position_embeddings`` are usable. Tables
    with a padding row (RoBERTa, XLM-R, CamemBERT, ...: ``nn.Embedding(..., padding_idx=p)``)
    number real tokens from ``p + 1``, so ``num_embeddings - p - 1`` are usable (514 -> 512).
    Without a table the config's ``max_position_embeddings`` is the limit, if it has one.
    """
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    table = position_table(model)
    if table is None:
        return limit, 0
    offset = 0 if table.padding_idx is None else table.padding_idx + 1
    usable = table.num_embeddings - offset
    return (usable if limit is None else min(limit, usable)), offset


def config_positions(config: Any) -> tuple[int | None, int]:
    """:func:`usable_positions` from a model config alone (no weights): the model is built on
    PyTorch's meta device, which allocates nothing. Falls back to the config's
    ``max_position_embeddings`` (offset 0) when transformers cannot build it."""
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except Exception:  # noqa: BLE001 - unknown architecture: the config's number is all we have
        return getattr(config, "max_position_embeddings", None), 0
    return usable_positions(model)


def pad_batch(items: list[Encoded], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples: ids/type ids/mask, each (B, T) long.

    Built in one go with numpy (no tensor per example): the rows' ids are concatenated and
    written through the (B, T) mask of real positions, which numpy fills in row-major order, i.e.
    row by row, each row's tokens from the left.
    """
    B = len(items)
    if not B:
        raise ValueError("pad_batch: no examples")
    lengths = np.fromiter((len(it.input_ids) for it in items), dtype=np.int64, count=B)
    total = int(lengths.sum())
    if sum(len(it.token_type_ids) for it in items) != total:
        bad = next(i for i, it in enumerate(items) if len(it.token_type_ids) != lengths[i])
        raise ValueError(f"pad_batch: example {bad} has {lengths[bad]} input ids but "
                         f"{len(items[bad].token_type_ids)} token type ids")
    T = int(lengths.max())
    real = np.arange(T) < lengths[:, None]  # (B, T) bool
    ids = np.full((B, T), pad_id, dtype=np.int64)
    ids[real] = np.fromiter(chain.from_iterable(it.input_ids for it in items), np.int64, total)
    types = np.zeros((B, T), dtype=np.int64)
    types[real] = np.fromiter(chain.from_iterable(it.token_type_ids for it in items), np.int64,
                              total)
    return {
        "input_ids": torch.from_numpy(ids).to(device),
        "token_type_ids": torch.from_numpy(types).to(device),
        "attention_mask": torch.from_numpy(real.astype(np.int64)).to(device),
    }


class Backbone(ABC):
    """A frozen model that scores a task's label words for (soft prompt + text) inputs."""

    kind: ClassVar[str]
    default_model_id: ClassVar[str]
    default_lr: ClassVar[float]
    layout_words: ClassVar[str] = "special tokens"  # what layout_tokens counts, for messages
    # the kind's forward pass is known to be sound under bf16 autocast (BERT-style encoders)
    supports_bf16: ClassVar[bool] = False
    # name suffix of the modules that carry the FFN intermediate activation (after the first FFN
    # linear layer and the activation), (B, T, F), read as ffn_read says (FFN_HOOKS):
    # BERT/RoBERTa's ``layer.N.intermediate``, whose output it is; kinds with other architectures
    # override both. A tuple: alternatives for several architectures, the first that matches
    ffn_module_suffix: ClassVar[str | tuple[str, ...]] = "intermediate"
    ffn_read: ClassVar[FfnRead] = "output"

    def __init__(self, model: nn.Module, tokenizer: Any, model_id: str, device: str = "cpu"):
        device = resolve_device(device)  # "auto" -> cuda/cpu; a missing GPU is an InputError
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # the raw tokenizer: call it only through tokenize() (or under _tokenizer_lock)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self._positions = usable_positions(self.model)  # (usable, first position id)
        self.device = torch.device(device)
        # fast tokenizers raise "Already borrowed" when two threads tokenise at once; reentrant,
        # so encode_many can hold it around the encode() calls that tokenize
        self._tokenizer_lock = threading.RLock()
        with self._tokenizer_lock:
            self.pad_token_id: int = tokenizer.pad_token_id or 0
            self.special_ids: frozenset[int] = frozenset(tokenizer.all_special_ids)
            self._n_special_pair: int = tokenizer.num_special_tokens_to_add(pair=True)

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls, model_id: str, revision: str | None = None, device: str = "cpu", **options: Any
    ) -> Backbone:
        """Load model and tokenizer (hub id or local directory)."""

    def autocast(self, bf16: bool) -> AbstractContextManager:
        """Context for this backbone's forward passes: bf16 autocast when ``bf16`` is asked for,
        the kind supports it and the device is a GPU with bf16 (see
        :func:`~prompt_core.backbones.device.autocast`); else a no-op."""
        return autocast(self.device, bf16 and self.supports_bf16)

    @property
    def hidden_size(self) -> int:
        return self.input_embeddings.embedding_dim

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The word embedding table (V, D) the soft prompt lives beside."""
        return self.model.get_input_embeddings()

    @property
    def max_positions(self) -> int | None:
        """Longest input (prompt + text tokens, special tokens included) the model's position
        embeddings allow (see :func:`usable_positions`); None when it has no fixed limit."""
        return self._positions[0]

    @property
    def layout_tokens(self) -> int:
        """Tokens this kind's input layout adds to the text (special tokens of a text pair)."""
        return self._n_special_pair

    def check_lengths(self, n_tokens: int, max_length: int) -> None:
        """Fail early, with the numbers, when prompt + text cannot fit the model (before any
        forward pass). ``max_length`` counts the text's tokens including the special tokens."""
        if max_length <= self.layout_tokens:
            raise LengthError(
                f"{self.model_id}: max_length {max_length} leaves no room for text: an input "
                f"of kind {self.kind!r} takes {self.layout_tokens} tokens of layout "
                f"({self.layout_words}); raise max_length"
            )
        limit, offset = self._positions
        if limit is not None and n_tokens + max_length > limit:
            how = ""
            if offset:
                total = getattr(self.model.config, "max_position_embeddings", limit + offset)
                how = f" (max_position_embeddings {total}, position ids start at {offset})"
            raise LengthError(
                f"{self.model_id}: n_tokens {n_tokens} + max_length {max_length} (special tokens "
                f"included) = {n_tokens + max_length} exceeds the {limit} positions the model can "
                f"use{how}; lower n_tokens or max_length"
            )

    def tokenize(self, text: str | list[str], text_pair: str | list[str] | None = None,
                 **kwargs: Any) -> Any:
        """Call the tokenizer under the backbone's lock: the one way to tokenise (thread-safe)."""
        with self._tokenizer_lock:
            return self.tokenizer(text, text_pair, **kwargs)

    def tokenizer_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Another tokenizer method (``decode``, ``apply_chat_template``) under the lock."""
        with self._tokenizer_lock:
            return getattr(self.tokenizer, method)(*args, **kwargs)

    def token_type_ids(self, encoding: dict) -> list[int]:
        ids = encoding["input_ids"]
        return encoding.get("token_type_ids") or [0] * len(ids)

    @abstractmethod
    def encode(self, text_a: str, text_b: str | None, max_length: int) -> Encoded:
        """Tokenise one example in this kind's input layout."""

    def encode_many(
        self, text_a: list[str], text_b: list[str | None], max_length: int
    ) -> list[Encoded]:
        """``encode`` each pair; an :class:`EncodeError` names the failing example's index."""
        out = []
        with self._tokenizer_lock:
            for i, (a, b) in enumerate(zip(text_a, text_b, strict=True)):
                try:
                    out.append(self.encode(a, b, max_length))
                except EncodeError as e:
                    raise EncodeError(f"example {i}: {e}", index=i) from e
        return out

    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        return pad_batch(items, self.pad_token_id, self.device)

    @abstractmethod
    def label_scorer(self, label_words: tuple[str, ...] | list[str]) -> Any:
        """Precompute what scoring these label words needs (token ids, label embeddings...)."""

    @abstractmethod
    def logits(
        self, prompt: torch.Tensor | None, batch: dict[str, torch.Tensor], scorer: Any
    ) -> torch.Tensor:
        """Class logits (B, K) for the batch with ``prompt`` (n, D) prepended, or no prompt."""

    # optional split of logits = score_features(features(prompt, batch), scorer), which lets
    # several prompts (one per row, (B, n, D)) share one forward pass (prompt_core.multi_prompt);
    # a kind without it is scored one prompt at a time
    def features(self, prompt: torch.Tensor | None, batch: dict[str, torch.Tensor]) -> Any:
        """The frozen forward pass, label-independent: per-row features (a tensor, or a tuple of
        tensors, rows along dim 0) for :meth:`score_features`; ``prompt`` (n, D), (B, n, D) or
        None."""
        raise NotImplementedError(f"backbone kind {self.kind!r} does not split its logits")

    def score_features(self, features: Any, scorer: Any) -> torch.Tensor:
        """Class logits (B, K) from :meth:`features` rows and a :meth:`label_scorer`."""
        raise NotImplementedError(f"backbone kind {self.kind!r} does not split its logits")

    def embed_with_prompt(
        self, prompt: torch.Tensor | None, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Model kwargs with the prompt prepended: inputs_embeds (B, n+T, D), mask, type ids.
        ``prompt``: (n, D), one per row (B, n, D) (see :func:`prepend_prompt`), or None."""
        embeds = self.input_embeddings(batch["input_ids"])  # (B, T, D)
        embeds, mask = prepend_prompt(embeds, batch["attention_mask"], prompt)
        types = batch["token_type_ids"]
        if prompt is not None:
            types = torch.cat([types.new_zeros(types.shape[0], prompt.shape[-2]), types], dim=1)
        return {"inputs_embeds": embeds, "attention_mask": mask, "token_type_ids": types}

    # --- FFN neurons (transferability indicator ON, neuron masking) ---------------------------

    def ffn_scope(self) -> tuple[str, nn.Module]:
        """(name, module) of the part of the model whose FFN layers ON reads: the whole model;
        an encoder-decoder kind narrows it (T5: the decoder)."""
        return "", self.model

    def ffn_named_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every module named ``*.{suffix}`` in :meth:`ffn_scope` (the first
        of ``ffn_module_suffix`` that matches), in layer order (the model's registration order).

        Raises ValueError when there is none, or when one module serves several layers (hooks on
        it could not tell the layers apart).
        """
        suffixes = self.ffn_module_suffix
        suffixes = (suffixes,) if isinstance(suffixes, str) else suffixes
        prefix, scope = self.ffn_scope()
        named = list(scope.named_modules(prefix=prefix, remove_duplicate=False))
        found: list[tuple[str, nn.Module]] = []
        for suffix in suffixes:
            found = [(name, m) for name, m in named
                     if name == suffix or name.endswith("." + suffix)]
            if found:
                break
        if not found:
            names = " or ".join(f"'*.{s}'" for s in suffixes)
            raise ValueError(
                f"{self.model_id}: no FFN activation module named {names} in "
                f"{type(self.model).__name__} (backbone kind {self.kind!r}); the FFN indicators "
                "need this kind's architecture (set ffn_module_suffix for others)"
            )
        if len({id(m) for _, m in found}) != len(found):
            raise ValueError(f"{self.model_id}: one '*.{suffix}' module serves several layers; "
                             "its FFN activations cannot be told apart by layer")
        return found

    def ffn_modules(self) -> list[nn.Module]:
        """The L modules, in layer order, that carry the FFN intermediate activation (B, T, F)
        (see :meth:`ffn_named_modules`; read through :meth:`hook_ffn`)."""
        return [m for _, m in self.ffn_named_modules()]

    def hook_ffn(self, module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]
                 ) -> RemovableHandle:
        """Hook ``fn`` on one of :meth:`ffn_modules` so that it sees that layer's FFN
        intermediate activation (B, T, F) in every forward pass, where this kind carries it
        (``ffn_read``, :data:`FFN_HOOKS`); a tensor ``fn`` returns replaces the activation."""
        return FFN_HOOKS[self.ffn_read](module, fn)

    def stimulus(self, prompt: torch.Tensor | None,
                 on_position: OnPosition = DEFAULT_ON_POSITION) -> Stimulus:
        """The ON input for ``prompt`` (n, D) (None: no prompt): prompt + this kind's empty-input
        layout (no task text) and the positions scoring reads (see :class:`Stimulus`).
        ``on_position`` (``IndicatorsConfig.on_position``) picks them where a kind reads several
        (the encoder kind); kinds that read one position ignore it."""
        raise NotImplementedError(f"backbone kind {self.kind!r} defines no ON stimulus")

    def _stimulus_prompt(self, prompt: torch.Tensor | None) -> torch.Tensor | None:
        """``prompt`` checked to be (n, D) for this model, as float32 on the device."""
        if prompt is None:
            return None
        check_prompt_shape(prompt.detach(), self.hidden_size,
                           where=f"soft prompt for {self.model_id}")
        return prompt.detach().to(self.device, torch.float32)

    def _empty_input(self) -> dict[str, torch.Tensor]:
        """The empty text (no task text) in this kind's layout, collated: tensors (1, T)."""
        return self.collate([self.encode("", None, self.layout_tokens + 32)])

    def ffn_activations(self, prompt: torch.Tensor | None,
                        on_position: OnPosition = DEFAULT_ON_POSITION) -> torch.Tensor:
        """FFN intermediate activations of the ON stimulus of ``prompt`` (n, D): (L, F) float32
        on the CPU, row l = layer l's activations at the stimulus position(s) (several combined
        by the stimulus's ``reduce``); ``on_position`` picks them (:meth:`stimulus`).

        One forward pass under ``torch.no_grad`` with hooks (:meth:`hook_ffn`) on
        :meth:`ffn_modules` (always removed; they ignore forward passes of other threads sharing
        the backbone). Hooks already on those modules run first, so inside
        :meth:`masked_neurons` the masked neurons read 0.
        """
        stim = self.stimulus(prompt, on_position)
        modules = self.ffn_modules()
        if len(stim.positions) != len(modules):
            raise RuntimeError(f"{self.kind} stimulus gives positions for {len(stim.positions)} "
                               f"layers, the model has {len(modules)} FFN layers")
        outputs: list[torch.Tensor | None] = [None] * len(modules)

        owner = threading.get_ident()

        def keeper(layer: int):
            def keep(acts: torch.Tensor) -> None:  # (1, S, F)
                if threading.get_ident() == owner:
                    outputs[layer] = acts.detach()
            return keep

        handles = []
        try:
            for layer, module in enumerate(modules):
                handles.append(self.hook_ffn(module, keeper(layer)))
            with torch.no_grad():
                self.model(**stim.model_kwargs)
        finally:
            for h in handles:
                h.remove()
        missing = [i for i, out in enumerate(outputs) if out is None]
        if missing:
            raise RuntimeError(f"{self.model_id}: FFN layer(s) {missing} did not run")
        reduce = POSITION_REDUCTIONS[stim.reduce]
        rows = [reduce(out[0, pos].float())  # (P, F) -> (F,)
                for out, pos in zip(outputs, stim.positions, strict=True)]
        return torch.stack(rows).cpu()  # (L, F)

    @property
    def ffn_shape(self) -> tuple[int, int]:
        """(L, F): FFN layers x intermediate neurons per layer (from one tiny forward pass of a
        1-token zero prompt, once per backbone)."""
        shape = getattr(self, "_ffn_shape", None)
        if shape is None:
            zero = torch.zeros(1, self.hidden_size)
            shape = self._ffn_shape = tuple(self.ffn_activations(zero).shape)
        return shape

    @contextmanager
    def masked_neurons(self, mask: torch.Tensor) -> Iterator[None]:
        """Zero the neurons where ``mask`` (L, F) bool is True, at every position, in every
        forward pass of this backbone's model inside the block (hooks on :meth:`ffn_modules`,
        :meth:`hook_ffn`, removed on exit), so the usual scoring code scores with them masked.
        Where the kind reads the input of the FFN's output linear layer, that input is masked:
        the layer sees 0 for those neurons.

        Only forward passes run by the thread that opened the block are masked: threads share
        one backbone (:func:`~prompt_core.backbones.cached_backbone`), and the hooks are on its
        model, so the others' scoring is left alone.
        """
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"neuron mask must be a bool tensor (L, F), got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != self.ffn_shape:
            L, F = self.ffn_shape
            raise ValueError(
                f"neuron mask shape {tuple(mask.shape)} does not match {self.model_id}: expected "
                f"({L}, {F}) ({L} FFN layers x {F} intermediate neurons)"
            )
        rows = mask.to(self.device)
        owner = threading.get_ident()

        def zeroer(layer: int):
            def zero(acts: torch.Tensor) -> torch.Tensor | None:  # (B, T, F)
                if threading.get_ident() != owner:
                    return None  # another thread's forward pass: unchanged
                return acts.masked_fill(rows[layer], 0)  # (F,) broadcast over (B, T, F)
            return zero

        handles = []
        try:
            for layer, module in enumerate(self.ffn_modules()):
                handles.append(self.hook_ffn(module, zeroer(layer)))
            yield
        finally:
            for h in handles:
                h.remove()
