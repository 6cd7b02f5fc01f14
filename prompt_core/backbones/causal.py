"""Causal LMs (GPT-style: GPT-2, Llama/SmolLM2): next-token logits of the label words after the
input.

Input layout: ``[P] text_a [separator text_b] cue`` with no special tokens, or, with the chat
template (option ``template``), that text and cue as the user turn of the model's own chat
template followed by the opening of the assistant turn: ``[P] <pre> text_a [separator text_b]
cue <post>`` where, for SmolLM2, ``<pre>`` = ``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>
user\\n`` (its default system message) and ``<post>`` = ``<|im_end|>\\n<|im_start|>assistant\\n``.
``template``: ``auto`` (the default: chat when the tokenizer has a chat template, as SmolLM2's
has, else plain: GPT-2), ``chat`` or ``plain``. ``cue`` (default ``"\\nAnswer:"``) is a short
verbalizer cue so that the next token is the answer; ``separator`` (default ``"\\n"``) joins a text
pair (``cue=""`` drops the cue). Truncation shortens the text only (longest segment first, from
its end, or from its start for a left-truncating tokenizer), never the separator, the cue or the
template's frame.

Scoring (METHOD.md): the class logit of a label word is the next-token logit of its first
sub-token at the LAST REAL token of each example: of ``" " + word`` in the plain layout (byte-level
BPE marks word starts with a leading space, and the word follows the cue's ``:``), of ``word``
alone in the chat layout (the answer starts a new line). Batches are right-padded
(:func:`pad_batch`) with the tokenizer's pad token, or eos when it has none (GPT-2); the attention
mask keeps pads out of attention and, with right padding, every real token keeps its natural
position ids ``0..n+L-1`` (passed explicitly). Shapes: ids (B, T) -> embeds + prompt (B, n+T, D)
-> hidden at position ``n + length - 1`` (B, D) -> LM head (B, V) -> the K label tokens (B, K).

Checked on the real SmolLM2-135M-Instruct (Llama, byte-level BPE; ``tests/test_smollm2.py``):
every label word of the built-in and shared tasks has a distinct first token in both layouts
(one ``Ġword`` token with the space; without it a few split, ``sports`` -> ``s`` ``ports``); its
tokenizer adds no BOS/EOS and none is added here (``<|im_start|>``, its "BOS", is the chat
template's turn marker, which the chat layout writes itself); eos ``<|im_end|>`` pads; right
padding with these position ids gives the same answer logits as each row alone and as left
padding with positions counted from each row's first real token. With no prompt the chat layout
scored better than the plain one on the validation splits of 4 tasks (mean accuracy 0.49 vs
0.41; docs/prompt_tuning_experiments.md, "SmolLM2-135M-Instruct"), hence ``auto``.

GPT-2 has no token type embeddings (it would add ``wte(token_type_ids)``), so type ids are all
0 in :class:`Encoded` and never passed to the model. Positions: GPT-2's table is ``wpe``, which
:func:`usable_positions` does not find by name; it falls back to the config's
``max_position_embeddings`` (GPT-2 maps it to ``n_positions``), offset 0, which is right.
"""

from __future__ import annotations

from typing import Any

import torch

from prompt_core.backbone_kinds import DEFAULT_ON_POSITION, CausalTemplate, OnPosition
from prompt_core.backbones.base import (
    Backbone,
    Encoded,
    EncodeError,
    Stimulus,
    prepend_prompt,
)
from prompt_core.errors import InputError
from prompt_core.prompt_file import PromptFileError


class LabelWordError(InputError):
    """Label words a causal backbone cannot tell apart (same first token) or cannot tokenise."""


