"""Masked LMs (BERT/RoBERTa): verbalizer logits at the mask position.

Input layout (METHOD.md): ``[P] <cls> <mask> text_a <sep> text_b <sep>``. The class logit of a
label word is the MLM logit of its token at the mask (mean over sub-tokens if it has several).
"""

from __future__ import annotations

from typing import Any

import torch

from prompt_core.backbones.base import Backbone, Encoded


class MLMBackbone(Backbone):
    kind = "mlm"
    default_model_id = "FacebookAI/roberta-base"
    default_lr = 1e-3  # RoBERTa-base in the paper's code

    @classmethod
    def from_pretrained(cls, model_id, revision=None, device="cpu", **options: Any):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_id, revision=revision)
        model = AutoModelForMaskedLM.from_pretrained(model_id, revision=revision)
        return cls(model, tok, model_id, device, **options)

    def __init__(self, model, tokenizer, model_id, device="cpu", **options: Any):
        if options:
            raise ValueError(f"backbone kind 'mlm' takes no options, got {sorted(options)}")
        super().__init__(model, tokenizer, model_id, device)
        if tokenizer.mask_token_id is None:
            raise ValueError(f"model {model_id!r}: tokenizer has no mask token; not an MLM")
        # BERT (bert + cls) and RoBERTa (roberta + lm_head) are a body and one head: run the
        # head at the mask position only instead of over every position (B x T x V logits).
        heads = [m for m in model.children() if m is not model.base_model]
        self._head = heads[0] if len(heads) == 1 and model.base_model is not model else None
        # byte-level BPE (RoBERTa) marks word starts with a leading space
        self._word_prefix = " " if tokenizer.tokenize(" a")[0].startswith("Ġ") else ""

    def encode(self, text_a, text_b, max_length):
        first = f"{self.tokenizer.mask_token} {text_a}"
        enc = self.tokenizer(first, text_b, truncation=True, max_length=max_length)
        return Encoded(enc["input_ids"], self.token_type_ids(enc))

    def label_scorer(self, label_words) -> list[list[int]]:
        """Token ids of each label word (K lists)."""
        ids = []
        for w in label_words:
            with self._tokenizer_lock:
                enc = self.tokenizer(self._word_prefix + w, add_special_tokens=False)
            toks = enc["input_ids"]
            if not toks:
                raise ValueError(f"label word {w!r} has no tokens in {self.model_id}")
            ids.append(toks)
        return ids

    def logits(self, prompt, batch, scorer):
        kw = self.embed_with_prompt(prompt, batch)
        n = 0 if prompt is None else prompt.shape[0]
        is_mask = batch["input_ids"] == self.tokenizer.mask_token_id  # (B, T)
        pos = is_mask.int().argmax(dim=1) + n  # (B,) first mask, shifted past the prompt
        rows = torch.arange(pos.shape[0])
        if self._head is not None:
            hidden = self.model.base_model(**kw).last_hidden_state  # (B, n+T, D)
            at_mask = self._head(hidden[rows, pos])  # (B, V)
        else:
            at_mask = self.model(**kw).logits[rows, pos]  # (B, V)
        return torch.stack([at_mask[:, ids].mean(dim=1) for ids in scorer], dim=1)  # (B, K)
