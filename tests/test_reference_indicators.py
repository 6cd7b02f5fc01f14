"""The transferability indicators pinned to the official definitions (METHOD.md
"Transferability indicators"; thunlp/Prompt-Transferability 1.0,
``caculate_metric_value_for_correlation.py`` and the T5 activation code), on values computed by
hand: ES on small tensors, ON on small binary patterns, the T5 decoder-only and gated-FFN
activations (from the module weights), a Llama-style gated MLP, and the encoder kind's
per-position "activated" rule."""

from __future__ import annotations

import math

import pytest
import torch

import prompt_core.indicators as ind
from prompt_core.backbones import CausalBackbone, Seq2SeqBackbone
from prompt_core.indicators import binary_activations, on_indicators, random_neuron_mask

pytestmark = pytest.mark.reference

# --- ES: the official CosineSimilarity(_per_token), EuclideanDistances(_per_token) -------------

# three tokens a = (1, 0), b = (0, 1), c = (1, 1); the rotated prompt is c, a, b
P1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
ROTATED = torch.roll(P1, shifts=1, dims=0)
R2 = math.sqrt(2)


def test_rotated_tokens_by_hand():
    assert ROTATED.tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    # flattened: (1,0,0,1,1,1) . (1,1,1,0,0,1) = 2, both norms 2
    assert ind.es_cosine(P1, ROTATED) == pytest.approx(0.5)
    # ||(0,-1,-1,1,1,0)|| = 2
    assert ind.es_euclidean(P1, ROTATED) == pytest.approx(1 / 3)
    # all 3 x 3 pairs of {a, b, c}: cosines 1 (x3 diagonal), 0 (a,b twice), 1/sqrt2 (a,c and
    # b,c, twice each) -> (3 + 4 / sqrt2) / 9; distances 0 (x3), sqrt2 (x2), 1 (x4)
    all_pairs_cos = (3 + 2 * R2) / 9
    all_pairs_dist = (2 * R2 + 4) / 9
    assert ind.es_token_cosine(P1, ROTATED) == pytest.approx(all_pairs_cos)
    assert ind.es_token_euclidean(P1, ROTATED) == pytest.approx(1 / (1 + all_pairs_dist))
    # the all-pairs ones do not see the rotation: the same as P1 against itself
    assert ind.es_token_cosine(P1, ROTATED) == pytest.approx(ind.es_token_cosine(P1, P1))
    assert ind.es_token_euclidean(P1, ROTATED) == pytest.approx(ind.es_token_euclidean(P1, P1))
    # the aligned pairs do: cos(a, c), cos(b, a), cos(c, b) = 1/sqrt2, 0, 1/sqrt2
    assert ind.es_token_cosine_aligned(P1, ROTATED) == pytest.approx(R2 / 3)
    assert ind.es_token_cosine_aligned(P1, P1) == pytest.approx(1.0)
    assert R2 / 3 != pytest.approx(all_pairs_cos)


def test_two_prompts_by_hand():
    p1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p2 = torch.tensor([[3.0, 0.0], [3.0, 3.0]])  # (1, 0) and (1, 1), scaled by 3
    # flattened (1,0,0,1) . (3,0,3,3) = 6, norms 1 * sqrt2 and 3 * sqrt3
    assert ind.es_cosine(p1, p2) == pytest.approx(6 / (R2 * 3 * math.sqrt(3)))
    # ||(1,0,0,1) - (3,0,3,3)|| = ||(-2, 0, -3, -2)|| = sqrt(17)
    assert ind.es_euclidean(p1, p2) == pytest.approx(1 / (1 + math.sqrt(17)))
    # cosines [[1, 1/sqrt2], [0, 1/sqrt2]]: all pairs (1 + sqrt2) / 4, aligned (1 + 1/sqrt2) / 2
    assert ind.es_token_cosine(p1, p2) == pytest.approx((1 + R2) / 4)
    assert ind.es_token_cosine_aligned(p1, p2) == pytest.approx((1 + 1 / R2) / 2)
    # distances [[2, sqrt(4 + 9)], [sqrt(9 + 1), sqrt(9 + 4)]]
    mean_dist = (2 + 2 * math.sqrt(13) + math.sqrt(10)) / 4
    assert ind.es_token_euclidean(p1, p2) == pytest.approx(1 / (1 + mean_dist))


