"""The seq2seq (T5) backbone kind on a tiny random-weight T5 with a WordLevel tokenizer."""

from __future__ import annotations

import pytest
import torch

from prompt_core.backbones import BACKBONES, load_backbone
from prompt_core.backbones.seq2seq import LabelTargets, Seq2SeqBackbone
from prompt_core.config import TrainConfig
from prompt_core.errors import InputError
from prompt_core.training import train_prompt
from tests.core_helpers import keyword_task


@pytest.fixture(scope="module")
def t5(t5_dir):
    return Seq2SeqBackbone.from_pretrained(t5_dir)


LABELS = ("terrible", "excellent", "very good")  # the last one has two tokens
TEXTS = [("a fine film", None),
         ("it rained all day in the old city by the river " * 4, None),
         ("ok", "and a second segment here")]


def _batch(bb, texts=TEXTS, max_length=64):
    return bb.collate([bb.encode(a, b, max_length) for a, b in texts])


def test_class_attributes_and_layout(t5):
    assert Seq2SeqBackbone.kind == "seq2seq"
    assert Seq2SeqBackbone.default_model_id == "google-t5/t5-base"
    assert Seq2SeqBackbone.supports_bf16 is False
    assert t5.hidden_size == 32
    assert t5.max_positions is None  # relative positions: no fixed limit
    assert t5.layout_tokens == 2  # a </s> b </s>
    t5.check_lengths(100, 1000)  # no position limit to exceed
    enc = t5.encode("ok", "and a second", 64)
    assert enc.input_ids == [t5.tokenizer.convert_tokens_to_ids(w) for w in
                             ["ok", "</s>", "and", "a", "second", "</s>"]]
    assert enc.token_type_ids == [0] * 6
    # truncation shortens the text and keeps the eos of each segment
    short = t5.encode("the a movie film story day", "city house car", 6)
    assert len(short.input_ids) == 6 and short.input_ids.count(1) == 2


def test_label_scorer(t5):
    s = t5.label_scorer(LABELS)
    assert isinstance(s, LabelTargets) and len(s) == 3
    ids = t5.tokenizer.convert_tokens_to_ids
    assert s.targets.tolist() == [[ids("terrible"), 1, 0], [ids("excellent"), 1, 0],
                                  [ids("very"), ids("good"), 1]]
    assert s.mask.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert s.decoder_input_ids.tolist() == [[0, ids("terrible"), 1], [0, ids("excellent"), 1],
                                            [0, ids("very"), ids("good")]]


def test_logits_are_label_log_likelihoods(t5):
    batch = _batch(t5)
    scorer = t5.label_scorer(LABELS)
    prompt = torch.randn(5, 32) * 0.5
    with torch.no_grad():
        out = t5.logits(prompt, batch, scorer)
        none = t5.logits(None, batch, scorer)
    assert out.shape == (3, 3) and out.dtype == torch.float32 and none.shape == (3, 3)
    assert (out < 0).all()  # sums of log-probs
    assert not torch.allclose(out, none)
    # by hand, without a prompt: -(mean token NLL * n tokens) from the model's own loss
    for b, (a, tb) in enumerate(TEXTS):
        x = torch.tensor([t5.encode(a, tb, 64).input_ids])
        for k in range(3):
            n = int(scorer.mask[k].sum())
            labels = scorer.targets[k : k + 1, :n]
            with torch.no_grad():
                loss = t5.model(input_ids=x, labels=labels).loss
            assert none[b, k].item() == pytest.approx(-loss.item() * n, abs=1e-4)


def test_padding_is_never_attended(t5):
    scorer = t5.label_scorer(LABELS)
    prompt = torch.randn(4, 32) * 0.5
    short, long_ = TEXTS[0], TEXTS[1]
    with torch.no_grad():
        alone = t5.logits(prompt, _batch(t5, [short]), scorer)
        together = t5.logits(prompt, _batch(t5, [short, long_]), scorer)
        pair_alone = t5.logits(prompt, _batch(t5, [TEXTS[2]]), scorer)
        pair_together = t5.logits(prompt, _batch(t5, [long_, TEXTS[2]]), scorer)
    assert _batch(t5, [short, long_])["attention_mask"][0].sum() < 10  # lots of padding
    assert torch.allclose(alone[0], together[0], atol=1e-5, rtol=0)
    assert torch.allclose(pair_alone[0], pair_together[1], atol=1e-5, rtol=0)


def test_gradients_reach_only_the_prompt(t5):
    scorer = t5.label_scorer(LABELS)
    prompt = torch.nn.Parameter(torch.randn(4, 32) * 0.5)
    logits = t5.logits(prompt, _batch(t5), scorer)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in t5.model.parameters())


def test_wrong_prompt_size_is_a_clear_error(t5):
    scorer = t5.label_scorer(LABELS)
    with pytest.raises(InputError, match=r"hidden size 16 does not match the model's 32"):
        t5.logits(torch.zeros(4, 16), _batch(t5), scorer)
    with pytest.raises(InputError, match=r"expected a 2-d tensor"):
        t5.logits(torch.zeros(4, 32, 1), _batch(t5), scorer)


def test_options_rejected(t5_dir):
    with pytest.raises(ValueError, match="takes no options"):
        Seq2SeqBackbone.from_pretrained(t5_dir, temperature=1.0)


def test_load_by_kind_and_train(t5_dir, monkeypatch):
    monkeypatch.setitem(BACKBONES, "seq2seq", Seq2SeqBackbone)  # registration is the lead's
    bb = load_backbone("seq2seq", t5_dir)
    assert isinstance(bb, Seq2SeqBackbone)
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    task = keyword_task(n_train=32, n_dev=16)
    cfg = TrainConfig(n_tokens=4, steps=6, batch_size=8, eval_every=3, lr=3e-2, max_length=32)
    r = train_prompt(bb, task, cfg, seed=0)
    assert r.prompt.shape == (4, 32) and torch.isfinite(r.prompt).all()
    assert r.best_step in (3, 6) and r.lr == 3e-2
    assert [p.step for p in r.curve] == [0, 3, 6]
    assert all(p.train_loss is None or p.train_loss == p.train_loss for p in r.curve)
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone stays frozen
