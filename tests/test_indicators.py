"""prompt_core.indicators (ES, ON, neuron masking) and the backbones' FFN-activation interface,
on hand-made tensors with known answers and tiny random models of every kind."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from prompt_core.backbones import load_backbone
from prompt_core.backbones.base import POSITION_REDUCTIONS
from prompt_core.indicators import (
    ES_INDICATORS,
    all_indicators,
    binary_activations,
    es_cosine,
    es_euclidean,
    es_token_cosine,
    es_token_cosine_aligned,
    es_token_euclidean,
    masking_ablation,
    on_indicators,
    on_overlap,
    random_neuron_mask,
    top_neuron_mask,
)
from prompt_core.prompts import PromptFileError
from tests.core_helpers import keyword_task, tiny_roberta_dir

# --- ES ------------------------------------------------------------------------------------


def es_all(p1, p2):
    return {name: fn(p1, p2) for name, fn in ES_INDICATORS.items()}


def test_es_registry_names():
    assert ES_INDICATORS == {"es_cosine": es_cosine, "es_token_cosine": es_token_cosine,
                             "es_euclidean": es_euclidean,
                             "es_token_euclidean": es_token_euclidean,
                             "es_token_cosine_aligned": es_token_cosine_aligned}


def test_es_identical_prompts():
    """Identical prompts: 1 for the flattened and aligned ones; the all-pairs per-token ones
    (official) also compare distinct tokens of the same prompt, so they stay below 1."""
    p = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    out = es_all(p, p.clone())
    assert {k: out[k] for k in ("es_cosine", "es_euclidean", "es_token_cosine_aligned")} == (
        pytest.approx({"es_cosine": 1.0, "es_euclidean": 1.0, "es_token_cosine_aligned": 1.0}))
    assert out["es_token_cosine"] < 0.9 and out["es_token_euclidean"] < 0.9
    same = p[:1].expand(3, -1)  # one token repeated: every pair is the same token
    assert es_all(same, same.clone()) == pytest.approx({name: 1.0 for name in ES_INDICATORS})


def test_es_orthogonal_prompts():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # unit vectors, n = 1
    r2 = 1 / (1 + math.sqrt(2))
    assert es_all(e1, e2) == pytest.approx(
        {"es_cosine": 0.0, "es_token_cosine": 0.0, "es_euclidean": r2,
         "es_token_euclidean": r2, "es_token_cosine_aligned": 0.0})
    p1 = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    p2 = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])  # distance sqrt(4) = 2
    assert es_all(p1, p2) == pytest.approx(
        {"es_cosine": 0.0, "es_token_cosine": 0.0, "es_euclidean": 1 / 3,
         "es_token_euclidean": r2,  # every token pair sqrt(2) apart
         "es_token_cosine_aligned": 0.0})


def test_es_scaled_prompt():
    p = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # |p| = 5
    # token distances: 3, sqrt(3^2 + 8^2), sqrt(4^2 + 6^2), 4
    mean_dist = (3 + math.sqrt(73) + math.sqrt(52) + 4) / 4
    assert es_all(p, 2 * p) == pytest.approx(
        {"es_cosine": 1.0, "es_token_cosine": 0.5,  # cosines [[1, 0], [0, 1]]
         "es_euclidean": 1 / 6, "es_token_euclidean": 1 / (1 + mean_dist),
         "es_token_cosine_aligned": 1.0})


def test_es_token_cosines_differ_from_flattened_cosine():
    p1 = torch.tensor([[1.0, 0.0], [10.0, 0.0]])
    p2 = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    assert es_cosine(p1, p2) == pytest.approx(1 / 101)  # dot 1, norms sqrt(101) each
    assert es_token_cosine_aligned(p1, p2) == pytest.approx(0.5)  # aligned: cos 1 and cos 0
    assert es_token_cosine(p1, p2) == pytest.approx(0.5)  # all pairs: [[1, 0], [1, 0]]


def test_es_token_indicators_ignore_token_order_the_aligned_one_does_not():
    p1 = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    p2 = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    perm = torch.tensor([2, 0, 3, 1])
    for fn in (es_token_cosine, es_token_euclidean):
        assert fn(p1, p2[perm]) == pytest.approx(fn(p1, p2))
        assert fn(p1[perm], p2) == pytest.approx(fn(p1, p2))
    assert es_token_cosine_aligned(p1, p1[perm]) < 0.9  # permuted: not the same prompt


@pytest.mark.parametrize("fn", list(ES_INDICATORS.values()))
def test_es_mismatched_shapes(fn):
    with pytest.raises(ValueError, match=r"\(2, 4\) vs \(3, 4\)"):
        fn(torch.ones(2, 4), torch.ones(3, 4))


# --- ON ------------------------------------------------------------------------------------

# 3 layers x 4 neurons; only values > 0 count as activated (0.0 does not)
ACT_A = torch.tensor([[0.5, 2.0, 0.0, -1.0],
                      [1.0, -0.3, 0.1, 0.0],
                      [-2.0, 0.0, -0.1, 3.0]])  # |A| = 5
ACT_B = torch.tensor([[0.2, -1.0, -1.0, 0.0],
                      [0.7, 0.4, 2.0, -5.0],
                      [0.0, -1.0, -1.0, -1.0]])  # |B| = 4; A and B: 1 + 2 + 0 = 3


def test_binary_activations_is_strictly_positive():
    assert binary_activations(ACT_A).tolist() == [[True, True, False, False],
                                                  [True, False, True, False],
                                                  [False, False, False, True]]


def test_on_identical_disjoint_and_empty():
    a = binary_activations(ACT_A)
    assert on_overlap(a, a) == pytest.approx(1.0)
    assert on_overlap(a, ~a) == 0.0
    assert on_overlap(a, torch.zeros_like(a)) == 0.0


def test_on_hand_made_pair_with_windows():
    out = on_indicators(ACT_A, ACT_B, window=2)
    assert out == pytest.approx({
        "on": 3 / math.sqrt(5 * 4),
        "on_layers_1-2": 3 / math.sqrt(4 * 4),  # layers 1-2: |A| 4, |B| 4, overlap 3
        "on_layers_3-3": 0.0,  # layer 3: B has no activated neuron
    })
    # bool masks give the same as the activations they come from
    assert on_indicators(binary_activations(ACT_A), binary_activations(ACT_B), 2) == out
    per_layer = on_indicators(ACT_A, ACT_B, window=1)
    assert list(per_layer) == ["on", "on_layers_1-1", "on_layers_2-2", "on_layers_3-3"]
    assert per_layer["on_layers_1-1"] == pytest.approx(1 / math.sqrt(2 * 1))
    assert per_layer["on_layers_2-2"] == pytest.approx(2 / math.sqrt(2 * 3))
    assert on_indicators(ACT_A, ACT_B, 5) == {"on": out["on"], "on_layers_1-3": out["on"]}


def test_on_bad_input():
    with pytest.raises(ValueError, match=r"\(3, 4\) vs \(2, 4\)"):
        on_overlap(ACT_A, ACT_B[:2])
    with pytest.raises(ValueError, match="positive integer"):
        on_indicators(ACT_A, ACT_B, 0)


def test_all_indicators_has_es_and_on():
    p = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    out = all_indicators(p, 2 * p, ACT_A, ACT_B, window=2)
    assert set(out) == {*ES_INDICATORS, "on", "on_layers_1-2", "on_layers_3-3"}
    assert out["es_euclidean"] == pytest.approx(1 / 6)
    assert out["on"] == pytest.approx(3 / math.sqrt(20))


# --- neuron masks ----------------------------------------------------------------------------


def test_top_neuron_mask_picks_the_largest():
    acts = torch.tensor([[0.1, 5.0, -1.0], [3.0, 0.2, 4.0]])
    assert top_neuron_mask(acts, 0.5).tolist() == [[False, True, False], [True, False, True]]
    assert top_neuron_mask(acts, 0.01).tolist() == [[False, True, False], [False] * 3]  # >= 1
    assert top_neuron_mask(acts, 1.0).all()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        top_neuron_mask(acts, 0.0)


def test_random_neuron_mask_count_and_seed():
    m = random_neuron_mask((4, 25), 0.1, seed=0)
    assert m.shape == (4, 25) and m.dtype == torch.bool and int(m.sum()) == 10
    assert torch.equal(m, random_neuron_mask((4, 25), 0.1, seed=0))
    assert not torch.equal(m, random_neuron_mask((4, 25), 0.1, seed=1))
    bigger = random_neuron_mask((4, 25), 0.3, seed=0)
    assert int(bigger.sum()) == 30 and bool(bigger[m].all())  # nested for one seed


# --- backbones: FFN activations and masking ----------------------------------------------------


@pytest.fixture(scope="module")
def mlm(tiny_models):
    return load_backbone("mlm", tiny_models["mlm"])


@pytest.fixture(scope="module")
def causal(gpt2_dir):
    return load_backbone("causal", gpt2_dir)


@pytest.fixture(scope="module")
def seq2seq(t5_dir):
    return load_backbone("seq2seq", t5_dir)


N_TOKENS = 3
# kind fixture -> (L, F), ON positions per layer for a 3-token prompt
EXPECTED = {
    "encoder": ((2, 64), [[3, 4]] * 2),  # [P] [CLS] [SEP]: mean over the text positions
    "mlm": ((2, 64), [[4]] * 2),  # [P] [CLS] [MASK] [SEP]: the mask
    "causal": ((2, 128), None),  # [P] cue: the last position (cue length from the tokenizer)
    "seq2seq": ((2, 64), [[0]] * 2),  # the decoder's 2 layers at step 0
}
KINDS = list(EXPECTED)
LABEL_WORDS = ("terrible", "excellent")
TEXTS = [("a fine film", None), ("it rained all day", "in the old city")]


@pytest.fixture(params=KINDS)
def bb(request):
    return request.getfixturevalue(request.param)


def prompt_for(bb, seed=0, n=N_TOKENS):
    return torch.randn(n, bb.hidden_size, generator=torch.Generator().manual_seed(seed))


def no_hooks_left(bb) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in bb.model.modules())


def test_ffn_modules_are_the_kinds_intermediate_activation(encoder, mlm, causal, seq2seq):
    assert [type(m).__name__ for m in encoder.ffn_modules()] == ["BertIntermediate"] * 2
    assert [type(m).__name__ for m in mlm.ffn_modules()] == ["BertIntermediate"] * 2
    # GPT-2: the input of each MLP's output linear, c_proj (read with a pre-hook)
    gpt_mlps = [block.mlp.c_proj for block in causal.model.transformer.h]
    assert causal.ffn_modules() == gpt_mlps and causal.ffn_read == "input"
    names = [name for name, _ in seq2seq.ffn_named_modules()]  # T5: the decoder's wo inputs
    assert names == [f"decoder.block.{i}.layer.2.DenseReluDense.wo" for i in range(2)]
    assert seq2seq.ffn_read == "input"


def test_ffn_modules_missing_is_a_clear_error(encoder, monkeypatch):
    monkeypatch.setattr(encoder, "ffn_module_suffix", "no_such_module")
    with pytest.raises(ValueError, match=r"no FFN activation module named '\*\.no_such_module'"):
        encoder.ffn_modules()


def test_ffn_activations_shape_positions_and_hooks(bb):
    kind = bb.kind
    shape, positions = EXPECTED[kind]
    prompt = prompt_for(bb)
    acts = bb.ffn_activations(prompt)
    assert acts.shape == shape and acts.dtype == torch.float32
    assert bb.ffn_shape == shape
    assert no_hooks_left(bb)
    stim = bb.stimulus(prompt)
    if kind == "causal":
        positions = [[N_TOKENS + len(bb._cue_ids) - 1]] * 2
    assert stim.positions == positions
    assert not torch.equal(acts, bb.ffn_activations(prompt_for(bb, seed=1)))  # prompt matters


def test_ffn_activations_match_the_scoring_forward(bb):
    """The stimulus is the kind's scoring layout: the FFN activations seen during ``logits`` on
    the empty input, read at the stimulus positions, are exactly ``ffn_activations``."""
    prompt = prompt_for(bb)
    seen = {}
    handles = [bb.hook_ffn(m, lambda acts, layer=layer: seen.update({layer: acts}))
               for layer, m in enumerate(bb.ffn_modules())]
    try:
        with torch.no_grad():
            bb.logits(prompt, bb._empty_input(), bb.label_scorer(LABEL_WORDS))
    finally:
        for h in handles:
            h.remove()
    stim = bb.stimulus(prompt)
    reduce = POSITION_REDUCTIONS[stim.reduce]
    expected = torch.stack([reduce(seen[layer][0, pos])
                            for layer, pos in enumerate(stim.positions)])
    torch.testing.assert_close(bb.ffn_activations(prompt), expected)


def test_roberta_mlm_reads_its_mask(tmp_path):
    roberta = load_backbone("mlm", str(tiny_roberta_dir(tmp_path / "roberta")))
    assert [type(m).__name__ for m in roberta.ffn_modules()] == ["RobertaIntermediate"] * 2
    assert roberta.stimulus(prompt_for(roberta)).positions == [[N_TOKENS + 1]] * 2  # <s> <mask>
    assert roberta.ffn_activations(prompt_for(roberta)).shape == (2, 64)


def test_ffn_activations_bad_prompt(encoder):
    with pytest.raises(PromptFileError, match="hidden size 8"):
        encoder.ffn_activations(torch.zeros(2, 8))


def _logits(bb, prompt):
    batch = bb.collate([bb.encode(a, b, 32) for a, b in TEXTS])
    with torch.no_grad():
        return bb.logits(prompt, batch, bb.label_scorer(LABEL_WORDS))


def test_masked_neurons_none_and_all(bb):
    prompt = prompt_for(bb)
    plain = _logits(bb, prompt)
    with bb.masked_neurons(torch.zeros(bb.ffn_shape, dtype=torch.bool)):
        torch.testing.assert_close(_logits(bb, prompt), plain, rtol=0, atol=0)
    with bb.masked_neurons(torch.ones(bb.ffn_shape, dtype=torch.bool)):
        assert not torch.allclose(_logits(bb, prompt), plain)
        assert not bb.ffn_activations(prompt).any()  # every FFN neuron reads 0
    assert no_hooks_left(bb)
    torch.testing.assert_close(_logits(bb, prompt), plain, rtol=0, atol=0)


def test_masking_and_capture_leave_other_threads_alone(encoder):
    prompt = prompt_for(encoder)
    plain, acts = _logits(encoder, prompt), encoder.ffn_activations(prompt)
    seen = {}

    def other_thread():
        seen["logits"] = _logits(encoder, prompt)
        seen["acts"] = encoder.ffn_activations(prompt)

    with encoder.masked_neurons(torch.ones(encoder.ffn_shape, dtype=torch.bool)):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert not torch.allclose(_logits(encoder, prompt), plain)  # this thread: masked
    torch.testing.assert_close(seen["logits"], plain, rtol=0, atol=0)
    torch.testing.assert_close(seen["acts"], acts, rtol=0, atol=0)


def test_masked_top_neurons_read_zero(encoder):
    prompt = prompt_for(encoder)
    acts = encoder.ffn_activations(prompt)
    top = top_neuron_mask(acts, 0.1)  # 13 of 128
    assert bool((acts[top] > 0).all())
    with encoder.masked_neurons(top):
        masked = encoder.ffn_activations(prompt)
    assert bool((masked[top] == 0).all())
    # layer 1 (before any masked output feeds forward) is unchanged outside the mask
    assert torch.equal(masked[0][~top[0]], acts[0][~top[0]])
    torch.testing.assert_close(encoder.ffn_activations(prompt), acts, rtol=0, atol=0)


def test_masked_neurons_bad_mask_and_cleanup(encoder):
    with pytest.raises(ValueError, match=r"\(2, 63\) does not match .*expected \(2, 64\)"):
        with encoder.masked_neurons(torch.zeros(2, 63, dtype=torch.bool)):
            pass
    with pytest.raises(ValueError, match="bool"):
        with encoder.masked_neurons(torch.zeros(2, 64)):
            pass
    with pytest.raises(RuntimeError, match="inside"):
        with encoder.masked_neurons(torch.ones(2, 64, dtype=torch.bool)):
            raise RuntimeError("inside")
    assert no_hooks_left(encoder)


def test_masking_ablation_rows(encoder):
    task = keyword_task(n_train=8, n_dev=16)
    prompt = prompt_for(encoder)
    rows = masking_ablation(encoder, task, prompt, fractions=(0.1, 1.0), split="test",
                            max_examples=12, max_length=32, seed=0)
    assert [r["fraction"] for r in rows] == [0.1, 1.0]
    assert [r["n_masked"] for r in rows] == [13, 128]  # round(0.1 * 2 * 64), all of them
    unmasked = encoder.ffn_activations(prompt)
    for r in rows:
        assert set(r) == {"fraction", "n_masked", "metric", "score", "top_masked_score",
                          "random_masked_score", "top_drop", "random_drop", "n_examples"}
        assert r["metric"] == "accuracy" and r["n_examples"] == 12
        assert r["top_drop"] == pytest.approx(r["score"] - r["top_masked_score"])
        assert r["random_drop"] == pytest.approx(r["score"] - r["random_masked_score"])
        assert all(0 <= r[k] <= 1 for k in ("score", "top_masked_score", "random_masked_score"))
    assert rows[0]["score"] == rows[1]["score"]  # one unmasked score
    assert rows[1]["top_masked_score"] == rows[1]["random_masked_score"]  # both mask everything
    assert no_hooks_left(encoder)
    torch.testing.assert_close(encoder.ffn_activations(prompt), unmasked, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        masking_ablation(encoder, task, prompt, fractions=(0.1, 1.5))


# --- ON's position rule (IndicatorsConfig.on_position) ----------------------------------------


def test_on_position_choices_and_errors(encoder, mlm):
    from typing import get_args

    from prompt_core.backbones.encoder import ON_POSITIONS
    from prompt_core.config import OnPosition

    assert list(ON_POSITIONS) == list(get_args(OnPosition))  # every configurable choice
    prompt = prompt_for(encoder)
    pooled = [N_TOKENS, N_TOKENS + 1]  # [CLS] [SEP]
    expected = {"any": (pooled, "max"), "first": ([N_TOKENS], "max"),
                "prompt": (list(range(N_TOKENS)), "max"), "mean": (pooled, "mean")}
    for choice, (positions, reduce) in expected.items():
        stim = encoder.stimulus(prompt, choice)
        assert (stim.positions, stim.reduce) == ([positions] * 2, reduce)
    with pytest.raises(ValueError, match="on_position must be one of"):
        encoder.stimulus(prompt, "last")
    with pytest.raises(ValueError, match="needs a prompt"):
        encoder.ffn_activations(None, "prompt")
    # a kind that reads one position: the choice changes nothing
    one = mlm.ffn_activations(prompt_for(mlm))
    for choice in expected:
        assert torch.equal(mlm.ffn_activations(prompt_for(mlm), choice), one)


def test_on_position_enters_the_unit_keys():
    from types import SimpleNamespace

    from prompt_core.config import EvalConfig, IndicatorsConfig, ModelConfig
    from tasks.indicator_units import ablation_key, pair_key

    assert IndicatorsConfig().on_position == "any"
    model = ModelConfig(kind="encoder", name="m", model_id="some/model")
    a, b = SimpleNamespace(prompt_key="ka"), SimpleNamespace(prompt_key="kb")
    keys = {c: pair_key(model, a, b, 3, c) for c in ("any", "first", "prompt", "mean")}
    assert len(set(keys.values())) == 4
    assert pair_key(model, b, a, 3, "any") == keys["any"]  # unordered pair
    abl = {c: ablation_key(model, a, IndicatorsConfig(on_position=c), EvalConfig())
           for c in ("any", "mean")}
    assert abl["any"] != abl["mean"]
