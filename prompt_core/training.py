"""The prompt-tuning loop (and transferable prompt tuning: the same loop, another init).

Only the soft prompt (n, D) trains; the backbone is frozen. AdamW with a constant learning rate,
batches sampled from a seeded generator (``TrainConfig.batching``: length-bucketed by default,
:func:`bucketed_batches`, or plain random, :func:`random_batches`), dev evaluation every
``eval_every`` steps (and at step 0 and the last step), and the best-dev prompt among the trained
checkpoints is returned (step 0, the init, is on the curve but never selected). With
``patience``, training stops after that many evaluations in a row without a better dev score
(early stopping; the curve then ends before ``steps``). The optimiser
state always starts fresh, also when the prompt starts from another prompt (METHOD.md: the 1.0
code wrongly restores it).

On a GPU (``backbone.device``) the prompt, the batches and the optimiser state live there; with
``bf16`` the frozen model's forward pass runs under bf16 autocast (when the device and the
backbone kind support it) while the prompt parameter, the loss and AdamW's state stay float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from prompt_core.backbones import Backbone
from prompt_core.config import TrainConfig
from prompt_core.data import TaskData
from prompt_core.evaluation import EncodedSplit
from prompt_core.prompts import init_prompt

# an epoch's index order from the sampler's generator: default ``rng.permutation(n)``; another
# source (e.g. class-balanced, indices may repeat) plugs into both samplers unchanged
EpochOrder = Callable[[np.random.Generator], np.ndarray]


def random_batches(n: int, batch_size: int, rng: np.random.Generator,
                   epoch: EpochOrder | None = None) -> Iterator[np.ndarray]:
    """Endless random batches of indices into ``n`` examples (``TrainConfig.batching: random``).

    The epochs' orders (``epoch(rng)``, default ``rng.permutation(n)``) are laid end to end and
    cut into batches of ``batch_size``, so a batch may span two epochs and every batch is full,
    except when one epoch order plus the rest of the previous one is shorter than a batch (then
    that is the batch). Each batch is padded to its longest member.
    """
    epoch = epoch or (lambda r: r.permutation(n))
    order: np.ndarray = np.empty(0, dtype=np.int64)
    while True:
        if len(order) < batch_size:  # next epoch (seeded)
            order = np.concatenate([order, epoch(rng)])
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     bucket_batches: int = 50,
                     epoch: EpochOrder | None = None) -> Iterator[np.ndarray]:
    """Endless batches of indices whose members have similar ``lengths`` (less padding).

    ``lengths`` (N,): the encoded length of each example. Per round: the examples left over
    from the previous round, then the next epoch's random order (``epoch(rng)``, default
    ``rng.permutation(N)``); as many whole batches as fit are taken from the front, the rest
    (fewer than ``batch_size``, random examples of the new epoch, never length-biased) waits for
    the next round. The taken indices are cut into chunks of ``bucket_batches * batch_size``,
    each chunk is sorted by length (stable, so ties stay in random order) and split into batches,
    and the round's batches are yielded in a random order. So every example is used exactly once
    per epoch (the leftovers one round later), every batch has ``batch_size`` members, and a
    batch is a random group of examples of neighbouring length within a random chunk. When a
    round holds fewer than ``batch_size`` indices (a split smaller than a batch) they are one
    batch, as in :func:`random_batches`. Deterministic for a given ``rng`` state.
    """
    lengths = np.asarray(lengths)
    epoch = epoch or (lambda r: r.permutation(len(lengths)))
    chunk = bucket_batches * batch_size
    carry: np.ndarray = np.empty(0, dtype=np.int64)
    while True:
        pool = np.concatenate([carry, epoch(rng)])
        n_full = len(pool) // batch_size * batch_size
        if n_full == 0:
            carry = np.empty(0, dtype=np.int64)
            yield pool
            continue
        use, carry = pool[:n_full], pool[n_full:]
        batches = []
        for start in range(0, n_full, chunk):
            part = use[start : start + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        for b in rng.permutation(len(batches)):
            yield batches[b]


def train_batches(cfg: TrainConfig, train: EncodedSplit,
                  rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The index batches ``cfg.batching`` asks for over the encoded ``train`` split."""
    if cfg.batching == "random":
        return random_batches(len(train), cfg.batch_size, rng)
    return bucketed_batches(train.lengths, cfg.batch_size, rng)


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


