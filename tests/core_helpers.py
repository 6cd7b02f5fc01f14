"""Small builders shared by the prompt_core unit tests (synthetic tasks, task folders)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import torch

from prompt_core.data import SPLITS, TaskData, make_spec, normalise_split

FILLER = "the a movie film story day city house car tree river book song game plan idea".split()


def keyword_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """n rows of 6 words; label 1 iff the text contains 'excellent' (else 'terrible'), balanced."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(5)]
        words.insert(rng.randrange(6), "excellent" if label else "terrible")
        rows.append({"text_a": " ".join(words), "text_b": None, "label": label})
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def keyword_task(
    n_train: int = 64,
    n_dev: int = 32,
    label_words: tuple[str, ...] | None = ("terrible", "excellent"),
    name: str = "keyword",
) -> TaskData:
    """A 2-class synthetic task decided by one keyword (the keywords are the label words by
    default, so even a tiny random encoder can learn a prompt for it)."""
    spec = make_spec(name, "sentiment", ["negative", "positive"], label_words)
    sizes = {"train": n_train, "validation": n_dev, "test": n_dev}
    splits = {
        s: normalise_split(keyword_rows(sizes[s], seed=i), spec, s, "synthetic")
        for i, s in enumerate(SPLITS)
    }
    return TaskData(spec, splits, source="synthetic")


def write_task_folder(
    folder: Path,
    meta: dict | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
    fmt: str = "parquet",
) -> Path:
    """Write task.json and the three split files (parquet or jsonl) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = meta if meta is not None else {
        "name": "toy", "type": "sentiment", "label_names": ["negative", "positive"],
    }
    (folder / "task.json").write_text(json.dumps(meta))
    if frames is None:
        frames = {
            "train": pd.DataFrame({"text_a": ["good", "bad", "fine", "awful"],
                                   "text_b": [None, "x", None, "y"], "label": [1, 0, 1, 0]}),
            "validation": pd.DataFrame({"text_a": ["nice", "poor"], "label": [1, 0]}),
            "test": pd.DataFrame({"text_a": ["great", "dull", "ok"], "text_b": ["a", "b", "c"],
                                  "label": [1, 0, 1]}),
        }
    for split, df in frames.items():
        if fmt == "parquet":
            df.to_parquet(folder / f"{split}.parquet", index=False)
        else:
            df.to_json(folder / f"{split}.jsonl", orient="records", lines=True)
    return folder


def tiny_roberta_dir(folder: Path, max_position_embeddings: int = 66) -> Path:
    """A tiny random-weight RobertaForMaskedLM with a real byte-level BPE tokenizer (trained on
    the filler words here): ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4. Like
    roberta-base its position ids start at pad + 1 = 2, so ``max_position_embeddings - 2``
    positions are usable."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(FILLER + ["excellent", "terrible", "negative", "positive"])] * 4
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, type_vocab_size=1,
                        max_position_embeddings=max_position_embeddings, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2)
    RobertaForMaskedLM(cfg).save_pretrained(folder)
    return folder


# --- tiny GPT-2 and T5 model folders (random weights, offline tokenizers) -----------------

CORPUS = [
    "a fine film with a terrible ending and an excellent cast",
    "it rained all day in the old city by the river",
    "the movie was excellent, the plot terrible, the answer is yes or no",
    "Answer: positive negative neutral true false good bad",
] * 20


def tiny_gpt2_dir(folder) -> str:
    """A tiny random GPT2LMHeadModel (2 layers, d=32) plus a byte-level BPE tokenizer trained
    offline on a few sentences (no pad token, like GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tok = GPT2TokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert tok.pad_token_id is None  # like GPT-2
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=2, n_head=2,
                     n_positions=128, bos_token_id=tok.eos_token_id,
                     eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
WORDS = FILLER + ["excellent", "terrible", "negative", "positive", "very", "good", "ok", "it",
                  "rained", "all", "in", "old", "by", "and", "second", "segment", "here"]


def tiny_t5_dir(folder):
    """A tiny random T5ForConditionalGeneration plus a T5-layout fast tokenizer (``text </s>``,
    pairs ``a </s> b </s>``) built offline from a WordLevel model (no sentencepiece needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, num_layers=2, num_heads=2,
                   d_kv=16, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
