"""prompt_core.prompts: initialisation strategies and the safetensors prompt file format."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

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


class ConcurrencyProbe:
    """Wraps a tokenizer and records whether two threads were ever inside it at once (each
    call sleeps a little, so unsynchronised callers overlap almost surely)."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._count = threading.Lock()
        self.inside = self.most_inside = self.calls = 0

    def _enter(self):
        with self._count:
            self.inside += 1
            self.calls += 1
            self.most_inside = max(self.most_inside, self.inside)

    def _leave(self):
        with self._count:
            self.inside -= 1

    def __call__(self, *args, **kwargs):
        self._enter()
        try:
            time.sleep(0.002)
            return self._tok(*args, **kwargs)
        finally:
            self._leave()

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.mark.parametrize("kind", ["encoder", "mlm"])
def test_tokenizer_calls_never_overlap(tiny_models, kind):
    """init_text, encode_many and label_scorer from several threads share one backbone (as
    Prefect task threads do): no two of them are ever inside the tokenizer at once."""
    from prompt_core.backbones import load_backbone

    bb = load_backbone(kind, tiny_models[kind])
    probe = bb.tokenizer = ConcurrencyProbe(bb.tokenizer)
    start = threading.Barrier(4)
    errors = []

    def work(i):
        try:
            start.wait()
            for j in range(6):
                if (i + j) % 3 == 0:
                    init_prompt("text", bb, 4, seed=0, text="great movie")
                elif (i + j) % 3 == 1:
                    bb.encode_many(["a fine film", "ok"], [None, "yes"], 16)
                else:
                    bb.label_scorer(("bad", "good"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert probe.calls >= 24
    assert probe.most_inside == 1, "two threads were inside the tokenizer at once"


def test_library_code_tokenizes_only_through_the_backbone():
    """Every tokenizer use in the library goes through Backbone.tokenize (which holds the
    lock) or the ids read at construction; only backbones/base.py calls the tokenizer."""
    root = Path(__file__).resolve().parents[1]
    direct = re.compile(r"\.tokenizer\s*[(.]")
    offenders = []
    for pkg in ("prompt_core", "tasks", "flows"):
        for f in sorted((root / pkg).rglob("*.py")):
            if f.relative_to(root).as_posix() == "prompt_core/backbones/base.py":
                continue
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if direct.search(line):
                    offenders.append(f"{f.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "use backbone.tokenize(...):\n" + "\n".join(offenders)


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


@pytest.mark.bad_input
def test_prompt_file_shape_errors_name_the_file_and_both_shapes(tmp_path):
    """A prompt that does not fit the model fails when read, naming its file/URI and the found
    and expected shapes."""
    uri = "s3://bucket/prompts/m/t/k.safetensors"
    data = prompt_to_bytes(torch.zeros(4, 16), {})
    prompt_from_bytes(data, uri, hidden_size=16, n_tokens=4)  # fits
    with pytest.raises(PromptFileError, match=re.escape(
            f"{uri}: hidden size 16 does not match the model's 32 (shape (4, 16), "
            "expected (4, 32))")):
        prompt_from_bytes(data, uri, hidden_size=32, n_tokens=4)
    with pytest.raises(PromptFileError, match=re.escape(
            f"{uri}: has 4 tokens, expected 5 (shape (4, 16), expected (5, 16))")):
        prompt_from_bytes(data, uri, hidden_size=16, n_tokens=5)
    with pytest.raises(PromptFileError, match=re.escape(
            f"{uri}: hidden size 16 does not match the model's 32 (shape (4, 16), "
            "expected (n_tokens, 32))")):
        prompt_from_bytes(data, uri, hidden_size=32)
    with pytest.raises(PromptFileError, match=re.escape(
            f"{uri}: expected a 2-d tensor (4, 16), got shape (2, 2, 16)")):
        prompt_from_bytes(st_save({"prompt": torch.zeros(2, 2, 16)}), uri, 16, 4)
    path = tmp_path / "p.safetensors"
    path.write_bytes(data)
    with pytest.raises(PromptFileError, match=re.escape(f"{path}: has 4 tokens, expected 20")):
        load_prompt_file(path, hidden_size=16, n_tokens=20)
    assert load_prompt_file(path, 16, 4)[0].shape == (4, 16)


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


def test_inspect_prompt_bytes_checks_a_file_as_prompt_from_bytes_does():
    """prompt_file.inspect_prompt_bytes (numpy, for validating a study without torch) accepts
    and refuses exactly what prompt_from_bytes does, with the same message."""
    from prompt_core.prompt_file import inspect_prompt_bytes

    nan = torch.tensor([[1.0, float("nan")]])
    files = {
        "ok": prompt_to_bytes(torch.ones(4, 8), {"a": 1}),
        "bf16": st_save({TENSOR_NAME: torch.ones(4, 8, dtype=torch.bfloat16)}),
        "bf16-nan": st_save({TENSOR_NAME: nan.to(torch.bfloat16)}),
        "f16-inf": st_save({TENSOR_NAME: torch.tensor([[1.0, float("inf")]]).half()}),
        "f64": st_save({TENSOR_NAME: torch.ones(2, 3, dtype=torch.float64)}),
        "int": st_save({TENSOR_NAME: torch.ones(2, 3, dtype=torch.int64)}),
        "bad-meta": st_save({TENSOR_NAME: torch.ones(2, 3)}, metadata={META_KEY: "{x"}),
        "3-d": st_save({TENSOR_NAME: torch.ones(2, 3, 4)}),
        "other-name": st_save({"weights": torch.ones(2, 3)}),
        "junk": b"junk",
    }

    def outcome(read, data, name, **kw):
        try:
            return read(data, name, **kw)
        except PromptFileError as e:
            return str(e)

    for name, data in files.items():
        for kw in ({}, {"hidden_size": 8, "n_tokens": 4}):
            torch_way = outcome(prompt_from_bytes, data, name, **kw)
            numpy_way = outcome(inspect_prompt_bytes, data, name, **kw)
            if isinstance(torch_way, tuple):
                torch_way = (tuple(torch_way[0].shape), torch_way[1])
            assert numpy_way == torch_way, (name, kw)
    assert inspect_prompt_bytes(files["ok"], "ok")[1]["a"] == 1