class CausalBackbone(Backbone):
    kind = "causal"
    default_model_id = "openai-community/gpt2"
    default_lr = 1e-3  # METHOD.md gives no GPT LR; RoBERTa-base's 1e-3 (override with cfg.lr)
    layout_words = "separator + verbalizer cue"
    # bf16 autocast measured sound on SmolLM2 (CPU autocast, 5 texts, 20-token prompt): label
    # logits within 0.15 of float32 (label margins within 0.07), same argmax, prompt gradient
    # cosine 0.997. The LM head runs in float32 (features): logits near 20 are not rounded to
    # bf16's 0.125 steps
    supports_bf16 = True
    # the input of each block's MLP output linear (a forward pre-hook): GPT-2's ``mlp.c_proj``
    # (act(c_fc x), the act output), Llama-style gated MLPs' ``mlp.down_proj`` (SmolLM2:
    # act(gate_proj x) * up_proj x, not the gate alone)
    ffn_module_suffix = ("mlp.c_proj", "mlp.down_proj")
    ffn_read = "input"

    def __init__(self, model, tokenizer, model_id, device="cpu", separator: str = "\n",
                 cue: str = "\nAnswer:", template: CausalTemplate = "auto"):
        super().__init__(model, tokenizer, model_id, device)
        with self._tokenizer_lock:
            if tokenizer.pad_token_id is not None:
                self.pad_token_id = tokenizer.pad_token_id
            elif tokenizer.eos_token_id is not None:
                self.pad_token_id = tokenizer.eos_token_id  # GPT-2: eos pads (always masked)
            else:
                self.pad_token_id = 0  # never attended nor scored: any id will do
        self.separator, self.cue = separator, cue
        self._sep_ids = self._ids(separator) if separator else []
        self._cue_ids = self._ids(cue) if cue else []
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise InputError(f"{model_id}: option template 'chat', but its tokenizer has no chat "
                             "template; use template 'plain' (or 'auto')")
        self.chat = template == "chat" or (template == "auto" and has_chat)
        self._pre, self._post = self._chat_frame() if self.chat else ([], [])
        if self.chat:
            self.layout_words = f"{self.layout_words} + chat template frame"
        # run the LM head at the scored position only instead of over every position (B x T x V)
        self._head = model.get_output_embeddings()
        self._body = model.base_model if model.base_model is not model else None

    @classmethod
    def from_pretrained(cls, model_id, revision=None, device="cpu", **options: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_id, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision)
        return cls(model, tok, model_id, device, **options)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenize(text, add_special_tokens=False)["input_ids"])

    def _chat_frame(self) -> tuple[list[int], list[int]]:
        """The chat template's ids before and after a user message (the generation prompt, the
        assistant turn's opening, included): rendered once around a marker."""
        marker = "\x00USER\x00"
        text = self.tokenizer_call("apply_chat_template", [{"role": "user", "content": marker}],
                                   tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str) or text.count(marker) != 1:
            raise InputError(f"{self.model_id}: its chat template does not render one user "
                             "message as text; use template 'plain'")
        before, after = text.split(marker)
        return self._ids(before), self._ids(after)

    @property
    def layout_tokens(self) -> int:
        return len(self._sep_ids) + len(self._cue_ids) + len(self._pre) + len(self._post)

    def encode(self, text_a, text_b, max_length):
        segs = [self._ids(text_a)]
        if text_b is not None:
            segs.append(self._ids(text_b))
        fixed = (len(self._cue_ids) + (len(self._sep_ids) if text_b is not None else 0)
                 + len(self._pre) + len(self._post))
        room = max_length - fixed
        if room < 1:
            raise EncodeError(
                f"{self.model_id}: max_length {max_length} leaves no room for text: the layout "
                f"takes {fixed} tokens ({self.layout_words}); raise max_length"
            )
        if not self._cue_ids and not self._post and not any(segs):
            raise EncodeError(f"{self.model_id}: empty text and no cue: no token to score at")
        from_left = getattr(self.tokenizer, "truncation_side", "right") == "left"
        while sum(len(s) for s in segs) > room:
            longest = max(range(len(segs)), key=lambda j: (len(segs[j]), j))  # ties: later one
            segs[longest].pop(0 if from_left else -1)
        ids = (self._pre + segs[0] + (self._sep_ids + segs[1] if len(segs) > 1 else [])
               + self._cue_ids + self._post)
        return Encoded(ids, [0] * len(ids))

    def label_scorer(self, label_words) -> torch.Tensor:
        """First token id of each label word as it follows the input (:meth:`_label_token`):
        (K,) long on the device."""
        ids, owner = [], {}
        n_rows = self._head.weight.shape[0] if self._head is not None else None
        for w in label_words:
            t = self._label_token(w)
            if t in owner:
                raise LabelWordError(
                    f"{self.model_id}: label words {owner[t]!r} and {w!r} start with the same "
                    f"token (id {t}), so a causal "
                    "backbone cannot tell them apart by their first token; choose label words "
                    "with different first tokens"
                )
            if n_rows is not None and t >= n_rows:
                raise LabelWordError(
                    f"{self.model_id}: label word {w!r} token id {t} is outside the model's "
                    f"{n_rows} output rows (tokenizer and model do not match)"
                )
            owner[t] = w
            ids.append(t)
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _label_token(self, word: str) -> int:
        """The first token of the word as the answer starts, that is not whitespace alone:
        plain layout ``" " + word`` after the cue (byte-level BPE, GPT-2 and SmolLM2: one
        word-start token, ``" positive"`` -> ``Ġpositive``), chat layout ``word`` at the start
        of the assistant's line. A SentencePiece tokenizer that adds its own word-start mark
        may give a bare ``▁`` first, which every word would share, so it is skipped."""
        toks = self._ids(word.strip() if self.chat else " " + word.strip())
        shown = [self.tokenizer_call("decode", [t]) for t in toks]
        for t, text in zip(toks, shown, strict=True):
            if text.strip():
                return t
        raise LabelWordError(f"label word {word!r} has no tokens in {self.model_id}")

    def logits(self, prompt, batch, scorer):
        if prompt is not None:
            self._check_prompt(prompt, rows=False)
        return self.score_features(self.features(prompt, batch), scorer)  # (B, K) float32

    def _check_prompt(self, prompt: torch.Tensor, rows: bool) -> None:
        """A PromptFileError unless ``prompt`` is (n, D) (``rows``: or (B, n, D)) for D here."""
        ndim_ok = prompt.ndim == 2 or (rows and prompt.ndim == 3)
        if not ndim_ok or prompt.shape[-1] != self.hidden_size:
            raise PromptFileError(
                f"prompt: shape {tuple(prompt.shape)} does not fit {self.model_id}: expected "
                f"(n_tokens, {self.hidden_size}) (hidden size {self.hidden_size})"
            )

    def features(self, prompt, batch):
        """Next-token logits (B, V) float32 at each row's last real token; ``prompt`` (n, D),
        one per row (B, n, D), or None."""
        n = 0
        if prompt is not None:
            self._check_prompt(prompt, rows=True)
            n = prompt.shape[-2]
        mask = batch["attention_mask"]  # (B, T), right padding
        lengths = mask.sum(dim=1)  # (B,)
        if bool((lengths == 0).any()):
            rows = (lengths == 0).nonzero().flatten().tolist()
            raise EncodeError(f"{self.model_id}: batch row(s) {rows} have no tokens",
                              index=rows[0])
        embeds = self.input_embeddings(batch["input_ids"])  # (B, T, D)
        embeds, mask = prepend_prompt(embeds, mask, prompt)  # (B, n+T, D), (B, n+T)
        B, L = mask.shape
        positions = torch.arange(L, device=mask.device).unsqueeze(0).expand(B, -1)  # (B, n+T)
        kw = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions,
              "use_cache": False}  # one pass, nothing generated: no key/value cache
        last = n + lengths - 1  # (B,) the last real token, past the prompt
        rows = torch.arange(B, device=mask.device)
        if self._head is not None and self._body is not None:
            hidden = self._body(**kw).last_hidden_state  # (B, n+T, D)
            with torch.autocast(hidden.device.type, enabled=False):  # float32 under bf16 too
                at_last = self._head(hidden[rows, last].float())  # (B, V)
        else:
            at_last = self.model(**kw).logits[rows, last]  # (B, V)
        return at_last.float()

    def score_features(self, features, scorer):
        """The label words' first-token logits: (B, V) -> (B, K)."""
        return features[:, scorer.to(features.device)]

    def stimulus(self, prompt, on_position: OnPosition = DEFAULT_ON_POSITION):
        """ON input: ``[P] cue`` (the empty text in :meth:`encode`'s layout, so in the chat
        layout ``[P] <pre> cue <post>``; plain with ``cue=""``: the prompt alone), read at the
        last position, the one whose next-token logits score the labels, in every FFN layer.
        Positions ``0..n+T-1`` as in :meth:`logits`. One position: ``on_position`` does not
        change it."""
        p = self._stimulus_prompt(prompt)
        n = 0 if p is None else p.shape[0]
        if not self._cue_ids and not self._post and not n:
            raise EncodeError(f"{self.model_id}: no prompt and no cue: no position to read")
        batch = (self._empty_input() if self._cue_ids or self._post
                 else self.collate([Encoded([], [])]))
        kw = self.embed_with_prompt(p, batch)
        del kw["token_type_ids"]  # GPT-2 would add wte(type ids): logits never passes them
        length = kw["attention_mask"].shape[1]  # n + T
        kw["position_ids"] = torch.arange(length, device=self.device).unsqueeze(0)  # (1, n+T)
        kw["use_cache"] = False
        return Stimulus(kw, [[length - 1]] * len(self.ffn_modules()))
