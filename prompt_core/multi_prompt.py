"""Several soft prompts trained in one forward-backward pass of the shared frozen backbone.

:func:`train_prompts_jointly` runs :func:`~prompt_core.training.train_prompt` for several
(task, seed) runs at once: at every step, one training batch of each run is stacked into one
batch (each run's rows with its own prompt in front, padded to the longest row of all), the
backbone runs once forward and once backward, and the runs' cross-entropy losses are summed.
The backbone is frozen, in eval mode (no dropout) and has no batch statistics, so each row's
output depends on its own input only: the gradient of the sum with respect to run i's prompt is
the gradient of run i's loss alone, and each run keeps its own AdamW, batch sampler, dev split,
checkpoint selection and early stopping. A run's result therefore equals its one-at-a-time
``train_prompt`` result up to float rounding (a bigger batch may sum matrix products in another
order, see :mod:`prompt_core.backbones.multi`).

:func:`joint_step` is that one optimisation step on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from prompt_core.backbones import Backbone
from prompt_core.backbones.multi import stacked_logits
from prompt_core.config import TrainConfig
from prompt_core.data import TaskData
from prompt_core.evaluation import EncodedSplit
from prompt_core.training import CurvePoint, TrainResult, train_batches, trainable_prompt


def joint_step(backbone: Backbone, prompts: Sequence[torch.nn.Parameter],
               splits: Sequence[EncodedSplit], index_batches: Sequence[np.ndarray],
               optimizers: Sequence[torch.optim.Optimizer], bf16: bool = False
               ) -> list[torch.Tensor]:
    """One optimisation step of several prompts in one forward-backward pass: prompt i (n, D)
    scores the examples ``index_batches[i]`` of ``splits[i]`` with that split's label scorer,
    the cross-entropy losses are summed, and each optimiser steps its prompt. Returns the
    detached per-prompt losses (on the device). Equals, up to float rounding, one
    ``train_prompt`` step per prompt with the same batch and optimiser state."""
    parts = [[split.items[i] for i in idx] for split, idx in zip(splits, index_batches,
                                                                  strict=True)]
    with backbone.autocast(bf16):
        logits = stacked_logits(backbone, prompts, parts, [s.scorer for s in splits])
    losses = [F.cross_entropy(lg.float(), torch.as_tensor(s.labels[idx]).to(lg.device))
              for lg, s, idx in zip(logits, splits, index_batches, strict=True)]  # float32
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    torch.stack(losses).sum().backward()
    for opt in optimizers:
        opt.step()
    return [loss.detach() for loss in losses]


@dataclass
class JointRun:
    """One (task, seed) run's state inside :func:`train_prompts_jointly`."""

    prompt: torch.nn.Parameter
    opt: torch.optim.Optimizer
    train: EncodedSplit
    dev: EncodedSplit
    batches: Iterator[np.ndarray]
    lr: float
    curve: list[CurvePoint] = field(default_factory=list)
    best_scores: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    best: torch.Tensor | None = None
    running: list[torch.Tensor] = field(default_factory=list)
    stale: int = 0
    done: bool = False


def train_prompts_jointly(
    backbone: Backbone,
    tasks: Sequence[TaskData],
    cfg: TrainConfig,
    seeds: Sequence[int],
    lrs: Sequence[float | None] | None = None,
    inits: Sequence[torch.Tensor | None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, int, dict[str, float]], None] | None = None,
    bf16: bool = False,
) -> list[TrainResult]:
    """``train_prompt(backbone, tasks[i], cfg, seeds[i], lrs[i], inits[i], bf16=bf16)`` for
    every i, the runs' training steps sharing forward-backward passes (:func:`joint_step`).

    A task may appear several times (several seeds): its splits are encoded once. Dev
    evaluations (step 0, every ``cfg.eval_every`` steps, the last step) score the runs of one
    task together (:meth:`EncodedSplit.evaluate_many`). A run that stops early (``cfg.patience``)
    leaves the stacked batch; the others go on. ``on_step(step, total)`` after every joint
    step, ``on_eval(i, step, scores)`` after run i's dev evaluations. Returns one
    :class:`~prompt_core.training.TrainResult` per run, in order; ``seconds`` is the joint
    wall time.
    """
    if len(seeds) != len(tasks):
        raise ValueError(f"train_prompts_jointly: {len(tasks)} tasks but {len(seeds)} seeds")
    lrs = list(lrs) if lrs is not None else [None] * len(tasks)
    inits = list(inits) if inits is not None else [None] * len(tasks)
    if not (len(lrs) == len(inits) == len(tasks)):
        raise ValueError("train_prompts_jointly: lrs and inits need one entry per task")
    backbone.check_lengths(cfg.n_tokens, cfg.max_length)
    encoded: dict[int, tuple[EncodedSplit, EncodedSplit]] = {}
    runs: list[JointRun] = []
    for task, seed, lr, init in zip(tasks, seeds, lrs, inits, strict=True):
        lr = lr or cfg.lr or backbone.default_lr
        prompt, opt = trainable_prompt(backbone, cfg, seed, lr, init)  # as train_prompt does
        if id(task) not in encoded:
            encoded[id(task)] = (
                EncodedSplit(backbone, task, "train", cfg.max_length),
                EncodedSplit(backbone, task, "validation", cfg.max_length,
                             cfg.max_dev_examples, bf16=bf16))
        train, dev = encoded[id(task)]
        runs.append(JointRun(prompt, opt, train, dev,
                             train_batches(cfg, train, np.random.default_rng(seed)), lr,
                             best=prompt.detach().clone()))

    t0 = time.perf_counter()

    def evaluate(step: int, members: list[int], losses: dict[int, float | None]) -> None:
        by_dev: dict[int, list[int]] = {}
        for i in members:
            by_dev.setdefault(id(runs[i].dev), []).append(i)
        for group in by_dev.values():
            dev = runs[group[0]].dev
            got = dev.evaluate_many([runs[i].prompt.detach() for i in group])
            for i, s in zip(group, got, strict=True):
                run = runs[i]
                run.curve.append(CurvePoint(step, losses[i], s["accuracy"], s["macro_f1"],
                                            time.perf_counter() - t0))
                if on_eval:
                    on_eval(i, step, dict(s))
                if step:
                    select(run, step, s)

    def select(run: JointRun, step: int, s: dict[str, float]) -> None:
        if not run.best_scores or s[cfg.select_metric] > run.best_scores[cfg.select_metric]:
            run.best_scores, run.best_step = s, step
            run.best = run.prompt.detach().clone()
            run.stale = 0
        else:
            run.stale += 1
            if cfg.patience is not None and run.stale >= cfg.patience:
                run.done = True  # the curve ends at this evaluation

    evaluate(0, list(range(len(runs))), dict.fromkeys(range(len(runs))))
    for step in range(1, cfg.steps + 1):
        active = [i for i, r in enumerate(runs) if not r.done]
        if not active:
            break
        losses = joint_step(backbone, [runs[i].prompt for i in active],
                            [runs[i].train for i in active],
                            [next(runs[i].batches) for i in active],
                            [runs[i].opt for i in active], bf16)
        for i, loss in zip(active, losses, strict=True):
            runs[i].running.append(loss)
        if on_step:
            on_step(step, cfg.steps)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            mean = {i: torch.stack(runs[i].running).double().mean().item() for i in active}
            for i in active:
                runs[i].running = []
            evaluate(step, active, mean)
    seconds = time.perf_counter() - t0
    return [TrainResult(r.best.cpu(), r.best_step, r.best_scores, r.curve, seconds, r.lr)
            for r in runs]
