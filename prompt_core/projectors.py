"""Cross-model prompt projectors: map a soft prompt of a source model into a target model.

A projector g (METHOD.md, "Cross-model transfer (projector)") takes a source prompt
P_s (n, d_s), flattens it to (n * d_s), and applies Linear(n * d_s -> hidden) -> activation
(tanh or LeakyReLU) -> Linear(hidden -> n * d_t), reshaped to (n, d_t), then optionally
LayerNorm(d_t) over each projected token. Two objectives train it (:data:`OBJECTIVES`):

* ``distance`` (:func:`train_distance`): over the training tasks, make g(P_s^task) close to
  P_t^task, the prompt trained for the same task on the target model. The loss is the mean
  squared error per entry, i.e. the squared L2 distance ||g(P_s) - P_t||^2 / (n * d_t)
  averaged over the pairs; every step uses all pairs (full batch).
* ``task`` (:func:`train_task_tuning`): the frozen target backbone scores task t's training
  batches with the projected prompt g(P_s^t); the cross-entropy is back-propagated through
  the prompt into the projector only. Tasks are taken round-robin, each with its own seeded
  shuffled order (as in :func:`prompt_core.training.train_prompt`).

Initialisation (the design choice; the architecture is METHOD.md's). A new projector has
PyTorch's default ``nn.Linear`` init (and LayerNorm gain 1, bias 0). Measured scales: trained
MiniLM demo prompts (20 x 384, 100 steps at lr 3e-2) have entries of std 0.16-0.23, MiniLM's
word embeddings 0.056; a default projector (hidden 768, tanh) maps those prompts to std 0.072
(mostly its last bias, U(+-1/sqrt(hidden))): *not* far larger than the target scale. With
LayerNorm the output starts at std 1.

* ``distance`` anchors the start at the mean target prompt (:meth:`Projector.anchor_`):
  without LayerNorm the last weight is zeroed and its bias set to the mean target, so the
  step-0 loss is exactly the "predict the mean target prompt" baseline that training has to
  beat; with LayerNorm its gain/bias are set to the targets' per-dim std/mean. Measured
  (MiniLM -> MiniLM, 5 prompts of the earlier synthetic demo tasks in, one held out, 200
  steps, seed 0): step-0 loss 0.027-0.031 anchored vs 0.042-0.047 default; held-out MSE
  0.044/0.025/0.037 anchored vs 0.046/0.025/0.033 default (mean-prompt baseline
  0.049/0.028/0.044): the same end point, a start at the baseline.
* ``task`` keeps the default init. Measured on the offline MiniLM as target (sources: the
  MiniLM prompts of two earlier, synthetic demo tasks, a sentiment and a topic task, since
  replaced by real-data samples; full-train cross-entropy at step 0, 3 seeds):
  default 0.753, a zero-output start (zero last layer) 0.836, LayerNorm gain 1 0.772,
  LayerNorm gain = embedding std 0.748; no prompt 0.641, the target's own prompts 0.261.
  20 zero prompt tokens still dilute MiniLM's mean pooling, so zeroing the output is *not* a
  better start; after 40 steps (seed 0) the training losses were default 0.51, zero 0.55,
  LayerNorm 0.55 / 0.52, i.e. within seed noise. Nothing beyond the default was warranted.

Determinism: a projector is built under ``torch.random.fork_rng`` seeded with ``seed`` (the
caller's global RNG is left as it was), batches come from ``numpy.random.default_rng(seed)``,
so the same seed gives the same weights and losses (on one device and precision).

Files are safetensors (weights, float32) with the JSON metadata in the header under
``prompt_transfer`` (as :mod:`prompt_core.prompts` does): ``kind: "projector"``, the
:class:`~prompt_core.config.ProjectorConfig`, ``n_tokens``, ``source_hidden``,
``target_hidden``, ``format_version`` and the caller's metadata.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from prompt_core.backbones import Backbone
from prompt_core.config import ProjectorConfig
from prompt_core.data import TaskData
from prompt_core.errors import InputError
from prompt_core.evaluation import EncodedSplit
from prompt_core.prompts import check_prompt_shape

META_KEY = "prompt_transfer"
FILE_KIND = "projector"
FORMAT_VERSION = 1
# metadata keys the file format owns (the caller's metadata may not change them)
STRUCTURAL_KEYS = ("kind", "format_version", "config", "n_tokens", "source_hidden",
                   "target_hidden")

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


class ProjectorFileError(InputError):
    """A projector file is unreadable, incomplete or inconsistent with its own metadata."""


# --- the module ----------------------------------------------------------------------------


class Projector(nn.Module):
    """g: a source prompt (n, d_s) -> a target prompt (n, d_t).

    flatten (n * d_s) -> Linear(hidden) -> activation -> Linear(n * d_t) -> reshape (n, d_t)
    [-> LayerNorm(d_t) when ``cfg.layer_norm``]. Leading batch dimensions pass through:
    (B, n, d_s) -> (B, n, d_t). PyTorch's default init (the module docstring says why);
    :meth:`anchor_` moves the start to a given prompt.

    Parameters (state-dict names): ``inp`` (hidden, n*d_s), ``out`` (n*d_t, hidden), and
    ``norm`` (d_t) with LayerNorm.
    """

    def __init__(self, n_tokens: int, source_hidden: int, target_hidden: int,
                 cfg: ProjectorConfig):
        super().__init__()
        for name, v in (("n_tokens", n_tokens), ("source_hidden", source_hidden),
                        ("target_hidden", target_hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Projector {name} must be a positive int, got {v!r}")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"unknown projector activation {cfg.activation!r}; "
                             f"known: {sorted(ACTIVATIONS)}")
        self.n_tokens, self.source_hidden, self.target_hidden = n_tokens, source_hidden, \
            target_hidden
        self.cfg = cfg
        self.inp = nn.Linear(n_tokens * source_hidden, cfg.hidden)
        self.act = ACTIVATIONS[cfg.activation]()
        self.out = nn.Linear(cfg.hidden, n_tokens * target_hidden)
        self.norm = nn.LayerNorm(target_hidden) if cfg.layer_norm else None

    @torch.no_grad()
    def anchor_(self, mean: Tensor, scale: Tensor | float | None) -> Projector:
        """Set the output layer so g(P) starts at (or around) ``mean`` (n, d_t).

        Without LayerNorm: last weight 0, last bias = ``mean`` flattened, so g(P) = mean for
        every P. With LayerNorm: LayerNorm bias = ``mean`` averaged over tokens (d_t), gain =
        ``scale`` ((d_t) or a float; None keeps 1), the last Linear keeps its random weight and
        gets bias 0. Returns self.
        """
        n, d_t = self.n_tokens, self.target_hidden
        mean = mean.detach().to(self.out.bias.device, torch.float32)
        if mean.shape != (n, d_t):
            raise ValueError(f"anchor mean has shape {tuple(mean.shape)}, expected {(n, d_t)}")
        if self.norm is None:
            self.out.weight.zero_()
            self.out.bias.copy_(mean.reshape(-1))
        else:
            self.out.bias.zero_()
            self.norm.bias.copy_(mean.mean(0))
            if scale is not None:
                self.norm.weight.copy_(torch.as_tensor(scale, dtype=torch.float32)
                                       .to(self.norm.weight.device).expand(d_t))
        return self

    def forward(self, prompt: Tensor) -> Tensor:
        """(n, d_s) -> (n, d_t), or (B, n, d_s) -> (B, n, d_t)."""
        if prompt.ndim < 2 or tuple(prompt.shape[-2:]) != (self.n_tokens, self.source_hidden):
            raise ValueError(f"projector input has shape {tuple(prompt.shape)}, expected "
                             f"(..., {self.n_tokens}, {self.source_hidden})")
        lead = prompt.shape[:-2]
        x = prompt.reshape(*lead, self.n_tokens * self.source_hidden)  # (..., n*d_s)
        y = self.out(self.act(self.inp(x)))  # (..., n*d_t)
        y = y.reshape(*lead, self.n_tokens, self.target_hidden)  # (..., n, d_t)
        return y if self.norm is None else self.norm(y)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"n_tokens={self.n_tokens}, source_hidden={self.source_hidden}, "
                f"target_hidden={self.target_hidden}")


def build_projector(n_tokens: int, source_hidden: int, target_hidden: int,
                    cfg: ProjectorConfig, seed: int) -> Projector:
    """A fresh :class:`Projector` whose random weights depend only on ``seed`` (the global RNG
    is forked, so the caller's random state is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Projector(n_tokens, source_hidden, target_hidden, cfg)


# --- training ------------------------------------------------------------------------------


@dataclass
class ProjectorResult:
    """A trained projector (CPU, eval mode, float32) and its training curve.

    ``losses``: (step, training loss) for steps 1..cfg.steps, the loss of that step's forward
    pass, before its update (so ``initial_loss`` is the starting projector's loss). For
    ``distance`` it is the full-batch MSE, for ``task`` the cross-entropy of one batch.
    """

    projector: Projector
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def initial_loss(self) -> float:
        return self.losses[0][1]

    @property
    def final_loss(self) -> float:
        return self.losses[-1][1]

    @property
    def best_loss(self) -> float:
        return min(loss for _, loss in self.losses)


Trainer = Callable[..., ProjectorResult]
OBJECTIVES: dict[str, Trainer] = {}


def register_objective(name: str) -> Callable[[Trainer], Trainer]:
    def deco(fn: Trainer) -> Trainer:
        OBJECTIVES[name] = fn
        return fn

    return deco


def _stack(prompts: list[Tensor], what: str, n_tokens: int | None = None) -> Tensor:
    """Finite 2-d prompts of one shape -> (T, n, d) float32 CPU; errors name ``what`` and i."""
    if not prompts:
        raise InputError(f"projector training needs at least one {what}")
    first = tuple(prompts[0].shape)
    for i, p in enumerate(prompts):
        check_prompt_shape(p, None, n_tokens, where=f"{what} {i}")  # 2-d, finite, n tokens
        if tuple(p.shape) != first:
            raise InputError(f"{what} {i} has shape {tuple(p.shape)}, {what} 0 has {first}: "
                             "a projector maps prompts of one shape")
    return torch.stack([p.detach().cpu().float() for p in prompts])


@register_objective("distance")
def train_distance(pairs: list[tuple[Tensor, Tensor]], cfg: ProjectorConfig,
                   seed: int = 0) -> ProjectorResult:
    """Distance minimising: fit g so g(P_s) is close to P_t over the training tasks' pairs.

    ``pairs``: (P_s (n, d_s), P_t (n, d_t)) per training task. Loss: mean over pairs and
    entries of (g(P_s) - P_t)^2; AdamW (``cfg.lr``, ``cfg.weight_decay``), ``cfg.steps`` full-batch
    steps. The projector starts at the mean target prompt (:meth:`Projector.anchor_`).
    """
    if not pairs:
        raise InputError("distance projector training needs at least one (source, target) pair")
    src = _stack([s for s, _ in pairs], "source prompt")  # (T, n, d_s)
    tgt = _stack([t for _, t in pairs], "target prompt")  # (T, n, d_t)
    if src.shape[1] != tgt.shape[1]:
        raise InputError(f"source prompts have {src.shape[1]} tokens, target prompts "
                         f"{tgt.shape[1]}: a projector keeps the token count")
    n, d_s, d_t = src.shape[1], src.shape[2], tgt.shape[2]
    proj = build_projector(n, d_s, d_t, cfg, seed)
    scale = tgt.reshape(-1, d_t).std(0, correction=0) if len(tgt) * n > 1 else None
    proj.anchor_(tgt.mean(0), scale)
    opt = torch.optim.AdamW(proj.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    losses: list[tuple[int, float]] = []
    proj.train()
    for step in range(1, cfg.steps + 1):
        loss = F.mse_loss(proj(src), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append((step, loss.item()))
    return ProjectorResult(proj.eval(), losses, time.perf_counter() - t0)


@register_objective("task")
def train_task_tuning(source_prompts: list[Tensor], backbone: Backbone, tasks: list[TaskData],
                      cfg: ProjectorConfig, seed: int = 0, bf16: bool = False,
                      n_tokens: int | None = None) -> ProjectorResult:
    """Task tuning: train g through the frozen target ``backbone``'s task loss.

    ``source_prompts[i]`` (n, d_s) is the source model's prompt for ``tasks[i]``; step k
    scores a batch of ``cfg.batch_size`` training examples of task (k-1) mod T (texts cut to
    ``cfg.max_length`` tokens) with the projected prompt g(P_s) (n, d_t) prepended, and
    back-propagates the float32 cross-entropy into the projector only (the backbone's
    parameters stay frozen, ``requires_grad`` False). ``bf16``: bf16 autocast for the
    backbone's forward pass where supported (:meth:`Backbone.autocast`); the projector, loss
    and AdamW state stay float32. ``n_tokens``, when given, is checked against the prompts.
    """
    if len(source_prompts) != len(tasks):
        raise InputError(f"task tuning got {len(source_prompts)} source prompts for "
                         f"{len(tasks)} tasks; give one prompt per task")
    src = _stack(list(source_prompts), "source prompt", n_tokens)  # (T, n, d_s)
    n, d_s, d_t = src.shape[1], src.shape[2], backbone.hidden_size
    backbone.check_lengths(n, cfg.max_length)
    splits = [EncodedSplit(backbone, task, "train", cfg.max_length) for task in tasks]
    for task, split in zip(tasks, splits, strict=True):
        if len(split) == 0:
            raise InputError(f"task {task.spec.name!r} has no training examples")
        split.check_fits(n)
    device = backbone.device
    proj = build_projector(n, d_s, d_t, cfg, seed).to(device).train()  # default init
    src = src.to(device)
    opt = torch.optim.AdamW(proj.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    orders = [np.empty(0, dtype=np.int64) for _ in tasks]
    t0 = time.perf_counter()
    running: list[Tensor] = []  # detached losses on the device: no sync per step
    for step in range(1, cfg.steps + 1):
        t = (step - 1) % len(tasks)
        split = splits[t]
        want = min(cfg.batch_size, len(split))
        if len(orders[t]) < want:  # new epoch of this task: reshuffle (seeded)
            orders[t] = np.concatenate([orders[t], rng.permutation(len(split))])
        idx, orders[t] = orders[t][:want], orders[t][want:]
        batch, labels = split.batch(idx)
        prompt = proj(src[t])  # (n, d_t) float32
        with backbone.autocast(bf16):
            logits = backbone.logits(prompt, batch, split.scorer)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.detach())
    losses = [(i + 1, v) for i, v in enumerate(torch.stack(running).double().cpu().tolist())]
    seconds = time.perf_counter() - t0
    return ProjectorResult(proj.cpu().float().eval(), losses, seconds)


@torch.no_grad()
def project(projector: Projector, prompt: Tensor, where: str = "prompt") -> Tensor:
    """g(P): a source prompt (n, d_s) -> the projected prompt (n, d_t), float32 on CPU.

    A prompt of another shape than the projector's (n_tokens, source_hidden), or with
    non-finite entries, raises :class:`~prompt_core.prompts.PromptFileError` naming ``where``.
    """
    check_prompt_shape(prompt, projector.source_hidden, projector.n_tokens, where=where)
    device = next(projector.parameters()).device
    was_training = projector.training
    projector.eval()
    try:
        out = projector(prompt.detach().to(device, torch.float32))
    finally:
        projector.train(was_training)
    return out.float().cpu()


# --- file format ---------------------------------------------------------------------------


def projector_to_bytes(projector: Projector, metadata: dict[str, Any]) -> bytes:
    """Serialise the weights (float32 safetensors) + structural and caller's metadata (JSON).

    The caller's keys may not redefine the structural ones (:data:`STRUCTURAL_KEYS`).
    """
    meta = {
        "kind": FILE_KIND,
        "format_version": FORMAT_VERSION,
        "config": projector.cfg.model_dump(mode="json"),
        "n_tokens": projector.n_tokens,
        "source_hidden": projector.source_hidden,
        "target_hidden": projector.target_hidden,
    }
    clash = [k for k in STRUCTURAL_KEYS if k in metadata and metadata[k] != meta[k]]
    if clash:
        raise ValueError(f"projector metadata may not redefine {clash}")
    meta = {**metadata, **meta}
    tensors = {k: v.detach().cpu().float().contiguous()
               for k, v in projector.state_dict().items()}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def _header_metadata(data: bytes, where: str) -> dict[str, Any]:
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        raw = (header.get("__metadata__") or {}).get(META_KEY)
    except (ValueError, AttributeError) as e:
        raise ProjectorFileError(f"{where}: unreadable safetensors header ({e})") from e
    if raw is None:
        raise ProjectorFileError(f"{where}: no {META_KEY!r} metadata in the header: not a "
                                 "projector file")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProjectorFileError(f"{where}: metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ProjectorFileError(f"{where}: metadata is not a JSON object")
    return meta


def projector_from_bytes(data: bytes, where: str = "projector file"
                         ) -> tuple[Projector, dict[str, Any]]:
    """Rebuild a :class:`Projector` (CPU, eval mode) from its file bytes; returns it and the
    file's metadata. Every problem (not safetensors, not a projector file, another format
    version, bad config or sizes, missing / unexpected / wrongly shaped / non-finite tensors)
    is a :class:`ProjectorFileError` whose message starts with ``where``."""
    try:
        tensors = st_load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes
        raise ProjectorFileError(f"{where}: not a valid safetensors file ({e})") from e
    meta = _header_metadata(data, where)
    if meta.get("kind") != FILE_KIND:
        raise ProjectorFileError(f"{where}: not a projector file (metadata kind "
                                 f"{meta.get('kind')!r}, tensors {sorted(tensors)})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ProjectorFileError(f"{where}: projector format_version "
                                 f"{meta.get('format_version')!r}, this code reads "
                                 f"{FORMAT_VERSION}")
    try:
        cfg = ProjectorConfig.model_validate(meta.get("config"))
    except ValidationError as e:
        raise ProjectorFileError(f"{where}: bad projector config in the metadata: {e}") from e
    sizes = {k: meta.get(k) for k in ("n_tokens", "source_hidden", "target_hidden")}
    bad = {k: v for k, v in sizes.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise ProjectorFileError(f"{where}: metadata sizes must be positive ints, got {bad}")
    # the metadata decides the architecture (built on the meta device: allocates nothing)
    with torch.device("meta"):
        shell = Projector(sizes["n_tokens"], sizes["source_hidden"], sizes["target_hidden"], cfg)
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise ProjectorFileError(f"{where}: tensors do not match a projector: missing "
                                 f"{missing}, unexpected {extra}")
    total = sum(t.numel() for t in tensors.values())
    expected = sum(math.prod(shape) for shape in want.values())
    if expected != total:
        raise ProjectorFileError(
            f"{where}: metadata (n_tokens {sizes['n_tokens']}, source_hidden "
            f"{sizes['source_hidden']}, target_hidden {sizes['target_hidden']}, hidden "
            f"{cfg.hidden}) needs {expected} parameters, the file holds {total}")
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            raise ProjectorFileError(f"{where}: tensor {k!r} has shape "
                                     f"{tuple(tensors[k].shape)}, expected {shape}")
        if not torch.isfinite(tensors[k]).all():
            raise ProjectorFileError(f"{where}: tensor {k!r} contains NaN or infinite values")
    proj = Projector(sizes["n_tokens"], sizes["source_hidden"], sizes["target_hidden"], cfg)
    proj.load_state_dict({k: v.float() for k, v in tensors.items()})
    return proj.eval(), meta


def _parameter_count(n: int, d_s: int, d_t: int, cfg: ProjectorConfig) -> int:
    count = (n * d_s + 1) * cfg.hidden + (cfg.hidden + 1) * n * d_t
    return count + (2 * d_t if cfg.layer_norm else 0)


def projector_parameter_count(n_tokens: int, source_hidden: int, target_hidden: int,
                              cfg: ProjectorConfig) -> int:
    """Parameters of a projector of these sizes, without building it (memory planning)."""
    return _parameter_count(n_tokens, source_hidden, target_hidden, cfg)


__all__ = [
    "ACTIVATIONS", "OBJECTIVES", "Projector", "ProjectorFileError", "ProjectorResult",
    "build_projector", "project", "projector_from_bytes", "projector_parameter_count",
    "projector_to_bytes", "train_distance", "train_task_tuning",
]