def test_es_registry_holds_the_official_four_and_the_aligned_cosine():
    assert ind.ES_INDICATORS == {
        "es_cosine": ind.es_cosine, "es_token_cosine": ind.es_token_cosine,
        "es_euclidean": ind.es_euclidean, "es_token_euclidean": ind.es_token_euclidean,
        "es_token_cosine_aligned": ind.es_token_cosine_aligned}


# --- ON: |A and B| / sqrt(|A| |B|), over all layers and per window --------------------------

A = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)  # |A| = 5
B = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)  # |B| = 6


def test_on_binary_patterns_by_hand():
    # A and B: (0,0), (1,1), (2,0) -> 3
    assert on_indicators(A, B, window=2) == pytest.approx({
        "on": 3 / math.sqrt(5 * 6),
        "on_layers_1-2": 2 / math.sqrt(4 * 2),  # |A| 4, |B| 2, both 2
        "on_layers_3-4": 1 / math.sqrt(1 * 4),  # |A| 1, |B| 4, both 1
    })
    assert on_indicators(A, B, window=3) == pytest.approx({
        "on": 3 / math.sqrt(30),
        "on_layers_1-3": 3 / math.sqrt(5 * 5),
        "on_layers_4-4": 0.0,  # A activates nothing in layer 4
    })


def test_on_activated_means_strictly_positive():
    # the same patterns as values: activated (> 0) where A is; 0.0 and negatives are not
    values = torch.where(A, torch.tensor(0.25), torch.tensor(-0.5))
    values[3, 0] = 0.0
    assert torch.equal(binary_activations(values), A)
    assert on_indicators(values, B, window=2) == on_indicators(A, B, window=2)


# --- T5: decoder FFN neurons at the first decoding step; gated: what feeds wo ----------------


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """T5 v1.1's ``gelu_new`` (tanh approximation), written out."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def tiny_t5(t5_dir: str, ffn: str) -> Seq2SeqBackbone:
    """A tiny random T5 (2 encoder, 3 decoder layers, d_ff 64) with ``feed_forward_proj=ffn``
    and the tokenizer of the conftest's tiny T5."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(t5_dir)
    torch.manual_seed(1)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=2, num_decoder_layers=3,
                   num_heads=2, d_kv=16, feed_forward_proj=ffn, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    return Seq2SeqBackbone(T5ForConditionalGeneration(cfg), tok, f"tiny-t5-{ffn}")


@pytest.fixture(scope="module", params=["relu", "gated-gelu"])
def t5(request, t5_dir):
    return tiny_t5(t5_dir, request.param)


def prompt_for(bb, seed=0, n=3):
    return torch.randn(n, bb.hidden_size, generator=torch.Generator().manual_seed(seed))


def _ffn_inputs(bb, part) -> tuple[list, list]:
    """Pre-hooks keeping the input x (B, T, D) of every ``DenseReluDense`` of ``part``."""
    seen: list = [None] * len(part.block)
    handles = [block.layer[-1].DenseReluDense.register_forward_pre_hook(
        lambda _m, args, i=i: seen.__setitem__(i, args[0].detach()))
        for i, block in enumerate(part.block)]
    return seen, handles


def test_t5_on_reads_the_decoder_only_at_step_0(t5):
    names = [name for name, _ in t5.ffn_named_modules()]
    assert names == [f"decoder.block.{i}.layer.2.DenseReluDense.wo" for i in range(3)]
    assert t5.ffn_shape == (3, 64)  # the 3 decoder layers, not 2 + 3
    stim = t5.stimulus(prompt_for(t5))
    assert stim.positions == [[0]] * 3
    assert stim.model_kwargs["decoder_input_ids"].tolist() == [[t5.decoder_start_token_id]]


