"""The prompt-tuning loop (and transferable prompt tuning: the same loop, another init).

Only the soft prompt (n, D) trains; the backbone is frozen. AdamW with a constant learning rate,
batches sampled from a seeded generator, dev evaluation every ``eval_every`` steps (and at step 0
and the last step), and the best-dev prompt among the trained checkpoints is returned (step 0,
the init, is on the curve but never selected). The optimiser state always
starts fresh, also when the prompt starts from another prompt (METHOD.md: the 1.0 code wrongly
restores it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from prompt_core.backbones import Backbone
from prompt_core.config import TrainConfig
from prompt_core.data import TaskData
from prompt_core.evaluation import EncodedSplit
from prompt_core.prompts import init_prompt


@dataclass
class CurvePoint:
    step: int
    train_loss: float | None
    dev_accuracy: float | None
    dev_macro_f1: float | None
    elapsed_s: float


@dataclass
class TrainResult:
    prompt: torch.Tensor  # (n, D), the best-dev checkpoint
    best_step: int
    best_scores: dict[str, float]  # dev accuracy / macro_f1 at best_step
    curve: list[CurvePoint] = field(default_factory=list)
    seconds: float = 0.0
    lr: float = 0.0


def train_prompt(
    backbone: Backbone,
    task: TaskData,
    cfg: TrainConfig,
    seed: int = 0,
    lr: float | None = None,
    init: torch.Tensor | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Tune a soft prompt for ``task`` on the frozen ``backbone``.

    ``init`` (n, D) starts from an existing prompt (TPT) instead of ``cfg.init``. ``on_step(step,
    total)`` is called after every optimiser step (progress reporting). Same seed, same result.
    """
    lr = lr or cfg.lr or backbone.default_lr
    backbone.check_lengths(cfg.n_tokens, cfg.max_length)
    torch.manual_seed(seed)
    if init is not None:
        p0 = init_prompt("prompt", backbone, cfg.n_tokens, seed, prompt=init)
    elif cfg.init == "prompt":
        raise ValueError("TrainConfig init='prompt' needs the prompt tensor passed as init=")
    else:
        p0 = init_prompt(cfg.init, backbone, cfg.n_tokens, seed, std=cfg.init_std,
                         text=cfg.init_text)
    prompt = torch.nn.Parameter(p0.to(backbone.device))
    opt = torch.optim.AdamW([prompt], lr=lr, weight_decay=cfg.weight_decay)

    train = EncodedSplit(backbone, task, "train", cfg.max_length)
    dev = EncodedSplit(backbone, task, "validation", cfg.max_length, cfg.max_dev_examples)
    rng = np.random.default_rng(seed)
    order: np.ndarray = np.empty(0, dtype=np.int64)

    t0 = time.perf_counter()
    curve: list[CurvePoint] = []

    def evaluate(step: int, loss: float | None) -> dict[str, float]:
        s = dev.evaluate(prompt.detach())
        curve.append(CurvePoint(step, loss, s["accuracy"], s["macro_f1"], time.perf_counter() - t0))
        return s

    evaluate(0, None)  # the curve starts at the init; the best checkpoint is a trained one
    best_scores: dict[str, float] = {}
    best_step, best = 0, prompt.detach().clone()
    running: list[float] = []
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.batch_size:  # new epoch: reshuffle (seeded)
            order = np.concatenate([order, rng.permutation(len(train))])
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        batch, labels = train.batch(idx)
        logits = backbone.logits(prompt, batch, train.scorer)  # (B, K)
        loss = F.cross_entropy(logits, labels.to(logits.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if on_step:
            on_step(step, cfg.steps)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            s = evaluate(step, float(np.mean(running)))
            running = []
            if not best_scores or s[cfg.select_metric] > best_scores[cfg.select_metric]:
                best_scores, best_step, best = s, step, prompt.detach().clone()
    return TrainResult(best.cpu(), best_step, best_scores, curve, time.perf_counter() - t0, lr)
