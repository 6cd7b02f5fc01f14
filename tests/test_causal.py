"""prompt_core.backbones.causal on a tiny random GPT-2 with an offline byte-level BPE tokenizer."""

from __future__ import annotations

import pytest
import torch

from prompt_core.backbones import BACKBONES, EncodeError, LengthError, load_backbone
from prompt_core.backbones.causal import CausalBackbone, LabelWordError
from prompt_core.config import TrainConfig
from prompt_core.errors import InputError
from prompt_core.prompts import init_prompt
from prompt_core.training import train_prompt
from tests.core_helpers import keyword_task


@pytest.fixture(scope="module")
def causal(gpt2_dir):
    return CausalBackbone.from_pretrained(gpt2_dir)


WORDS = ("terrible", "excellent")
TEXTS = [("a fine film", None), ("it rained all day in the old city by the river " * 3, None),
         ("ok", "and a second segment here")]


def _batch(bb, texts=TEXTS, max_length=100):
    return bb.collate([bb.encode(a, b, max_length) for a, b in texts])


def test_class_attributes_and_positions(causal):
    assert CausalBackbone.kind == "causal"
    assert CausalBackbone.default_model_id == "openai-community/gpt2"
    assert CausalBackbone.default_lr == 1e-3 and CausalBackbone.supports_bf16
    assert causal.hidden_size == 32
    assert causal.max_positions == 128  # n_positions, position ids from 0
    assert causal._positions == (128, 0)
    assert causal.pad_token_id == causal.tokenizer.eos_token_id
    assert not any(p.requires_grad for p in causal.model.parameters())
    with pytest.raises(LengthError, match="exceeds the 128 positions"):
        causal.check_lengths(100, 64)


def test_load_through_registry(gpt2_dir, monkeypatch):
    # registered for this test only (no-op once prompt_core.backbones registers the kind)
    monkeypatch.setitem(BACKBONES, "causal", BACKBONES.get("causal", CausalBackbone))
    assert isinstance(load_backbone("causal", gpt2_dir), CausalBackbone)


def test_encode_layout_and_truncation(causal):
    cue, sep = causal._cue_ids, causal._sep_ids
    assert cue and sep and causal.layout_tokens == len(cue) + len(sep)
    enc = causal.encode("a fine film", None, 100)
    assert enc.input_ids == causal._ids("a fine film") + cue
    assert enc.token_type_ids == [0] * len(enc.input_ids)
    pair = causal.encode("ok", "and a second", 100)
    assert pair.input_ids == causal._ids("ok") + sep + causal._ids("and a second") + cue
    long_a = "it rained all day in the old city " * 10
    cut = causal.encode(long_a, "ok", 20)
    assert len(cut.input_ids) == 20
    assert cut.input_ids[-len(cue):] == cue  # the cue survives truncation
    assert cut.input_ids[: 20 - len(cue) - len(sep) - len(causal._ids("ok"))] == (
        causal._ids(long_a)[: 20 - len(cue) - len(sep) - len(causal._ids("ok"))])
    with pytest.raises(EncodeError, match="leaves no room for text"):
        causal.encode("a", "b", len(cue) + len(sep))


def test_label_scorer_first_tokens_and_collisions(causal):
    ids = causal.label_scorer(WORDS)
    assert ids.tolist() == [causal._ids(" " + w)[0] for w in WORDS]
    with pytest.raises(LabelWordError, match="start with the same token") as e:
        causal.label_scorer(("terrible", "excellent", "excellently"))  # " excellent" + ...
    assert str(e.value).count("excellent") >= 2
    assert isinstance(e.value, InputError)


def test_logits_shape_and_manual_value(causal):
    batch = _batch(causal)
    scorer = causal.label_scorer(WORDS)
    prompt = init_prompt("random", causal, 4, seed=0, std=0.5)
    with torch.no_grad():
        logits = causal.logits(prompt, batch, scorer)
        assert logits.shape == (3, 2) and logits.dtype == torch.float32
        # manual: full LM on [prompt + real tokens of row 0 only], last position's logits
        ids = torch.tensor([causal.encode(*TEXTS[0], 100).input_ids])
        emb = torch.cat([prompt.unsqueeze(0), causal.input_embeddings(ids)], dim=1)
        full = causal.model(inputs_embeds=emb).logits[0, -1]
        assert torch.allclose(logits[0], full[scorer], atol=1e-5)
        assert causal.logits(None, batch, scorer).shape == (3, 2)


def test_padding_is_never_attended(causal):
    scorer = causal.label_scorer(WORDS)
    prompt = init_prompt("random", causal, 5, seed=1, std=0.5)
    short = ("a fine film", None)
    longer = ("it rained all day in the old city by the river " * 4, "and more")
    with torch.no_grad():
        alone = causal.logits(prompt, _batch(causal, [short]), scorer)
        batched = causal.logits(prompt, _batch(causal, [longer, short]), scorer)
        b = _batch(causal, [longer, short])
        assert int(b["attention_mask"][1].sum()) < b["attention_mask"].shape[1]  # padded
        # changing the pad ids changes nothing either
        b2 = dict(b, input_ids=b["input_ids"].masked_fill(b["attention_mask"] == 0, 7))
        repadded = causal.logits(prompt, b2, scorer)
    assert torch.allclose(alone[0], batched[1], atol=1e-5, rtol=0)
    assert torch.allclose(batched, repadded, atol=1e-6, rtol=0)


def test_gradients_reach_only_the_prompt(causal):
    scorer = causal.label_scorer(WORDS)
    prompt = torch.nn.Parameter(init_prompt("random", causal, 4, seed=0, std=0.5))
    logits = causal.logits(prompt, _batch(causal), scorer)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0])).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in causal.model.parameters())


def test_wrong_hidden_size_is_a_clear_error(causal):
    scorer = causal.label_scorer(WORDS)
    with pytest.raises(InputError, match=r"expected \(n_tokens, 32\)"):
        causal.logits(torch.zeros(4, 16), _batch(causal), scorer)
    with pytest.raises(InputError, match="does not fit"):
        causal.logits(torch.zeros(4), _batch(causal), scorer)


def test_train_prompt_a_few_steps(causal):
    task = keyword_task(n_train=32, n_dev=16)
    cfg = TrainConfig(n_tokens=4, steps=6, batch_size=8, eval_every=3, max_length=32,
                      lr=1e-2)
    res = train_prompt(causal, task, cfg, seed=0)
    assert res.prompt.shape == (4, 32)
    assert torch.isfinite(res.prompt).all()
    assert [p.step for p in res.curve] == [0, 3, 6]
    assert all(p.train_loss is not None and p.train_loss == p.train_loss for p in res.curve[1:])
    assert not any(p.requires_grad for p in causal.model.parameters())