def test_t5_on_is_what_feeds_wo_by_hand(t5):
    """Row l = the activation entering layer l's ``wo`` at decoder step 0, from the weights:
    relu(wi x) for T5, gelu_new(wi_0 x) * (wi_1 x) for gated T5 (not the gate alone)."""
    prompt = prompt_for(t5)
    decoder = t5.model.get_decoder()
    xs, handles = _ffn_inputs(t5, decoder)
    try:
        acts = t5.ffn_activations(prompt)  # (3, 64)
    finally:
        for h in handles:
            h.remove()
    rows, gates = [], []
    for x, block in zip(xs, decoder.block, strict=True):
        ffn, x0 = block.layer[2].DenseReluDense, x[0, 0]  # (D,) at step 0
        if hasattr(ffn, "wi_0"):  # gated
            gate = gelu_new(x0 @ ffn.wi_0.weight.T)  # (F,)
            rows.append(gate * (x0 @ ffn.wi_1.weight.T))
            gates.append(gate)
        else:
            rows.append(torch.relu(x0 @ ffn.wi.weight.T))
    acts = acts[-len(decoder.block):]  # all of them (the row count is pinned above)
    torch.testing.assert_close(acts, torch.stack(rows), rtol=1e-5, atol=1e-6)
    if gates:
        gate = torch.stack(gates)
        assert not torch.allclose(acts, gate, atol=1e-3)
        assert not torch.equal(binary_activations(acts), binary_activations(gate))


def test_t5_masked_neurons_zero_what_feeds_wo(t5):
    prompt = prompt_for(t5)
    mask = random_neuron_mask(t5.ffn_shape, 0.25, seed=0)  # (3, 64)
    batch = t5.collate([t5.encode("a fine film", None, 16), t5.encode("it rained", "here", 16)])
    scorer = t5.label_scorer(("terrible", "excellent"))

    def wo_inputs():
        seen = {}
        handles = [block.layer[-1].DenseReluDense.wo.register_forward_pre_hook(
            lambda _m, args, key=(part, i): seen.__setitem__(key, args[0].detach()))
            for part in ("encoder", "decoder")
            for i, block in enumerate(getattr(t5.model, part).block)]
        try:
            with torch.no_grad():
                logits = t5.logits(prompt, batch, scorer)
        finally:
            for h in handles:
                h.remove()
        return seen, logits

    plain, plain_logits = wo_inputs()
    with t5.masked_neurons(mask):
        masked, masked_logits = wo_inputs()  # registered after the mask's hooks: see its result
        assert not t5.ffn_activations(prompt)[mask].any()
    for layer in range(3):
        got = masked[("decoder", layer)]  # (B*K, L, F)
        assert not got[..., mask[layer]].any()  # every row and step
        assert got[..., ~mask[layer]].abs().sum() > 0
    # layer 0 is masked, not otherwise changed; the encoder is not masked at all
    assert torch.equal(masked[("decoder", 0)][..., ~mask[0]], plain[("decoder", 0)][..., ~mask[0]])
    for i in range(2):
        assert torch.equal(masked[("encoder", i)], plain[("encoder", i)])
    assert not torch.allclose(masked_logits, plain_logits)


# --- causal: a Llama-style gated MLP (SmolLM2): act(gate_proj x) * up_proj x -----------------


def test_llama_gated_mlp_on_by_hand(gpt2_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128)
    bb = CausalBackbone(LlamaForCausalLM(cfg), tok, "tiny-llama")
    layers = bb.model.model.layers
    assert bb.ffn_modules() == [layer.mlp.down_proj for layer in layers]
    prompt = prompt_for(bb)
    last = bb.stimulus(prompt).positions[0][0]
    xs: list = [None] * len(layers)
    handles = [layer.mlp.register_forward_pre_hook(
        lambda _m, args, i=i: xs.__setitem__(i, args[0].detach()))
        for i, layer in enumerate(layers)]
    try:
        acts = bb.ffn_activations(prompt)  # (2, 48)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for x, layer in zip(xs, layers, strict=True):
        g = x[0, last] @ layer.mlp.gate_proj.weight.T  # (F,)
        rows.append(g * torch.sigmoid(g) * (x[0, last] @ layer.mlp.up_proj.weight.T))  # silu
    torch.testing.assert_close(acts, torch.stack(rows), rtol=1e-5, atol=1e-6)


