"""Encoder-decoder LMs (T5): label words scored by the decoder.

Input layout (METHOD.md): ``[P] text_a </s> [text_b </s>]`` into the ENCODER (the tokenizer's own
pair layout); the soft prompt goes in front of the encoder input only, never the decoder. The
encoder attention mask is 1 over the prompt and the text and 0 over padding (the 1.0 T5 code
attends to padding; this does not), so an example's logits do not depend on its batch.

Scoring: the class logit of label k is the log-likelihood of label word k's target sequence
(its tokens + ``</s>``) under the decoder with teacher forcing::

    logit[b, k] = sum_t mask[k, t] * log p(target[k, t] | target[k, <t], encoder(P + x_b))

All K labels are scored in one decoder pass: the encoder runs once on (B, n+T), its states are
repeated to (B*K, n+T, D), and the K padded targets (K, L) are tiled to (B*K, L). Target padding
is masked out of the sum (and out of the decoder's self-attention). Multi-token label words
therefore score lower than single-token ones by construction; in tuning the prompt learns to
compensate, and the usual T5 verbalizers (positive/negative, yes/no/maybe...) are 1-2 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from prompt_core.backbone_kinds import DEFAULT_ON_POSITION, OnPosition
from prompt_core.backbones.base import Backbone, Encoded, Stimulus, prepend_prompt
from prompt_core.prompt_file import check_prompt_shape


@dataclass
class LabelTargets:
    """The decoder targets of a task's K label words, padded to the longest (L tokens).

    ``targets`` (K, L): each label word's token ids + eos, right-padded with the pad id;
    ``decoder_input_ids`` (K, L): the targets shifted right behind the decoder start token;
    ``mask`` (K, L): 1 on real target tokens, 0 on padding.
    """

    targets: torch.Tensor
    decoder_input_ids: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]


class Seq2SeqBackbone(Backbone):
    kind = "seq2seq"
    default_model_id = "google-t5/t5-base"
    default_lr = 5e-3  # T5-small/base in the paper's code (METHOD.md)
    # T5 overflows in half precision (fp16) and has not been checked under bf16 autocast here
    supports_bf16 = False
    # T5: the input of each block's FFN output linear ``DenseReluDense.wo`` (a forward
    # pre-hook): act(wi x) in T5DenseActDense (the act output, dropout being off in eval),
    # act(wi_0 x) * wi_1 x in the gated T5DenseGatedActDense (v1.1 / Flan), not the gate alone.
    # Decoder layers only (ffn_scope), as the official T5 ON code reads them
    ffn_module_suffix = "DenseReluDense.wo"
    ffn_read = "input"

    def __init__(self, model, tokenizer, model_id, device="cpu", **options: Any):
        if options:
            raise ValueError(f"backbone kind 'seq2seq' takes no options, got {sorted(options)}")
        super().__init__(model, tokenizer, model_id, device)
        cfg = model.config
        start = getattr(cfg, "decoder_start_token_id", None)
        self.decoder_start_token_id: int = self.pad_token_id if start is None else int(start)
        with self._tokenizer_lock:
            self.eos_token_id: int | None = tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, model_id, revision=None, device="cpu", **options: Any):
        from transformers import AutoTokenizer, T5ForConditionalGeneration

        tok = AutoTokenizer.from_pretrained(model_id, revision=revision)
        model = T5ForConditionalGeneration.from_pretrained(model_id, revision=revision)
        return cls(model, tok, model_id, device, **options)

    def encode(self, text_a, text_b, max_length):
        # the tokenizer's truncation shortens the text and keeps the </s> of each segment
        enc = self.tokenize(
            text_a, text_b, truncation=True, max_length=max_length, add_special_tokens=True
        )
        ids = enc["input_ids"]
        return Encoded(ids, [0] * len(ids))  # T5 has no token types

    def label_scorer(self, label_words) -> LabelTargets:
        """Decoder targets of the label words: tokens + eos, padded (see :class:`LabelTargets`)."""
        rows = []
        for w in label_words:
            toks = self.tokenize(w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"label word {w!r} has no tokens in {self.model_id}")
            rows.append(list(toks) + ([self.eos_token_id] if self.eos_token_id is not None else []))
        K, L = len(rows), max(len(r) for r in rows)
        targets = torch.full((K, L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((K, L), dtype=torch.long)
        for k, r in enumerate(rows):
            targets[k, : len(r)] = torch.tensor(r)
            mask[k, : len(r)] = 1
        dec_in = torch.full((K, L), self.decoder_start_token_id, dtype=torch.long)
        dec_in[:, 1:] = targets[:, :-1]  # padding after a target is never scored (masked)
        return LabelTargets(targets.to(self.device), dec_in.to(self.device), mask.to(self.device))

    def _check_prompt(self, prompt: torch.Tensor | None) -> None:
        """A prompt that does not fit the model raises a PromptFileError with both shapes."""
        if prompt is not None and (prompt.ndim != 2 or prompt.shape[1] != self.hidden_size):
            check_prompt_shape(prompt.detach(), self.hidden_size,
                               where=f"soft prompt for {self.model_id}")

    def logits(self, prompt, batch, scorer: LabelTargets):
        self._check_prompt(prompt)
        return self.score_features(self.features(prompt, batch), scorer)  # (B, K)

    def features(self, prompt, batch):
        """(encoder states (B, S, D), encoder mask (B, S)) of the prompted inputs, S = n + T;
        ``prompt`` (n, D), one per row (B, n, D), or None."""
        if prompt is not None and prompt.ndim == 3:
            self._check_prompt(prompt[0])
        else:
            self._check_prompt(prompt)
        embeds = self.input_embeddings(batch["input_ids"])  # (B, T, D)
        embeds, enc_mask = prepend_prompt(embeds, batch["attention_mask"], prompt)  # (B, S, ·)
        hidden = self.model.get_encoder()(
            inputs_embeds=embeds, attention_mask=enc_mask
        ).last_hidden_state  # (B, S, D), S = n + T
        return hidden, enc_mask

    def score_features(self, features, scorer: LabelTargets):
        """Sum of the label targets' token log-probs under the decoder (B, K) float32, from
        :meth:`features`' (encoder states, mask): all K labels in one decoder pass."""
        from transformers.modeling_outputs import BaseModelOutput

        hidden, enc_mask = features
        B, K, L = hidden.shape[0], len(scorer), scorer.targets.shape[1]
        hidden = hidden.repeat_interleave(K, dim=0)  # (B*K, S, D): row b*K + k
        enc_mask = enc_mask.repeat_interleave(K, dim=0)  # (B*K, S)
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=enc_mask,
            decoder_input_ids=scorer.decoder_input_ids.repeat(B, 1),  # (B*K, L)
            decoder_attention_mask=scorer.mask.repeat(B, 1),  # (B*K, L)
            use_cache=False,
        )
        logp = out.logits.float().log_softmax(dim=-1).view(B, K, L, -1)  # (B, K, L, V) float32
        tgt = scorer.targets.unsqueeze(0).expand(B, -1, -1)  # (B, K, L)
        tok = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, K, L)
        return (tok * scorer.mask.to(tok.dtype)).sum(dim=-1)  # (B, K)

    def ffn_scope(self):
        """The decoder: the official T5 ON code (Prompt-Transferability 1.0) reads the
        decoder's FFN neurons at the first decoding step only, so L = decoder layers."""
        return "decoder", self.model.get_decoder()

    def stimulus(self, prompt, on_position: OnPosition = DEFAULT_ON_POSITION):
        """ON input: encoder ``[P] </s>`` (the empty text in :meth:`encode`'s layout), decoder
        the start token alone; every decoder FFN layer (:meth:`ffn_scope`) is read at the first
        decoder step (the one that scores a label's first token). One position: ``on_position``
        does not change it."""
        p = self._stimulus_prompt(prompt)
        batch = self._empty_input()  # (1, T)
        embeds, mask = prepend_prompt(self.input_embeddings(batch["input_ids"]),
                                      batch["attention_mask"], p)  # (1, S, D), (1, S)
        start = torch.full((1, 1), self.decoder_start_token_id, dtype=torch.long,
                           device=self.device)
        kw = {"inputs_embeds": embeds, "attention_mask": mask, "decoder_input_ids": start,
              "use_cache": False}
        return Stimulus(kw, [[0]] * len(self.ffn_modules()))