def trainable_prompt(backbone: Backbone, cfg: TrainConfig, seed: int, lr: float | None = None,
                     init: torch.Tensor | None = None
                     ) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    """The prompt a training run starts from, (n, D) float32 on the backbone's device, and its
    AdamW: ``init`` (TPT) or ``cfg.init``, seeded by ``seed`` (torch's global seed is set, as
    the run's first random draw); ``lr`` or ``cfg.lr`` or the backbone's default."""
    torch.manual_seed(seed)
    if init is not None:
        p0 = init_prompt("prompt", backbone, cfg.n_tokens, seed, prompt=init)
    elif cfg.init == "prompt":
        raise ValueError("TrainConfig init='prompt' needs the prompt tensor passed as init=")
    else:
        p0 = init_prompt(cfg.init, backbone, cfg.n_tokens, seed, std=cfg.init_std,
                         text=cfg.init_text)
    prompt = torch.nn.Parameter(p0.to(backbone.device, torch.float32))  # (n, D) float32
    opt = torch.optim.AdamW([prompt], lr=lr or cfg.lr or backbone.default_lr,
                            weight_decay=cfg.weight_decay)
    return prompt, opt


def train_prompt(
    backbone: Backbone,
    task: TaskData,
    cfg: TrainConfig,
    seed: int = 0,
    lr: float | None = None,
    init: torch.Tensor | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    bf16: bool = False,
) -> TrainResult:
    """Tune a soft prompt for ``task`` on the frozen ``backbone``.

    ``init`` (n, D) starts from an existing prompt (TPT) instead of ``cfg.init``. ``on_step(step,
    total)`` is called after every optimiser step (progress reporting); ``on_eval(step, scores)``
    after every dev evaluation (step 0, every ``eval_every`` steps and the last step) with the
    dev ``{"accuracy", "macro_f1"}``. ``bf16``: bf16 autocast for the forward passes (training
    and dev), honoured on a CUDA device with bf16 only (see :meth:`Backbone.autocast`). Training
    batches as ``cfg.batching`` says (:func:`train_batches`). Same seed, same result (on one
    device and precision).
    """
    lr = lr or cfg.lr or backbone.default_lr
    backbone.check_lengths(cfg.n_tokens, cfg.max_length)
    prompt, opt = trainable_prompt(backbone, cfg, seed, lr, init)

    train = EncodedSplit(backbone, task, "train", cfg.max_length)
    dev = EncodedSplit(backbone, task, "validation", cfg.max_length, cfg.max_dev_examples,
                       bf16=bf16)
    batches = train_batches(cfg, train, np.random.default_rng(seed))

    t0 = time.perf_counter()
    curve: list[CurvePoint] = []

    def evaluate(step: int, loss: float | None) -> dict[str, float]:
        s = dev.evaluate(prompt.detach())
        curve.append(CurvePoint(step, loss, s["accuracy"], s["macro_f1"], time.perf_counter() - t0))
        if on_eval:
            on_eval(step, dict(s))
        return s

    evaluate(0, None)  # the curve starts at the init; the best checkpoint is a trained one
    best_scores: dict[str, float] = {}
    best_step, best = 0, prompt.detach().clone()
    running: list[torch.Tensor] = []  # detached losses on the device: no sync per step
    stale = 0  # dev evaluations since the last improvement (early stopping: cfg.patience)
    for step in range(1, cfg.steps + 1):
        batch, labels = train.batch(next(batches))
        with backbone.autocast(bf16):
            logits = backbone.logits(prompt, batch, train.scorer)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels.to(logits.device))  # float32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.detach())
        if on_step:
            on_step(step, cfg.steps)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            s = evaluate(step, torch.stack(running).double().mean().item())
            running = []
            if not best_scores or s[cfg.select_metric] > best_scores[cfg.select_metric]:
                best_scores, best_step, best = s, step, prompt.detach().clone()
                stale = 0
            else:
                stale += 1
                if cfg.patience is not None and stale >= cfg.patience:
                    break  # the curve ends at this evaluation
    return TrainResult(best.cpu(), best_step, best_scores, curve, time.perf_counter() - t0, lr)
