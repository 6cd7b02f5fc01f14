"""prompt_core.peft_io: soft prompts as PEFT prompt-tuning adapters, checked against PEFT itself.

The round trips load the exported folder with ``PeftModel.from_pretrained`` on the tiny local
models and compare what PEFT computes with what the backbone computes for the same prompt.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prompt_core.backbones import load_backbone
from prompt_core.errors import InputError
from prompt_core.peft_io import PEFT_TASK_TYPES, PeftAdapterError, export_peft, import_peft

TEXTS = ["the movie was excellent", "a terrible film about a city by the river", "ok"]


def _prompt(n: int = 4, d: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, D) standard-normal prompt: large enough to move every output of a tiny model."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _batch(bb, texts=TEXTS, pairs=None, max_length=40):
    pairs = pairs or [None] * len(texts)
    return bb.collate(bb.encode_many(list(texts), list(pairs), max_length))


def _peft(model_cls, model_dir, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(model_cls.from_pretrained(model_dir), str(folder)).eval()


@pytest.fixture(scope="module")
def mlm(tiny_models):
    return load_backbone("mlm", tiny_models["mlm"])


# --- the folder format -----------------------------------------------------------------------


@pytest.mark.parametrize("kind, task_type", [("encoder", "FEATURE_EXTRACTION"),
                                             ("mlm", "FEATURE_EXTRACTION"),
                                             ("causal", "CAUSAL_LM"),
                                             ("seq2seq", "SEQ_2_SEQ_LM")])
def test_export_writes_peft_config_and_weights(tmp_path, kind, task_type):
    p = _prompt(5, 16)
    folder = export_peft(p, tmp_path / "a", base_model_name_or_path="org/model",
                         backbone_kind=kind)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert {k: cfg[k] for k in ("peft_type", "task_type", "num_virtual_tokens", "token_dim",
                                "num_transformer_submodules", "prompt_tuning_init",
                                "base_model_name_or_path", "inference_mode")} == {
        "peft_type": "PROMPT_TUNING", "task_type": task_type, "num_virtual_tokens": 5,
        "token_dim": 16, "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
        "base_model_name_or_path": "org/model", "inference_mode": True}
    weights = load_file(folder / "adapter_model.safetensors")
    assert list(weights) == ["prompt_embeddings"]
    assert torch.equal(weights["prompt_embeddings"], p)
    assert sorted(PEFT_TASK_TYPES) == ["causal", "encoder", "mlm", "seq2seq"]


def test_import_of_export_is_exact_and_keeps_metadata(tmp_path):
    p = _prompt(3, 8, seed=1).double()  # exported as float32, like prompt files
    meta = {"model": "tiny", "task": "sst2", "task_type": "sentiment", "seed": 2}
    folder = export_peft(p, tmp_path / "a", base_model_name_or_path="org/gpt",
                         backbone_kind="causal", metadata=meta)
    q, got = import_peft(folder)
    assert q.dtype == torch.float32 and torch.equal(q, p.float())
    assert got == {**meta, "format_version": 1, "backbone_kind": "causal",
                   "base_model_name_or_path": "org/gpt", "peft_type": "PROMPT_TUNING",
                   "peft_task_type": "CAUSAL_LM", "n_tokens": 3, "hidden_size": 8}


# --- PEFT computes what the backbones compute ----------------------------------------------


def test_encoder_round_trip_matches_embed_with_prompt(tmp_path, encoder, tiny_models):
    """Single-segment inputs (token type ids all 0, which is what PEFT uses): PEFT's last hidden
    states equal the backbone model's on embed_with_prompt, at every position (prompt, text,
    padding), with the same attention mask (ones over the prompt)."""
    from transformers import BertModel

    p = _prompt()
    folder = export_peft(p, tmp_path / "a", base_model_name_or_path=tiny_models["encoder"],
                         backbone_kind="encoder")
    batch = _batch(encoder)
    assert int(batch["token_type_ids"].abs().sum()) == 0 and not batch["attention_mask"].all()
    with torch.no_grad():
        ours = encoder.model(**encoder.embed_with_prompt(p, batch)).last_hidden_state
        peft = _peft(BertModel, tiny_models["encoder"], folder)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        other = encoder.model(**encoder.embed_with_prompt(_prompt(seed=9), batch))
    B, T = batch["input_ids"].shape
    assert peft.shape == ours.shape == (B, 4 + T, 32)
    assert torch.allclose(peft, ours, atol=1e-5)
    assert not torch.allclose(peft, other.last_hidden_state, atol=1e-2)  # the prompt matters


def test_encoder_text_pairs_peft_drops_token_type_ids(tmp_path, encoder, tiny_models):
    """For a text pair PEFT ignores token_type_ids (with a warning): it equals the backbone
    run with all type ids 0, not with the second segment's type 1."""
    from transformers import BertModel

    p = _prompt()
    folder = export_peft(p, tmp_path / "a", base_model_name_or_path=tiny_models["encoder"],
                         backbone_kind="encoder")
    batch = _batch(encoder, TEXTS[:2], ["a second segment", "and another one"])
    assert int(batch["token_type_ids"].sum()) > 0
    model = _peft(BertModel, tiny_models["encoder"], folder)
    with torch.no_grad(), pytest.warns(UserWarning, match="Token type ids"):
        peft = model(**batch).last_hidden_state
    with torch.no_grad():
        kw = encoder.embed_with_prompt(p, batch)
        ours = encoder.model(**kw).last_hidden_state
        zero_types = encoder.model(**{**kw, "token_type_ids": torch.zeros_like(
            kw["token_type_ids"])}).last_hidden_state
    assert torch.allclose(peft, zero_types, atol=1e-5)
    assert not torch.allclose(peft, ours, atol=1e-3)


