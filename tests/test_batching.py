"""Training batches (prompt_core.training: random_batches, bucketed_batches, TrainConfig.batching)
and the numpy pad_batch, on synthetic lengths and the tiny encoder."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from prompt_core.backbones import Encoded
from prompt_core.backbones.base import pad_batch
from prompt_core.config import TrainConfig
from prompt_core.data import SPLITS, TaskData, make_spec, normalise_split
from prompt_core.evaluation import EncodedSplit
from prompt_core.training import bucketed_batches, random_batches, train_prompt
from tests.core_helpers import FILLER


def take(gen, k: int) -> list[np.ndarray]:
    return list(itertools.islice(gen, k))


def padding(batches, lengths) -> int:
    return int(sum((lengths[b].max() - lengths[b]).sum() for b in batches))


def old_loop_batches(n: int, batch_size: int, seed: int, k: int) -> list[np.ndarray]:
    """The batches train_prompt drew before TrainConfig.batching existed (reference)."""
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    out = []
    for _ in range(k):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        out.append(idx)
    return out


LENGTHS = np.random.default_rng(123).integers(5, 200, size=2000)


# --- the samplers --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "bs"), [(64, 16), (50, 16), (5, 16), (7, 3)])
def test_random_batches_are_the_old_loop(n, bs):
    got = take(random_batches(n, bs, np.random.default_rng(4)), 40)
    want = old_loop_batches(n, bs, 4, 40)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize(("n", "bs", "bucket"), [(64, 16, 50), (2000, 16, 50), (1000, 8, 3)])
def test_bucketed_each_round_is_one_epoch_when_batches_divide_it(n, bs, bucket):
    lengths = LENGTHS[:n]
    per_epoch = n // bs
    gen = bucketed_batches(lengths, bs, np.random.default_rng(0), bucket_batches=bucket)
    for _ in range(3):
        epoch = take(gen, per_epoch)
        assert all(len(b) == bs for b in epoch)
        assert np.array_equal(np.sort(np.concatenate(epoch)), np.arange(n))


@pytest.mark.parametrize(("n", "bs"), [(50, 16), (1001, 16), (33, 10)])
def test_bucketed_every_index_once_per_epoch_with_leftovers(n, bs):
    """A split not divisible by the batch size: batches stay full, the few examples left over
    from an epoch are used in the next round, so after k epochs' worth of batches every index
    has been used exactly k times."""
    lengths = LENGTHS[:n]
    gen = bucketed_batches(lengths, bs, np.random.default_rng(1))
    k = np.lcm(n, bs) // n  # epochs whose examples fill whole batches exactly
    batches = take(gen, k * n // bs)
    assert all(len(b) == bs for b in batches)
    counts = np.bincount(np.concatenate(batches), minlength=n)
    assert (counts == k).all()


def test_bucketed_split_smaller_than_a_batch_is_one_batch_per_epoch():
    gen = bucketed_batches(np.array([3, 9, 1, 4, 7]), 16, np.random.default_rng(0))
    for b in take(gen, 4):
        assert np.array_equal(np.sort(b), np.arange(5))


def test_bucketed_deterministic_per_seed():
    def first(seed):
        return take(bucketed_batches(LENGTHS, 16, np.random.default_rng(seed)), 300)

    a, b, c = first(0), first(0), first(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_bucketed_batches_have_far_less_padding_and_random_content():
    bs = 16
    k = len(LENGTHS) // bs
    rand = take(random_batches(len(LENGTHS), bs, np.random.default_rng(0)), k)
    buck = take(bucketed_batches(LENGTHS, bs, np.random.default_rng(0)), k)
    assert padding(buck, LENGTHS) < 0.1 * padding(rand, LENGTHS)
    # the batch order is shuffled: not a short-to-long curriculum
    means = [LENGTHS[b].mean() for b in buck[:40]]
    assert means != sorted(means)
    # members come from a random chunk, not the globally sorted list: the shortest batch of
    # a round is not simply the 16 shortest examples
    shortest = min(buck, key=lambda b: LENGTHS[b].mean())
    assert LENGTHS[shortest].max() > np.sort(LENGTHS)[bs - 1]


def test_bucketed_chunks_bound_the_sorting():
    """bucket_batches=1: each batch is one random chunk of batch_size (sorted within), so the
    batches are the random sampler's sets of members."""
    bs, n = 8, 64
    buck = take(bucketed_batches(LENGTHS[:n], bs, np.random.default_rng(5), bucket_batches=1),
                n // bs)
    rng = np.random.default_rng(5)
    perm = rng.permutation(n)
    chunks = [set(perm[i : i + bs]) for i in range(0, n, bs)]
    assert sorted(map(sorted, chunks)) == sorted(sorted(set(b)) for b in buck)
    assert all((np.diff(LENGTHS[b]) >= 0).all() for b in buck)


def test_epoch_source_plugs_in():
    """Another epoch order (e.g. a class-balanced one, with repeats) drives both samplers."""
    labels = np.array([0] * 12 + [1] * 4)

    def balanced(rng):  # every class 12 times: the minority class oversampled
        return rng.permutation(np.concatenate([np.flatnonzero(labels == 0),
                                               np.repeat(np.flatnonzero(labels == 1), 3)]))

    lengths = np.arange(16)
    for gen in (bucketed_batches(lengths, 8, np.random.default_rng(0), epoch=balanced),
                random_batches(16, 8, np.random.default_rng(0), epoch=balanced)):
        idx = np.concatenate(take(gen, 3))
        assert np.bincount(labels[idx]).tolist() == [12, 12]


def test_train_config_batching():
    assert TrainConfig().batching == "bucketed"
    assert TrainConfig(batching="random").batching == "random"
    with pytest.raises(ValidationError):
        TrainConfig(batching="sorted")


# --- pad_batch -----------------------------------------------------------------------------


def reference_pad(items, pad_id):
    """pad_batch as it was: row by row."""
    T = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), T), dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it.input_ids)
        ids[i, :n] = torch.tensor(it.input_ids)
        types[i, :n] = torch.tensor(it.token_type_ids)
        mask[i, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.mark.parametrize("pad_id", [0, 1, 50256])
def test_pad_batch_matches_row_by_row_padding(pad_id):
    rnd = random.Random(pad_id)
    for _ in range(20):
        items = []
        for _ in range(rnd.randint(1, 9)):
            n = rnd.randint(1, 40)
            items.append(Encoded([rnd.randrange(60000) for _ in range(n)],
                                 [rnd.randint(0, 1) for _ in range(n)]))
        got = pad_batch(items, pad_id, torch.device("cpu"))
        want = reference_pad(items, pad_id)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == torch.long and torch.equal(got[k], want[k]), k


def test_pad_batch_refuses_bad_input():
    with pytest.raises(ValueError, match="no examples"):
        pad_batch([], 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="example 1 has 2 input ids but 1 token type ids"):
        pad_batch([Encoded([1], [0]), Encoded([1, 2], [0])], 0, torch.device("cpu"))


# --- train_prompt with both batchings ------------------------------------------------------


@pytest.fixture(scope="module")
def varied_task() -> TaskData:
    """2 classes by keyword, texts of 2 to 30 words (so bucketing changes the padding)."""
    spec = make_spec("varied", "sentiment", ["negative", "positive"], ("terrible", "excellent"))
    splits = {}
    for i, (s, n) in enumerate(zip(SPLITS, (96, 24, 24), strict=True)):
        rng = random.Random(i)
        rows = []
        for j in range(n):
            words = [rng.choice(FILLER) for _ in range(rng.randint(1, 29))]
            words.insert(rng.randrange(len(words) + 1), "excellent" if j % 2 else "terrible")
            rows.append({"text_a": " ".join(words), "text_b": None, "label": j % 2})
        splits[s] = normalise_split(pd.DataFrame(rows), spec, s, "synthetic")
    return TaskData(spec, splits, source="synthetic")


CFG = TrainConfig(n_tokens=4, steps=8, batch_size=16, eval_every=4, lr=3e-2, max_length=32)


@pytest.fixture
def recorded(monkeypatch):
    """The index batches train_prompt draws from its train split."""
    seen: list[np.ndarray] = []
    orig = EncodedSplit.batch

    def batch(self, idx):
        seen.append(np.array(idx))
        return orig(self, idx)

    monkeypatch.setattr(EncodedSplit, "batch", batch)
    return seen


@pytest.mark.parametrize("batching", ["random", "bucketed"])
def test_train_prompt_batchings_deterministic(encoder, varied_task, batching, recorded):
    cfg = CFG.model_copy(update={"batching": batching})
    r1 = train_prompt(encoder, varied_task, cfg, seed=0)
    b1 = list(recorded)
    recorded.clear()
    r2 = train_prompt(encoder, varied_task, cfg, seed=0)
    assert torch.equal(r1.prompt, r2.prompt) and r1.best_scores == r2.best_scores
    assert [(c.step, c.train_loss) for c in r1.curve] == [(c.step, c.train_loss) for c in r2.curve]
    assert all(np.array_equal(a, b) for a, b in zip(b1, recorded, strict=True))
    recorded.clear()
    r3 = train_prompt(encoder, varied_task, cfg, seed=1)
    assert not torch.allclose(r1.prompt, r3.prompt)


def test_train_prompt_draws_the_configured_batches(encoder, varied_task, recorded):
    """random: exactly the batches of the loop before bucketing; bucketed: those of
    bucketed_batches over the split's lengths, with less padding."""
    train = EncodedSplit(encoder, varied_task, "train", CFG.max_length)
    steps = CFG.steps
    train_prompt(encoder, varied_task, CFG.model_copy(update={"batching": "random"}), seed=3)
    rand = [b for b in recorded if len(b) == CFG.batch_size][:steps]  # dev batches are 24 long
    assert all(np.array_equal(a, b) for a, b in
               zip(rand, old_loop_batches(len(train), CFG.batch_size, 3, steps), strict=True))
    recorded.clear()
    train_prompt(encoder, varied_task, CFG, seed=3)
    buck = [b for b in recorded if len(b) == CFG.batch_size][:steps]
    want = take(bucketed_batches(train.lengths, CFG.batch_size, np.random.default_rng(3)), steps)
    assert all(np.array_equal(a, b) for a, b in zip(buck, want, strict=True))
    assert padding(buck, train.lengths) < 0.5 * padding(rand, train.lengths)


def test_encoded_split_lengths(encoder, varied_task):
    split = EncodedSplit(encoder, varied_task, "validation", 32)
    assert split.lengths.tolist() == [len(it.input_ids) for it in split.items]
    assert split.longest == max(split.lengths) and isinstance(split.longest, int)
