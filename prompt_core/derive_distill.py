"""The distillation derivation of :mod:`prompt_core.derive` (re-exported there): a narrower
BERT student trained to reproduce MiniLM's mean-pooled sentence-embedding geometry, so a model
with a different hidden size (see that module's docstring)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from prompt_core.backbone_kinds import MINILM_ID
from prompt_core.derive_common import (
    LOG_POINTS,
    MAX_LENGTH,
    DeriveError,
    check_out_dir,
    command_line,
    cosine_matrix,
    demo_texts,
    embed,
    heldout_agreement,
    load_teacher,
    opt_source,
    output_record,
    pad,
    read_text_files,
    sentence_embeddings,
    sha256_file,
    sort_texts,
    source_record,
    staged_dir,
    tokenize,
    versions,
    write_model_folder,
    write_record,
)

log_ = logging.getLogger(__name__)


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
            "source": source_record(source, folder, teacher),
            "output": output_record(student, out_sha),
            "loss_curve": curve,
            "agreement": heldout_agreement(student, teacher, tok),
            "torch_threads": torch.get_num_threads(),
            "command": command_line("distill", [
                ("--hidden", hidden), ("--layers", layers), ("--heads", heads),
                ("--intermediate", intermediate), ("--steps", steps),
                ("--batch-size", batch_size), ("--lr", lr), ("--seed", seed),
                ("--sim-weight", sim_weight),
                ("--texts", [str(p) for p in texts or []]),
                ("--source", opt_source(source))], out),
            "versions": versions(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_record(tmp, record)
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
