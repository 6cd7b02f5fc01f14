"""Several prompts per forward pass: scoring (EncodedSplit.predict_many, logits_many) and joint
training (prompt_core.multi_prompt) equal the one-prompt paths, for every backbone kind."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from prompt_core.backbones import Backbone, EncoderBackbone, load_backbone
from prompt_core.backbones.multi import (
    logits_many,
    row_prompts,
    splits_logits,
    stacked_logits,
    tile_batch,
)
from prompt_core.config import TrainConfig
from prompt_core.data import SPLITS, TaskData, make_spec, normalise_split
from prompt_core.evaluation import EncodedSplit, evaluate_prompts
from prompt_core.multi_prompt import joint_step, train_prompts_jointly
from prompt_core.training import train_batches, train_prompt
from tests.core_helpers import FILLER, keyword_task

KINDS = ("encoder", "mlm", "causal", "seq2seq")
ATOL = 1e-5


@pytest.fixture(scope="module")
def backbones(tiny_models, gpt2_dir, t5_dir) -> dict[str, Backbone]:
    return {"encoder": load_backbone("encoder", tiny_models["encoder"]),
            "mlm": load_backbone("mlm", tiny_models["mlm"]),
            "causal": load_backbone("causal", gpt2_dir),
            "seq2seq": load_backbone("seq2seq", t5_dir)}


def varied_task(name: str = "varied", n_train: int = 40, n_dev: int = 24) -> TaskData:
    """2 classes, label words negative/positive (in every tiny vocabulary), texts of 1 to 14
    words (so stacked batches pad rows of very different lengths), some with a text_b."""
    spec = make_spec(name, "sentiment", ["negative", "positive"], ("negative", "positive"))
    sizes = {"train": n_train, "validation": n_dev, "test": n_dev}
    splits = {}
    for s_i, split in enumerate(SPLITS):
        rng = random.Random(10 + s_i)
        rows = []
        for i in range(sizes[split]):
            words = [rng.choice(FILLER) for _ in range(rng.randrange(0, 13))]
            words.insert(rng.randrange(len(words) + 1), "excellent" if i % 2 else "terrible")
            text_b = " ".join(rng.choice(FILLER) for _ in range(3)) if i % 3 == 0 else None
            rows.append({"text_a": " ".join(words), "text_b": text_b, "label": i % 2})
        splits[split] = normalise_split(pd.DataFrame(rows), spec, split, "synthetic")
    return TaskData(spec, splits, source="synthetic")


@pytest.fixture(scope="module")
def tasks() -> list[TaskData]:
    return [keyword_task(n_train=40, n_dev=24), varied_task()]


def _prompts(bb: Backbone, k: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, bb.hidden_size, generator=g) * 0.5 for _ in range(k)]


# --- scoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_logits_many_equals_one_prompt_at_a_time(backbones, tasks, kind):
    bb = backbones[kind]
    assert splits_logits(bb)
    enc = EncodedSplit(bb, tasks[1], "test", 32)
    batch, _ = enc.batch(np.arange(len(enc)))
    prompts = _prompts(bb, 3, 4, seed=1)
    with torch.inference_mode():
        many = logits_many(bb, prompts, batch, enc.scorer)  # (K, B, C)
        single = torch.stack([bb.logits(p, batch, enc.scorer) for p in prompts])
    assert many.shape == single.shape == (3, len(enc), 2)
    torch.testing.assert_close(many, single, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_many_equals_predict(backbones, tasks, kind):
    bb = backbones[kind]
    enc = EncodedSplit(bb, tasks[1], "test", 32)
    four = _prompts(bb, 3, 4, seed=2)
    two = _prompts(bb, 2, 2, seed=3)
    prompts = [four[0], None, two[0], four[1], None, four[2], two[1]]
    single = [enc.predict(p, batch_size=8) for p in prompts]
    for per_pass in (None, 2):
        many = enc.predict_many(prompts, batch_size=8, prompts_per_pass=per_pass)
        assert len(many) == len(prompts)
        for a, b in zip(many, single, strict=True):
            np.testing.assert_array_equal(a, b)
    got, preds = enc.evaluate_many(prompts, batch_size=8, return_predictions=True)
    assert got == [enc.evaluate(p, batch_size=8) for p in prompts]
    assert preds[1] is not preds[4]  # each None entry gets its own array


def test_evaluate_prompts_option(encoder, tasks):
    prompts = dict(zip("abc", _prompts(encoder, 3, 4, seed=4), strict=True)) | {"none": None}
    one = evaluate_prompts(encoder, tasks[1], prompts, max_length=32)
    assert evaluate_prompts(encoder, tasks[1], prompts, max_length=32, prompts_per_pass=4) == one


class LogitsOnly(EncoderBackbone):
    """A kind that implements logits only (a plug-in): scored one prompt at a time."""

    features = Backbone.features
    score_features = Backbone.score_features

    def logits(self, prompt, batch, scorer):
        return EncoderBackbone.score_features(
            self, EncoderBackbone.features(self, prompt, batch), scorer)


def test_kinds_without_the_split_fall_back(encoder, tasks):
    plain = LogitsOnly(encoder.model, encoder.tokenizer, encoder.model_id)
    assert not splits_logits(plain)
    enc = EncodedSplit(plain, tasks[0], "test", 32)
    prompts = _prompts(plain, 3, 4, seed=5)
    assert all(np.array_equal(a, enc.predict(p))
               for a, p in zip(enc.predict_many(prompts), prompts, strict=True))
    parts = [enc.items[:5], enc.items[5:8]]
    got = stacked_logits(plain, prompts[:2], parts, [enc.scorer] * 2)
    assert [g.shape for g in got] == [(5, 2), (3, 2)]


def test_row_helpers():
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]])}
    assert tile_batch(batch, 2)["input_ids"].tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]]
    p, q = torch.zeros(3, 4), torch.ones(3, 4)
    rows = row_prompts([p, q], [2, 1])
    assert rows.shape == (3, 3, 4) and rows[2].eq(1).all() and rows[:2].eq(0).all()
    with pytest.raises(ValueError, match="one shape"):
        row_prompts([p, torch.zeros(2, 4)], [1, 1])


# --- joint training --------------------------------------------------------------------------


def _single_steps(bb, prompts, splits, idx, lr):
    """One train_prompt step per prompt (its own forward-backward and AdamW)."""
    out = []
    for p0, split, ix in zip(prompts, splits, idx, strict=True):
        p = torch.nn.Parameter(p0.clone())
        opt = torch.optim.AdamW([p], lr=lr)
        batch, labels = split.batch(ix)
        loss = torch.nn.functional.cross_entropy(bb.logits(p, batch, split.scorer).float(),
                                                 labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append((p.detach(), loss.detach()))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_one_joint_step_equals_single_steps(backbones, tasks, kind):
    bb = backbones[kind]
    splits = [EncodedSplit(bb, t, "train", 32) for t in (*tasks, tasks[1])]
    cfg = TrainConfig(batch_size=8, max_length=32)
    idx = [next(train_batches(cfg, s, np.random.default_rng(i))) for i, s in enumerate(splits)]
    prompts = _prompts(bb, 3, 4, seed=6)
    want = _single_steps(bb, prompts, splits, idx, lr=1e-2)
    params = [torch.nn.Parameter(p.clone()) for p in prompts]
    opts = [torch.optim.AdamW([p], lr=1e-2) for p in params]
    losses = joint_step(bb, params, splits, idx, opts)
    for p, loss, (p1, loss1) in zip(params, losses, want, strict=True):
        torch.testing.assert_close(loss, loss1, atol=ATOL, rtol=0)
        torch.testing.assert_close(p.detach(), p1, atol=ATOL, rtol=0)
        assert not torch.equal(p.detach(), prompts[0])  # it moved
    assert not any(w.requires_grad for w in bb.model.parameters())


def _same_result(joint, single):
    assert joint.best_step == single.best_step
    torch.testing.assert_close(joint.prompt, single.prompt, atol=ATOL, rtol=0)
    assert [c.step for c in joint.curve] == [c.step for c in single.curve]
    assert [c.dev_accuracy for c in joint.curve] == [c.dev_accuracy for c in single.curve]
    for a, b in zip(joint.curve, single.curve, strict=True):
        assert (a.train_loss is None) == (b.train_loss is None)
        if a.train_loss is not None:
            assert abs(a.train_loss - b.train_loss) < ATOL
    assert joint.best_scores == single.best_scores and joint.lr == single.lr


@pytest.mark.parametrize("kind", KINDS)
def test_joint_training_equals_train_prompt(backbones, tasks, kind):
    bb = backbones[kind]
    cfg = TrainConfig(n_tokens=4, steps=6, batch_size=8, eval_every=3, lr=1e-2, max_length=32,
                      patience=None)
    runs = [(tasks[0], 0), (tasks[1], 1), (tasks[1], 2)]  # a task twice: two seeds
    joint = train_prompts_jointly(bb, [t for t, _ in runs], cfg, [s for _, s in runs])
    for res, (task, seed) in zip(joint, runs, strict=True):
        _same_result(res, train_prompt(bb, task, cfg, seed=seed))


def test_joint_training_with_early_stopping_and_inits(backbones, tasks):
    """Runs stop at their own evaluations (patience) and leave the stacked batch while the
    others go on; an init prompt and a per-run learning rate are honoured. (The tiny T5: its
    dev scores move within a few steps, unlike the tiny encoder's.)"""
    bb = backbones["seq2seq"]
    cfg = TrainConfig(n_tokens=4, steps=12, batch_size=8, eval_every=2, lr=1e-1,
                      max_length=32, patience=1)
    init = _prompts(bb, 1, 4, seed=7)[0]
    runs = [(tasks[0], 0, None, None), (tasks[1], 3, 1e-1, init), (tasks[0], 5, 3e-2, None)]
    seen: list[tuple[int, int]] = []
    joint = train_prompts_jointly(bb, [r[0] for r in runs], cfg, [r[1] for r in runs],
                                  lrs=[r[2] for r in runs], inits=[r[3] for r in runs],
                                  on_eval=lambda i, step, s: seen.append((i, step)))
    for i, (res, (task, seed, lr, ini)) in enumerate(zip(joint, runs, strict=True)):
        _same_result(res, train_prompt(bb, task, cfg, seed=seed, lr=lr, init=ini))
        assert [s for j, s in seen if j == i] == [c.step for c in res.curve]
    ends = {res.curve[-1].step for res in joint}
    assert len(ends) > 1 and max(ends) < cfg.steps  # stopped early, at different steps


def test_joint_training_checks_its_arguments(encoder, tasks):
    cfg = TrainConfig(n_tokens=4, steps=2, batch_size=8, max_length=32)
    with pytest.raises(ValueError, match="seeds"):
        train_prompts_jointly(encoder, tasks, cfg, [0])
    with pytest.raises(ValueError, match="one entry per task"):
        train_prompts_jointly(encoder, tasks, cfg, [0, 1], lrs=[None])
