"""Batched scoring of many prompts on one target task, and the metrics.

Scoring runs under ``torch.inference_mode()`` on the backbone's device, with bf16 autocast for
the forward pass when asked for and supported (:meth:`Backbone.autocast`); logits are cast to
float32 before the argmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from prompt_core.backbones import Backbone, Encoded, EncodeError
from prompt_core.backbones.multi import logits_many
from prompt_core.data import TaskData


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if len(gold) else float("nan")


def macro_f1(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> float:
    """Unweighted mean of per-class F1 over all ``n_labels`` classes (0 for a class never hit)."""
    f1s = []
    for c in range(n_labels):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


def scores(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold, n_labels)}


class EncodedSplit:
    """A task split tokenised once for a backbone, served in length-sorted batches.

    ``bf16``: score under bf16 autocast (on a CUDA device with bf16 and a kind that supports it;
    elsewhere float32), unless :meth:`evaluate` / :meth:`predict` say otherwise.
    """

    def __init__(self, backbone: Backbone, task: TaskData, split: str, max_length: int,
                 max_examples: int | None = None, bf16: bool = False):
        df = task.split(split)
        if max_examples is not None and len(df) > max_examples:
            df = df.sample(n=max_examples, random_state=0)
        self.backbone = backbone
        self.max_length = max_length
        self.bf16 = bf16
        try:
            self.items: list[Encoded] = backbone.encode_many(
                df["text_a"].tolist(), df["text_b"].tolist(), max_length
            )
        except EncodeError as e:
            row = df.index[e.index] if e.index is not None else "?"
            raise EncodeError(f"task {task.spec.name!r}, split {split!r}, row {row}: {e}",
                              e.index) from e
        self.labels = df["label"].to_numpy()
        self.n_labels = task.spec.n_labels
        self.scorer = backbone.label_scorer(task.spec.label_words)
        # (N,) encoded length of each example: eval batches and bucketed training batches
        self.lengths = np.array([len(it.input_ids) for it in self.items], dtype=np.int64)
        self.longest = int(self.lengths.max(initial=0))
        self._order = np.argsort(self.lengths, kind="stable")

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, idx) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The examples ``idx``: padded tensors (B, T) on the backbone's device, labels (B,)."""
        items = [self.items[i] for i in idx]
        return self.backbone.collate(items), torch.as_tensor(self.labels[idx])

    @torch.inference_mode()
    def predict(self, prompt: torch.Tensor | None, batch_size: int = 64,
                bf16: bool | None = None) -> np.ndarray:
        """Predicted label ids (N,) for every example, in the split's order; ``prompt`` (n, D)
        or None. ``bf16`` None: the split's own setting."""
        pred = np.empty(len(self.items), dtype=np.int64)
        self.check_fits(0 if prompt is None else prompt.shape[0])
        p = None if prompt is None else prompt.to(self.backbone.device, torch.float32)
        bf16 = self.bf16 if bf16 is None else bf16
        for start in range(0, len(self.items), batch_size):
            idx = self._order[start : start + batch_size]
            batch, _ = self.batch(idx)
            with self.backbone.autocast(bf16):
                logits = self.backbone.logits(p, batch, self.scorer)  # (B, K)
            pred[idx] = logits.float().argmax(-1).cpu().numpy()
        return pred

    @torch.inference_mode()
    def predict_many(self, prompts: Sequence[torch.Tensor | None], batch_size: int = 64,
                     bf16: bool | None = None,
                     prompts_per_pass: int | None = None) -> list[np.ndarray]:
        """Predicted label ids (N,) of each prompt, as :meth:`predict` gives them, with several
        prompts scored in one forward pass (:func:`~prompt_core.backbones.multi.logits_many`):
        for each batch of ``batch_size`` examples, the prompts of one shape run together as
        ``len(group) * batch_size`` rows (at most ``prompts_per_pass`` prompts per pass; None:
        the whole group). ``None`` entries (no prompt) are scored once, by :meth:`predict`.
        Predictions equal :meth:`predict`'s up to float rounding of the logits (~1e-6)."""
        out: list[np.ndarray | None] = [None] * len(prompts)
        groups: dict[tuple[int, ...] | None, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(None if p is None else tuple(p.shape), []).append(i)
        bf16 = self.bf16 if bf16 is None else bf16
        for shape, members in groups.items():
            if shape is None or len(members) == 1:
                pred = self.predict(prompts[members[0]], batch_size, bf16)
                for i in members:
                    out[i] = pred.copy()
                continue
            self.check_fits(shape[0])
            step = prompts_per_pass or len(members)
            for first in range(0, len(members), step):
                chunk = members[first : first + step]
                ps = [prompts[i].to(self.backbone.device, torch.float32) for i in chunk]
                preds = self._predict_chunk(ps, batch_size, bf16)
                for i, pred in zip(chunk, preds, strict=True):
                    out[i] = pred
        return out  # type: ignore[return-value]

    def _predict_chunk(self, prompts: list[torch.Tensor], batch_size: int,
                       bf16: bool) -> list[np.ndarray]:
        pred = np.empty((len(prompts), len(self.items)), dtype=np.int64)
        for start in range(0, len(self.items), batch_size):
            idx = self._order[start : start + batch_size]
            batch, _ = self.batch(idx)
            with self.backbone.autocast(bf16):
                logits = logits_many(self.backbone, prompts, batch, self.scorer)  # (K, B, C)
            pred[:, idx] = logits.float().argmax(-1).cpu().numpy()
        return list(pred)

    def evaluate_many(self, prompts: Sequence[torch.Tensor | None], batch_size: int = 64,
                      bf16: bool | None = None, return_predictions: bool = False,
                      prompts_per_pass: int | None = None):
        """:meth:`evaluate` of each prompt, several per forward pass (:meth:`predict_many`):
        a list of score dicts in the prompts' order (with ``return_predictions``, also the list
        of predicted label ids)."""
        preds = self.predict_many(prompts, batch_size, bf16, prompts_per_pass)
        s = [scores(pred, self.labels, self.n_labels) for pred in preds]
        return (s, preds) if return_predictions else s

    def check_fits(self, n_tokens: int) -> None:
        """Before any forward pass: a prompt of ``n_tokens`` + the longest encoded example fit
        the model's positions (else :meth:`Backbone.check_lengths` names the numbers)."""
        limit = self.backbone.max_positions
        if limit is not None and n_tokens + self.longest > limit:
            self.backbone.check_lengths(n_tokens, self.max_length)

    def evaluate(self, prompt: torch.Tensor | None, batch_size: int = 64,
                 bf16: bool | None = None, return_predictions: bool = False):
        """Accuracy and macro-F1 of ``prompt`` (n, D) (None: no prompt) on this split; with
        ``return_predictions``, also the predicted label ids (N,) (for bootstrap intervals)."""
        pred = self.predict(prompt, batch_size, bf16)
        s = scores(pred, self.labels, self.n_labels)
        return (s, pred) if return_predictions else s


def evaluate_prompts(
    backbone: Backbone,
    task: TaskData,
    prompts: Mapping[str, torch.Tensor | None],
    split: str = "test",
    batch_size: int = 64,
    max_length: int = 128,
    max_examples: int | None = None,
    bf16: bool = False,
    prompts_per_pass: int = 1,
) -> dict[str, dict[str, float]]:
    """Score every prompt (``None`` = no prompt) on one task with the task's own verbalizer.

    The split is tokenised once and the label scorer built once for all prompts. ``bf16``: as
    for :class:`EncodedSplit`. ``prompts_per_pass`` > 1: that many prompts share each forward
    pass (:meth:`EncodedSplit.evaluate_many`; 1, the default: one :meth:`EncodedSplit.evaluate`
    per prompt). Returns ``{name: {"accuracy", "macro_f1", "n_examples"}}``.
    """
    enc = EncodedSplit(backbone, task, split, max_length, max_examples, bf16=bf16)
    if prompts_per_pass > 1:
        many = enc.evaluate_many(list(prompts.values()), batch_size,
                                 prompts_per_pass=prompts_per_pass)
        return {name: {**s, "n_examples": len(enc)}
                for name, s in zip(prompts, many, strict=True)}
    out = {}
    for name, prompt in prompts.items():
        out[name] = {**enc.evaluate(prompt, batch_size), "n_examples": len(enc)}
    return out