def test_mlm_round_trip_matches_label_logits(tmp_path, mlm, tiny_models):
    """BertForMaskedLM under FEATURE_EXTRACTION: PEFT's MLM logits equal the backbone's at every
    position, and its logits at the mask (shifted by n) give mlm.logits for the label words."""
    from transformers import BertForMaskedLM

    p = _prompt()
    folder = export_peft(p, tmp_path / "a", base_model_name_or_path=tiny_models["mlm"],
                         backbone_kind="mlm")
    batch = _batch(mlm)
    scorer = mlm.label_scorer(["terrible", "excellent"])
    with torch.no_grad():
        peft = _peft(BertForMaskedLM, tiny_models["mlm"], folder)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ours = mlm.model(**mlm.embed_with_prompt(p, batch)).logits
        scores = mlm.logits(p, batch, scorer)  # (B, K)
    assert torch.allclose(peft, ours, atol=1e-4)
    at_mask = peft[:, 4 + mlm._mask_pos]  # (B, V): the mask is at the same place in every row
    want = torch.stack([at_mask[:, ids].mean(dim=1) for ids in scorer], dim=1)
    assert torch.allclose(scores, want, atol=1e-4)


def test_causal_round_trip_matches_label_logits(tmp_path, gpt2_dir):
    """Tiny GPT-2 under CAUSAL_LM (right padding): PEFT's logits equal the model's on the
    prompted input at every position (the prompt rows' own positions are what tell their order
    apart: the last token attends to the prompt rows almost independently of their order), and
    at each example's last real token (n + length - 1) they give the backbone's label logits."""
    from transformers import GPT2LMHeadModel

    from prompt_core.backbones import prepend_prompt

    causal = load_backbone("causal", gpt2_dir)
    p = _prompt()
    folder = export_peft(p, tmp_path / "a", base_model_name_or_path=gpt2_dir,
                         backbone_kind="causal")
    batch = _batch(causal, ["a fine film", "it rained all day in the old city", "ok"])
    scorer = causal.label_scorer(["terrible", "excellent"])
    with torch.no_grad():
        peft = _peft(GPT2LMHeadModel, gpt2_dir, folder)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        scores = causal.logits(p, batch, scorer)
        embeds, mask = prepend_prompt(causal.input_embeddings(batch["input_ids"]),
                                      batch["attention_mask"], p)  # (B, n+T, D), (B, n+T)
        ours = causal.model(inputs_embeds=embeds, attention_mask=mask).logits  # (B, n+T, V)
    assert peft.shape == ours.shape and torch.allclose(peft, ours, atol=1e-5)
    last = 4 + batch["attention_mask"].sum(dim=1) - 1  # (B,)
    want = peft[torch.arange(len(last)), last][:, scorer]  # (B, K)
    assert torch.allclose(scores, want, atol=1e-4)


