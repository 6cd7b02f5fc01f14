"""prompt_core.prompts: initialisation strategies and the safetensors prompt file format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from prompt_core.prompts import (
    META_KEY,
    PROMPT_INITS,
    TENSOR_NAME,
    PromptFileError,
    check_prompt_shape,
    init_prompt,
    load_prompt_file,
    prompt_from_bytes,
    prompt_to_bytes,
    save_prompt_file,
)


def test_registered_inits():
    assert {"random", "vocab", "text", "prompt"} <= set(PROMPT_INITS)


def test_init_unknown_kind(encoder):
    with pytest.raises(ValueError, match="unknown prompt init 'zeros'"):
        init_prompt("zeros", encoder, 4, seed=0)


def test_init_random_reproducible(encoder):
    a = init_prompt("random", encoder, 6, seed=3, std=0.02)
    assert a.shape == (6, encoder.hidden_size) == (6, 32)
    assert a.dtype == torch.float32
    assert torch.equal(a, init_prompt("random", encoder, 6, seed=3, std=0.02))
    assert not torch.equal(a, init_prompt("random", encoder, 6, seed=4, std=0.02))
    big = init_prompt("random", encoder, 200, seed=0, std=0.5)
    assert big.std().item() == pytest.approx(0.5, rel=0.1)
    assert big.mean().abs().item() < 0.05


def test_init_vocab_rows_are_vocabulary_embeddings(encoder):
    table = encoder.input_embeddings.weight.detach()
    p = init_prompt("vocab", encoder, 8, seed=0)
    assert p.shape == (8, 32)
    special = set(encoder.tokenizer.all_special_ids)
    ids = []
    for row in p:
        hits = (table == row).all(dim=1).nonzero().flatten().tolist()
        assert hits, "a vocab-init row is not a row of the embedding table"
        ids.append(hits[0])
    assert len(set(ids)) == 8  # sampled without replacement
    assert not set(ids) & special
    assert torch.equal(p, init_prompt("vocab", encoder, 8, seed=0))
    assert not torch.equal(p, init_prompt("vocab", encoder, 8, seed=1))
    p[0] += 1.0  # a copy: the model's table is untouched
    assert not (table == p[0]).all(dim=1).any()


def test_init_text(encoder):
    table = encoder.input_embeddings.weight.detach()
    ids = encoder.tokenizer("great movie", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    p = init_prompt("text", encoder, 5, seed=0, text="great movie")
    assert p.shape == (5, 32)
    expected = table[torch.tensor([ids[0], ids[1], ids[0], ids[1], ids[0]])]
    assert torch.equal(p, expected)  # repeated to length
    p1 = init_prompt("text", encoder, 1, seed=0, text="great movie")
    assert torch.equal(p1, table[ids[:1]])  # cut to length
    with pytest.raises(ValueError, match="needs init_text"):
        init_prompt("text", encoder, 5, seed=0)


def test_init_from_prompt(encoder):
    src = torch.randn(4, 32)
    p = init_prompt("prompt", encoder, 4, seed=0, prompt=src)
    assert torch.equal(p, src)
    p += 1
    assert not torch.equal(p, src)  # a copy
    with pytest.raises(ValueError, match="needs an existing prompt"):
        init_prompt("prompt", encoder, 4, seed=0)
    with pytest.raises(PromptFileError, match="has 4 tokens, expected 5"):
        init_prompt("prompt", encoder, 5, seed=0, prompt=src)
    with pytest.raises(PromptFileError, match="hidden size 16 does not match the model's 32"):
        init_prompt("prompt", encoder, 4, seed=0, prompt=torch.randn(4, 16))


def test_check_prompt_shape():
    check_prompt_shape(torch.zeros(3, 8), 8, 3)
    check_prompt_shape(torch.zeros(3, 8), 8)
    with pytest.raises(PromptFileError, match="hidden size 8 does not match the model's 16"):
        check_prompt_shape(torch.zeros(3, 8), 16, where="p.safetensors")
    with pytest.raises(PromptFileError, match="expected a 2-d tensor"):
        check_prompt_shape(torch.zeros(8), 8)
    with pytest.raises(PromptFileError, match="NaN or infinite"):
        check_prompt_shape(torch.tensor([[0.0, float("inf")]]), 2)
    with pytest.raises(PromptFileError, match="^p.safetensors: "):
        check_prompt_shape(torch.zeros(3, 8), 16, where="p.safetensors")


# --- file format ---------------------------------------------------------------------------


def test_bytes_round_trip_with_metadata():
    p = torch.randn(5, 32)
    meta = {"model": "tiny", "task": "sst2", "best_step": 40, "scores": {"accuracy": 0.75},
            "tags": ["a", "b"]}
    data = prompt_to_bytes(p, meta)
    q, m = prompt_from_bytes(data)
    assert torch.equal(p, q) and q.dtype == torch.float32
    assert m == {**meta, "format_version": 1}
    # half-precision and non-contiguous input is stored as float32
    h = torch.randn(32, 5).t().half()
    q, _ = prompt_from_bytes(prompt_to_bytes(h, {}))
    assert torch.equal(q, h.float())
    # deterministic bytes for the same input
    assert prompt_to_bytes(p, meta) == data


def test_files_are_safetensors(tmp_path):
    p = torch.randn(3, 32)
    path = tmp_path / "p.safetensors"
    save_prompt_file(path, p, {"task": "x"})
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == [TENSOR_NAME]
        assert torch.equal(f.get_tensor(TENSOR_NAME), p)
        assert json.loads(f.metadata()[META_KEY]) == {"task": "x", "format_version": 1}
    q, m = load_prompt_file(path)
    assert torch.equal(p, q) and m["task"] == "x"
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompt_file(tmp_path / "absent.safetensors")


def test_prompt_file_errors(tmp_path):
    with pytest.raises(PromptFileError, match="bad.bin: not a valid safetensors file"):
        prompt_from_bytes(b"this is not a safetensors file at all", where="bad.bin")
    with pytest.raises(PromptFileError, match="not a valid safetensors file"):
        prompt_from_bytes(b"")
    import io
    import pickle

    buf = io.BytesIO()
    pickle.dump({"prompt": [[0.0]]}, buf)
    with pytest.raises(PromptFileError, match="not a valid safetensors file"):
        prompt_from_bytes(buf.getvalue())
    with pytest.raises(PromptFileError, match="no tensor named 'prompt' \\(has \\['weights'\\]\\)"):
        prompt_from_bytes(st_save({"weights": torch.zeros(2, 4)}))
    with pytest.raises(PromptFileError, match="expected a 2-d tensor"):
        prompt_from_bytes(st_save({"prompt": torch.zeros(8)}))
    with pytest.raises(PromptFileError, match="expected a 2-d tensor"):
        prompt_from_bytes(st_save({"prompt": torch.zeros(1, 2, 8)}))
    with pytest.raises(PromptFileError, match="NaN or infinite"):
        prompt_from_bytes(st_save({"prompt": torch.tensor([[0.0, float("nan")]])}))
    with pytest.raises(PromptFileError, match="metadata is not valid JSON"):
        prompt_from_bytes(st_save({"prompt": torch.zeros(2, 4)}, metadata={META_KEY: "{oops"}))
    # a file without our metadata still loads, with empty metadata
    q, m = prompt_from_bytes(st_save({"prompt": torch.ones(2, 4)}))
    assert m == {} and torch.equal(q, torch.ones(2, 4))
    # a prompt from a model of another hidden size is caught by the shape check
    q, _ = prompt_from_bytes(prompt_to_bytes(torch.zeros(4, 16), {}))
    with pytest.raises(PromptFileError, match="does not match the model's 32"):
        check_prompt_shape(q, 32)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(PromptFileError, match=f"{bad}: not a valid safetensors file"):
        load_prompt_file(bad)