# --- encoder: "activated" is a property of one position ----------------------------------------

N = 3  # prompt tokens: the stimulus is [P] [CLS] [SEP], positions 0-2, 3, 4


def _designed(out: torch.Tensor) -> torch.Tensor:
    """Every neuron -1 at every position, except: neuron 0 +0.1 at [CLS] and -0.5 at [SEP]
    (mean over the pooled positions -0.2); neuron 1 -0.1 at [CLS] and +0.3 at [SEP] (mean
    +0.1); neuron 2 +2.0 at prompt position 1."""
    new = torch.full_like(out, -1.0)  # (1, 5, F)
    new[0, N, 0], new[0, N + 1, 0] = 0.1, -0.5
    new[0, N, 1], new[0, N + 1, 1] = -0.1, 0.3
    new[0, 1, 2] = 2.0
    return new


@pytest.fixture
def designed_encoder(encoder):
    """The tiny encoder with its FFN intermediate outputs replaced by :func:`_designed` (the
    encoder kind reads the ``intermediate`` modules' outputs)."""
    handles = [m.register_forward_hook(lambda _m, _i, out: _designed(out))
               for m in encoder.ffn_modules()]
    yield encoder
    for h in handles:
        h.remove()


@pytest.mark.parametrize(("on_position", "row"), [
    ("any", [0.1, 0.3, -1.0]),  # max over [CLS] [SEP]
    ("first", [0.1, -0.1, -1.0]),  # [CLS]
    ("prompt", [-1.0, -1.0, 2.0]),  # max over the prompt positions
    ("mean", [-0.2, 0.1, -1.0]),  # legacy: the mean over [CLS] [SEP]
])
def test_encoder_on_position_choices(designed_encoder, on_position, row):
    acts = designed_encoder.ffn_activations(prompt_for(designed_encoder, n=N), on_position)
    assert acts.shape == (2, 64)
    torch.testing.assert_close(acts[:, :3], torch.tensor([row, row]))
    assert bool((acts[:, 3:] == -1).all())


def test_encoder_default_counts_a_neuron_activated_at_one_pooled_position(designed_encoder):
    """Neuron 0 is > 0 at [CLS] only, its mean over the pooled positions < 0: activated."""
    acts = designed_encoder.ffn_activations(prompt_for(designed_encoder, n=N))  # the default
    assert binary_activations(acts)[:, :3].tolist() == [[True, True, False]] * 2


def test_encoder_any_with_pool_all_reads_the_prompt_too(designed_encoder, monkeypatch):
    monkeypatch.setattr(designed_encoder, "pool", "all")  # the prompt positions are pooled too
    acts = designed_encoder.ffn_activations(prompt_for(designed_encoder, n=N), "any")
    torch.testing.assert_close(acts[:, :3], torch.tensor([[0.1, 0.3, 2.0]] * 2))


def test_encoder_any_is_activated_at_some_pooled_position(encoder):
    """On the real (tiny) model: activated under "any" iff > 0 at one of [CLS] [SEP]."""
    prompt = prompt_for(encoder, n=N)
    seen = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, out))
               for i, m in enumerate(encoder.ffn_modules())]
    try:
        acts = encoder.ffn_activations(prompt, "any")
    finally:
        for h in handles:
            h.remove()
    per_position = torch.stack([seen[i][0, N:] for i in range(2)])  # (L, 2, F)
    assert torch.equal(binary_activations(acts), (per_position > 0).any(dim=1))
    # the legacy mean loses some of them
    assert binary_activations(acts).sum() >= binary_activations(
        encoder.ffn_activations(prompt, "mean")).sum()