def test_seq2seq_round_trip_matches_label_log_likelihoods(tmp_path, t5_dir):
    """Tiny T5 under SEQ_2_SEQ_LM with one submodule: the prompt goes in front of the encoder
    only; PEFT's decoder log-likelihood of each label word equals seq2seq logits."""
    from transformers import T5ForConditionalGeneration

    t5 = load_backbone("seq2seq", t5_dir)
    p = _prompt()
    folder = export_peft(p, tmp_path / "a", base_model_name_or_path=t5_dir,
                         backbone_kind="seq2seq")
    batch = _batch(t5, ["a fine film", "it rained all day in the old city", "ok"])
    scorer = t5.label_scorer(["terrible", "very good"])
    model = _peft(T5ForConditionalGeneration, t5_dir, folder)
    B = batch["input_ids"].shape[0]
    with torch.no_grad():
        scores = t5.logits(p, batch, scorer)  # (B, K)
        for k in range(len(scorer)):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=scorer.decoder_input_ids[k].repeat(B, 1))
            logp = out.logits.log_softmax(-1)  # (B, L, V)
            tok = logp.gather(-1, scorer.targets[k].repeat(B, 1).unsqueeze(-1)).squeeze(-1)
            want = (tok * scorer.mask[k]).sum(dim=1)  # (B,)
            assert torch.allclose(scores[:, k], want, atol=1e-4)


# --- adapters written by PEFT itself --------------------------------------------------------


def test_import_adapter_saved_by_peft(tmp_path, tiny_models):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import BertModel

    base = BertModel.from_pretrained(tiny_models["encoder"])
    model = get_peft_model(base, PromptTuningConfig(task_type="FEATURE_EXTRACTION",
                                                    num_virtual_tokens=3))
    model.save_pretrained(tmp_path / "a")
    q, meta = import_peft(tmp_path / "a")
    assert torch.equal(q, model.prompt_encoder["default"].embedding.weight.detach())
    assert meta == {"peft_type": "PROMPT_TUNING", "peft_task_type": "FEATURE_EXTRACTION",
                    "base_model_name_or_path": tiny_models["encoder"], "n_tokens": 3,
                    "hidden_size": 32, "backbone_kind": None}  # encoder or mlm: not known


