"""Masked LMs (BERT/RoBERTa): verbalizer logits at the mask position.

Input layout (METHOD.md): ``[P] <cls> <mask> text_a <sep> text_b <sep>``. The class logit of a
label word is the MLM logit of its token at the mask (mean over sub-tokens if it has several).
Truncation shortens the text, never the mask: an input always has its mask at the same place.
"""

from __future__ import annotations

from typing import Any

import torch

from prompt_core.backbone_kinds import DEFAULT_ON_POSITION, OnPosition
from prompt_core.backbones.base import Backbone, Encoded, EncodeError, Stimulus
from prompt_core.errors import InputError


class MaskTokenError(InputError):
    """The model's tokenizer has no usable mask token, so it cannot be an ``mlm`` backbone."""


class MLMBackbone(Backbone):
    kind = "mlm"
    default_model_id = "FacebookAI/roberta-base"
    default_lr = 1e-3  # RoBERTa-base in the paper's code
    layout_words = "special tokens + the mask"
    supports_bf16 = True

    @classmethod
    def from_pretrained(cls, model_id, revision=None, device="cpu", **options: Any):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_id, revision=revision)
        check_mask_token(tok, model_id)  # before loading the weights
        model = AutoModelForMaskedLM.from_pretrained(model_id, revision=revision)
        return cls(model, tok, model_id, device, **options)

    def __init__(self, model, tokenizer, model_id, device="cpu", **options: Any):
        if options:
            raise ValueError(f"backbone kind 'mlm' takes no options, got {sorted(options)}")
        check_mask_token(tokenizer, model_id, model.get_input_embeddings().num_embeddings)
        super().__init__(model, tokenizer, model_id, device)
        self.mask_token: str = tokenizer.mask_token
        self.mask_token_id: int = tokenizer.mask_token_id
        # BERT (bert + cls) and RoBERTa (roberta + lm_head) are a body and one head: run the
        # head at the mask position only instead of over every position (B x T x V logits).
        heads = [m for m in model.children() if m is not model.base_model]
        self._head = heads[0] if len(heads) == 1 and model.base_model is not model else None
        with self._tokenizer_lock:
            # byte-level BPE (RoBERTa) marks word starts with a leading space
            self._word_prefix = " " if tokenizer.tokenize(" a")[0].startswith("Ġ") else ""
        # where the layout puts the mask: after the leading special tokens (1 for BERT/RoBERTa)
        probe = self.tokenize(f"{self.mask_token} a", "b")["input_ids"]
        if self.mask_token_id not in probe:
            raise MaskTokenError(
                f"model {model_id!r}: the tokenizer splits its mask token {self.mask_token!r} "
                "instead of keeping it as one token"
            )
        self._mask_pos = probe.index(self.mask_token_id)

    @property
    def layout_tokens(self) -> int:
        return self._n_special_pair + 1  # + the mask

    def encode(self, text_a, text_b, max_length):
        first = f"{self.mask_token} {text_a}"
        enc = self.tokenize(first, text_b, truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        if len(ids) > self._mask_pos and ids[self._mask_pos] == self.mask_token_id:
            return Encoded(ids, self.token_type_ids(enc))
        # the tokenizer's truncation cut the mask (left truncation side, or max_length too
        # small for both segments): shorten the texts ourselves instead
        return self._truncate_keeping_mask(first, text_b, max_length)

    def _truncate_keeping_mask(self, first: str, text_b: str | None, max_length: int) -> Encoded:
        """Encode untruncated, then drop text tokens (longest segment first, from the end, or
        from the start after the mask for a left-truncating tokenizer) until it fits."""
        enc = self.tokenize(first, text_b, truncation=False, return_special_tokens_mask=True)
        ids, types = enc["input_ids"], self.token_type_ids(enc)
        p = self._mask_pos
        if len(ids) <= p or ids[p] != self.mask_token_id:
            raise EncodeError(
                f"{self.model_id}: the tokenizer did not put the mask token at position {p}"
            )
        keep = [bool(s) or i == p for i, s in enumerate(enc["special_tokens_mask"])]
        runs: list[list[int]] = []  # positions of each text segment's tokens
        for i, k in enumerate(keep):
            if not k and (not runs or runs[-1][-1] != i - 1):
                runs.append([i])
            elif not k:
                runs[-1].append(i)
        excess = len(ids) - max_length
        n_text = sum(len(r) for r in runs)
        if excess > n_text:
            raise EncodeError(
                f"{self.model_id}: max_length {max_length} leaves no room for the mask token: "
                f"the layout alone takes {len(ids) - n_text} tokens ({self.layout_words}); "
                "raise max_length"
            )
        from_left = getattr(self.tokenizer, "truncation_side", "right") == "left"
        drop = set()
        for _ in range(excess):
            longest = max(range(len(runs)), key=lambda j: (len(runs[j]), j))  # ties: later one
            drop.add(runs[longest].pop(0 if from_left else -1))
        kept = [i for i in range(len(ids)) if i not in drop]
        return Encoded([ids[i] for i in kept], [types[i] for i in kept])

    def label_scorer(self, label_words) -> list[list[int]]:
        """Token ids of each label word (K lists)."""
        ids = []
        for w in label_words:
            toks = self.tokenize(self._word_prefix + w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"label word {w!r} has no tokens in {self.model_id}")
            ids.append(toks)
        return ids

    def logits(self, prompt, batch, scorer):
        return self.score_features(self.features(prompt, batch), scorer)  # (B, K)

    def features(self, prompt, batch):
        """MLM logits (B, V) float32 at each row's mask; ``prompt`` (n, D), one per row
        (B, n, D), or None."""
        is_mask = batch["input_ids"] == self.mask_token_id  # (B, T)
        has_mask = is_mask.any(dim=1)  # (B,)
        if not bool(has_mask.all()):
            rows = (~has_mask).nonzero().flatten().tolist()
            raise EncodeError(
                f"{self.model_id}: batch row(s) {rows} have no {self.mask_token} token to score; "
                "build inputs with this backbone's encode(), which always keeps the mask",
                index=rows[0],
            )
        kw = self.embed_with_prompt(prompt, batch)
        n = 0 if prompt is None else prompt.shape[-2]
        pos = is_mask.int().argmax(dim=1) + n  # (B,) first mask, shifted past the prompt
        rows = torch.arange(pos.shape[0], device=pos.device)
        if self._head is not None:
            hidden = self.model.base_model(**kw).last_hidden_state  # (B, n+T, D)
            at_mask = self._head(hidden[rows, pos])  # (B, V)
        else:
            at_mask = self.model(**kw).logits[rows, pos]  # (B, V)
        return at_mask.float()  # (B, V) float32: bf16 under autocast

    def score_features(self, features, scorer):
        """Each label word's mean MLM logit over its tokens: (B, V) -> (B, K)."""
        return torch.stack([features[:, ids].mean(dim=1) for ids in scorer], dim=1)

    def stimulus(self, prompt, on_position: OnPosition = DEFAULT_ON_POSITION):
        """ON input (METHOD.md): ``[P] <cls> <mask> <sep>`` (the empty text in :meth:`encode`'s
        layout), read at the mask position in every FFN layer (one position: ``on_position``
        does not change it)."""
        p = self._stimulus_prompt(prompt)
        batch = self._empty_input()  # (1, T)
        kw = self.embed_with_prompt(p, batch)  # (1, n+T, D)
        n = 0 if p is None else p.shape[0]
        at_mask = n + batch["input_ids"][0].tolist().index(self.mask_token_id)
        return Stimulus(kw, [[at_mask]] * len(self.ffn_modules()))


def check_mask_token(tokenizer: Any, model_id: str, vocab_rows: int | None = None) -> None:
    """Fail at load, clearly, when ``tokenizer`` has no mask token the model can score."""
    mask, mask_id = tokenizer.mask_token, tokenizer.mask_token_id
    if mask is None or mask_id is None:
        raise MaskTokenError(
            f"model {model_id!r}: its tokenizer has no mask token, so it cannot be used as an "
            "'mlm' backbone (a masked language model); use kind 'encoder' for it"
        )
    if mask_id == tokenizer.unk_token_id and mask != tokenizer.unk_token:
        raise MaskTokenError(
            f"model {model_id!r}: the mask token {mask!r} is not in the tokenizer's vocabulary"
        )
    if vocab_rows is not None and mask_id >= vocab_rows:
        raise MaskTokenError(
            f"model {model_id!r}: mask token id {mask_id} is outside the model's {vocab_rows} "
            "word embeddings (tokenizer and model do not match)"
        )