def test_peft_seq2seq_default_two_prompts_refused(tmp_path, t5_dir):
    """PEFT's SEQ_2_SEQ_LM default is num_transformer_submodules=2 (an encoder and a decoder
    prompt, weights (2n, D)): refused, saying why."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import T5ForConditionalGeneration

    base = T5ForConditionalGeneration.from_pretrained(t5_dir)
    model = get_peft_model(base, PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                    num_virtual_tokens=2))
    model.save_pretrained(tmp_path / "a")
    assert load_file(tmp_path / "a" / "adapter_model.safetensors")["prompt_embeddings"].shape \
        == (4, 32)
    with pytest.raises(PeftAdapterError, match="num_transformer_submodules=2.*decoder prompt"):
        import_peft(tmp_path / "a")


def test_lora_adapter_refused(tmp_path, tiny_models):
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    base = BertModel.from_pretrained(tiny_models["encoder"])
    get_peft_model(base, LoraConfig(target_modules=["query", "value"], r=2)).save_pretrained(
        tmp_path / "lora")
    with pytest.raises(InputError, match=r"lora: a LORA adapter .*not prompt tuning"):
        import_peft(tmp_path / "lora")


# --- bad input ------------------------------------------------------------------------------


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_import_errors_name_the_folder_and_the_problem(tmp_path):
    with pytest.raises(PeftAdapterError, match="nowhere does not exist"):
        import_peft(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PeftAdapterError, match="empty: no adapter_config.json"):
        import_peft(tmp_path / "empty")

    folder = export_peft(_prompt(4, 8), tmp_path / "a", base_model_name_or_path="m",
                         backbone_kind="encoder")
    _edit_config(folder, token_dim=16)
    with pytest.raises(PeftAdapterError, match=r"a: token_dim 16 .* hidden size 8 \(shape"):
        import_peft(folder)
    _edit_config(folder, token_dim=8, num_virtual_tokens=5)
    with pytest.raises(PeftAdapterError, match="num_virtual_tokens 5 .* 4 rows"):
        import_peft(folder)
    _edit_config(folder, num_virtual_tokens=4, num_transformer_submodules=None,
                 task_type="SEQ_2_SEQ_LM")  # PEFT's default for seq2seq: 2
    with pytest.raises(PeftAdapterError, match="num_transformer_submodules=2"):
        import_peft(folder)
    _edit_config(folder, task_type="CAUSAL_LM")  # default 1: imports
    assert import_peft(folder)[1]["peft_task_type"] == "CAUSAL_LM"

    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(PeftAdapterError, match="no adapter weights"):
        import_peft(folder)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(PeftAdapterError, match="adapter_config.json: not valid JSON"):
        import_peft(folder)


def test_import_reads_legacy_bin_weights(tmp_path):
    folder = export_peft(_prompt(2, 8), tmp_path / "a", base_model_name_or_path="m",
                         backbone_kind="causal")
    p = load_file(folder / "adapter_model.safetensors")["prompt_embeddings"]
    (folder / "adapter_model.safetensors").unlink()
    torch.save({"prompt_embeddings": p}, folder / "adapter_model.bin")
    q, meta = import_peft(folder)
    assert torch.equal(q, p) and meta["backbone_kind"] == "causal"  # from the task type
    torch.save({"other": p}, folder / "adapter_model.bin")
    with pytest.raises(PeftAdapterError, match="no 'prompt_embeddings' tensor"):
        import_peft(folder)


def test_export_refusals(tmp_path):
    p = _prompt(2, 8)
    kw = {"base_model_name_or_path": "m", "backbone_kind": "encoder"}
    folder = export_peft(p, tmp_path / "a", **kw)
    with pytest.raises(PeftAdapterError, match="not empty.*overwrite=True"):
        export_peft(p, folder, **kw)
    assert torch.equal(import_peft(folder)[0], p)  # untouched
    export_peft(2 * p, folder, overwrite=True, **kw)
    assert torch.equal(import_peft(folder)[0], 2 * p)

    with pytest.raises(PeftAdapterError, match="unknown backbone kind 'rnn'"):
        export_peft(p, tmp_path / "b", base_model_name_or_path="m", backbone_kind="rnn")
    with pytest.raises(PeftAdapterError, match="base_model_name_or_path must be"):
        export_peft(p, tmp_path / "b", base_model_name_or_path=" ", backbone_kind="mlm")
    for bad in (torch.zeros(0, 8), torch.zeros(2, 0)):
        with pytest.raises(PeftAdapterError, match="must both be > 0"):
            export_peft(bad, tmp_path / "b", **kw)
    with pytest.raises(InputError, match="expected a 2-d tensor"):
        export_peft(torch.zeros(8), tmp_path / "b", **kw)
    with pytest.raises(InputError, match="NaN"):
        export_peft(torch.full((2, 8), float("nan")), tmp_path / "b", **kw)
    with pytest.raises(PeftAdapterError, match="not JSON-serialisable"):
        export_peft(p, tmp_path / "b", metadata={"x": object()}, **kw)
    assert not (tmp_path / "b").exists()  # nothing written for refused input
    (tmp_path / "f").write_text("x")
    with pytest.raises(PeftAdapterError, match="not a folder"):
        export_peft(p, tmp_path / "f", **kw)
