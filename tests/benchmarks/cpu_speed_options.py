"""CPU speed options for MiniLM scoring and prompt training (issue "Beyond the eager forward").

On the offline MiniLM (the encoder kind's default model) and the real SST-2 data in
../shared/data, in one process. Variants are interleaved batch by batch (step by step for
training), in an order that rotates from one batch to the next, so that the load of a shared
machine falls on all of them alike; each figure is the median of ``--reps`` repetitions, and a
ratio the median over all (repetition, unit) pairs of the two variants' times on that unit.

Scoring: one prompt over ``--n`` test examples in batches of 64 sorted by length, which is what
``EncodedSplit.predict`` does; the baseline ``base`` is that path (eager PyTorch, the model's
default attention implementation, ``torch.inference_mode``), against

* ``eager_attn``   the model loaded with ``attn_implementation="eager"`` (the default is sdpa)
* ``compiled``     ``model.compile(dynamic=True)`` (inductor; the compile time is shown apart)
* ``no_grad``      ``torch.no_grad`` instead of ``torch.inference_mode``
* ``cpu_bf16``     bf16 autocast on the CPU (for scale only: it changes the numerics)
* ``one_thread``   ``torch.set_num_threads(1)`` (for scale: what a shared machine gives)
* onnxruntime      only if it is installed in the venv (this script installs nothing)
* ``k_multi``      K prompts in one forward of K*B rows (``logits_many``, what
  ``EncodedSplit.predict_many`` runs) vs ``k_single``, the K prompts one forward each

Training steps (``TrainConfig`` defaults: 20 prompt tokens, batch 16, max_length 128):
``train_k_single``, K one-prompt steps (forward, backward, AdamW, as ``train_prompt``), vs
``train_k_joint``, one joint step of K prompts (``prompt_core.multi_prompt.joint_step``); and
one-prompt steps with the default vs eager attention.

Printed: examples/s, ratios, the largest logit difference to the reference and whether the
predictions are identical, the fp32 matmul peak (2048 x 2048, median of 5, at the start and the
end) and each variant's achieved GFLOP/s as a fraction of the first peak. FLOPs counted:

* forward  = 2 * N * R * S  +  L * 4 * R * S^2 * D
  (N: parameters of the L transformer layers, embeddings and pooler excluded; R rows of S
  positions = prompt + the batch's padded text; the attention products Q K^T and A V,
  2 * 2 * S^2 * D per row and layer)
* training step = 2 * (2 * N * R * S) + 3 * (L * 4 * R * S^2 * D): the weights are frozen, so
  backward computes input gradients only: one more matmul per linear layer (~1x its forward),
  and in attention the gradients of the scores, Q, K and V (~2x its forward)

    .venv/bin/python tests/benchmarks/cpu_speed_options.py [--n 128] [--reps 3] [--k 4]
        [--train-steps 2] [--no-compile] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prompt_core.backbone_kinds import MINILM_ID, resolve_model_path
from prompt_core.backbones import EncoderBackbone, load_backbone
from prompt_core.backbones.multi import logits_many, stacked_logits
from prompt_core.config import TrainConfig
from prompt_core.data import load_task_folder
from prompt_core.evaluation import EncodedSplit
from prompt_core.multi_prompt import joint_step
from prompt_core.training import train_batches

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BATCH = 64

Shape = tuple[int, int]  # (rows R, positions S) of one forward pass


def matmul_peak(size: int = 2048, reps: int = 5) -> float:
    """fp32 GFLOP/s of one ``size`` x ``size`` matmul, median of ``reps`` (after a warm-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def layer_params(bb: EncoderBackbone) -> tuple[int, int, int]:
    """(N parameters of the transformer layers, L layers, D hidden size)."""
    layers = bb.model.encoder.layer
    return sum(p.numel() for p in layers.parameters()), len(layers), bb.hidden_size


def forward_flops(shapes: list[Shape], npl: tuple[int, int, int]) -> tuple[float, float]:
    """(linear, attention) forward FLOPs of forward passes of the given shapes."""
    n, layers, d = npl
    return (float(sum(2 * n * r * s for r, s in shapes)),
            float(sum(layers * 4 * r * s * s * d for r, s in shapes)))


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scorer(bb, enc: EncodedSplit, prompts: list[torch.Tensor], grad=torch.inference_mode,
           amp: bool = False, n_threads: int | None = None, together: bool = True
           ) -> Callable[[np.ndarray], torch.Tensor]:
    """fn(example indices) -> logits (K, B, C): one forward per prompt (K = 1, or ``together``
    False: ``backbone.logits``, the one-prompt path) or all K in one (``logits_many``)."""
    def run(idx: np.ndarray) -> torch.Tensor:
        amp_ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with threads(n_threads), grad(), amp_ctx:
            batch, _ = enc.batch(idx)
            if len(prompts) > 1 and together:
                return logits_many(bb, prompts, batch, enc.scorer).float()
            return torch.stack([bb.logits(p, batch, enc.scorer).float() for p in prompts])
    return run


class Times(dict):
    """variant -> the total time of each repetition; ``units[variant]``: each unit's time, in
    (repetition, unit) order."""

    def __init__(self, names: list[str], reps: int):
        super().__init__({n: [0.0] * reps for n in names})
        self.units: dict[str, list[float]] = {n: [] for n in names}


def interleave(variants: dict[str, Callable], units: list, reps: int
               ) -> tuple[Times, dict[str, list]]:
    """Run every variant on every unit (a batch, a training step), the variants' order rotating
    from unit to unit, ``reps`` times: the times and each variant's results of the last
    repetition."""
    names = list(variants)
    times = Times(names, reps)
    results: dict[str, list] = {n: [] for n in names}
    for r in range(reps):
        for j, unit in enumerate(units):
            k = (j + r) % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                out = variants[name](unit)
                dt = time.perf_counter() - t0
                times[name][r] += dt
                times.units[name].append(dt)
                if r == reps - 1:
                    results[name].append(out)
    return times, results


def paired_ratio(times: Times, ref: str, name: str) -> float:
    """Median over every (repetition, unit) of ref time / variant time, the two run back to
    back on the same unit (> 1: the variant is faster)."""
    return statistics.median(a / b for a, b in zip(times.units[ref], times.units[name],
                                                   strict=True))


def load_variant(tok, attn: str | None = None) -> EncoderBackbone:
    from transformers import AutoModel

    kw = {"attn_implementation": attn} if attn else {}
    model = AutoModel.from_pretrained(resolve_model_path(MINILM_ID), **kw)
    return EncoderBackbone(model, tok, MINILM_ID)


def grad_gaps(bb, split: EncodedSplit, prompts: list[torch.Tensor],
              batches: list[np.ndarray]) -> tuple[float, float]:
    """One step's prompt gradients, as max |difference| / max |entry|: (joint vs single, single
    padded to the joint batch's length vs single) - the second shows how much of the first is
    rounding from the longer padding alone."""
    params = [torch.nn.Parameter(p.clone()) for p in prompts]
    parts = [[split.items[i] for i in idx] for idx in batches]
    logits = stacked_logits(bb, params, parts, [split.scorer] * len(params))
    sum(F.cross_entropy(lg, torch.as_tensor(split.labels[idx]))
        for lg, idx in zip(logits, batches, strict=True)).backward()
    longest = max(int(split.lengths[idx].max()) for idx in batches)
    joint_gap = pad_gap = 0.0
    for p, prm, idx in zip(prompts, params, batches, strict=True):
        grads = []
        for pad in (0, longest - int(split.lengths[idx].max())):
            q = torch.nn.Parameter(p.clone())
            batch, labels = split.batch(idx)
            if pad:
                batch = {k: F.pad(v, (0, pad), value=bb.pad_token_id if k == "input_ids" else 0)
                         for k, v in batch.items()}
            F.cross_entropy(bb.logits(q, batch, split.scorer), labels).backward()
            grads.append(q.grad)
        scale = grads[0].abs().max()
        joint_gap = max(joint_gap, ((prm.grad - grads[0]).abs().max() / scale).item())
        pad_gap = max(pad_gap, ((grads[1] - grads[0]).abs().max() / scale).item())
    return joint_gap, pad_gap


def report_scoring(enc, batches, times, results, npl, n_tok, k, peak) -> None:
    base = torch.cat(results["base"], dim=1)  # (1, N, C) in batch order
    shapes = [(len(idx), n_tok + int(enc.lengths[idx].max())) for idx in batches]
    lin, att = forward_flops(shapes, npl)
    print(f"\nscoring: {len(enc)} examples per prompt, FLOPs per one-prompt pass "
          f"{(lin + att) / 1e9:.1f} G = {lin / 1e9:.1f} linear + {att / 1e9:.1f} attention")
    print(f"{'variant':11s} {'median s':>8s} {'ex/s':>7s} {'ratio':>6s} {'GFLOP/s':>7s} "
          f"{'peak':>6s} {'max|dlogit|':>11s} {'preds':9s} reps (s)")
    for name in times:
        med = statistics.median(times[name])
        got = torch.cat(results[name], dim=1)
        per = got.shape[0]
        ref, want = "base", base
        if name == "k_multi":
            ref, want = "k_single", torch.cat(results["k_single"], dim=1)
        elif per > 1:  # k_single: its first prompt is the baseline's
            got = got[:1]
        gf = per * (lin + att) / med / 1e9
        diff = (got - want).abs().max().item()
        same = "identical" if torch.equal(got.argmax(-1), want.argmax(-1)) else "DIFFER"
        print(f"{name:11s} {med:8.2f} {per * len(enc) / med:7.1f} "
              f"{paired_ratio(times, ref, name):6.3f} {gf:7.1f} {gf / peak:6.1%} {diff:11.2e} "
              f"{same:9s} {[round(t, 2) for t in times[name]]}"
              + ("  (ratio vs k_single)" if name == "k_multi" else ""))


def main() -> None:  # noqa: PLR0915 - one linear measurement script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="test examples scored per pass")
    ap.add_argument("--train-n", type=int, default=512, help="train examples to sample from")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--k", type=int, default=4, help="prompts per multi-prompt forward")
    ap.add_argument("--train-steps", type=int, default=2, help="steps per repetition")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not (SHARED / "sst2").is_dir():
        raise SystemExit(f"needs the real data at {SHARED / 'sst2'}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul 2048^3: "
          f"{peak:.1f} GFLOP/s (median of 5)")

    bb = load_backbone("encoder")
    impl = getattr(bb.model.config, "_attn_implementation", "?")
    task = load_task_folder(SHARED / "sst2")
    enc = EncodedSplit(bb, task, "test", 128, args.n)
    npl = layer_params(bb)
    cfg = TrainConfig()
    n_tok = cfg.n_tokens
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randn(n_tok, bb.hidden_size, generator=g) * 0.5 for _ in range(args.k)]
    p0 = prompts[:1]
    print(f"MiniLM: {npl[1]} layers, D {npl[2]}, {npl[0] / 1e6:.2f}M layer parameters, default "
          f"attention {impl!r}; SST-2 test {len(enc)} examples (mean length "
          f"{enc.lengths.mean():.1f}), prompt {n_tok} tokens")
    order = np.argsort(enc.lengths, kind="stable")
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]

    variants: dict[str, Callable] = {
        "base": scorer(bb, enc, p0),
        "no_grad": scorer(bb, enc, p0, torch.no_grad),
        "cpu_bf16": scorer(bb, enc, p0, amp=True),
        "one_thread": scorer(bb, enc, p0, n_threads=1),
    }
    bb_eager = None
    if impl != "eager":
        bb_eager = load_variant(bb.tokenizer, "eager")
        variants["eager_attn"] = scorer(bb_eager, EncodedSplit(bb_eager, task, "test", 128,
                                                               args.n), p0)
    if not args.no_compile:
        bb_c = load_variant(bb.tokenizer)
        bb_c.model.compile(dynamic=True)
        compiled = scorer(bb_c, EncodedSplit(bb_c, task, "test", 128, args.n), p0)
        t0 = time.perf_counter()
        for idx in batches:
            compiled(idx)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for idx in batches:
            compiled(idx)
        t_second = time.perf_counter() - t0
        print(f"compile (dynamic shapes): first pass {t_first:.1f} s, second {t_second:.1f} s: "
              f"compile ~{t_first - t_second:.1f} s (less when inductor's on-disk cache is warm)")
        variants["compiled"] = compiled
    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime: not installed in this venv: skipped")
    variants["k_single"] = scorer(bb, enc, prompts, together=False)
    variants["k_multi"] = scorer(bb, enc, prompts)
    for fn in variants.values():  # warm-up: the longest batch once
        fn(batches[-1])
    assert np.array_equal(
        torch.cat([variants["base"](idx)[0] for idx in batches]).argmax(-1).numpy(),
        enc.predict(p0[0])[np.concatenate(batches)]), "base must be EncodedSplit.predict"
    times, results = interleave(variants, batches, args.reps)
    report_scoring(enc, batches, times, results, npl, n_tok, args.k, peak)

    # --- training steps ------------------------------------------------------------------
    train = EncodedSplit(bb, task, "train", cfg.max_length, args.train_n)
    gens = [train_batches(cfg, train, np.random.default_rng(s)) for s in range(args.k)]
    steps = [[next(gen) for gen in gens] for _ in range(args.train_steps)]  # K batches a step
    init = [torch.randn(n_tok, bb.hidden_size, generator=g) * 0.5 for _ in range(args.k)]

    def single(backbone, split, k: int):
        params = [torch.nn.Parameter(p.clone()) for p in init[:k]]
        opts = [torch.optim.AdamW([p], lr=3e-2) for p in params]

        def step(batches: list[np.ndarray]) -> torch.Tensor:
            for p, opt, idx in zip(params, opts, batches[:k], strict=False):
                batch, labels = split.batch(idx)
                loss = F.cross_entropy(backbone.logits(p, batch, split.scorer).float(), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return torch.stack([p.detach().clone() for p in params])
        return step

    def joint():
        params = [torch.nn.Parameter(p.clone()) for p in init]
        opts = [torch.optim.AdamW([p], lr=3e-2) for p in params]

        def step(batches: list[np.ndarray]) -> torch.Tensor:
            joint_step(bb, params, [train] * args.k, batches, opts)
            return torch.stack([p.detach().clone() for p in params])
        return step

    tv: dict[str, Callable] = {"train_1": single(bb, train, 1),
                               "train_k_single": single(bb, train, args.k),
                               "train_k_joint": joint()}
    if bb_eager is not None:
        tv["train_1_eager"] = single(bb_eager, EncodedSplit(bb_eager, task, "train",
                                                            cfg.max_length, args.train_n), 1)
    ttimes, tres = interleave(tv, steps, args.reps)
    print(f"\ntraining: {args.train_steps} steps per repetition, batch {cfg.batch_size}, "
          f"K = {args.k}; step FLOPs = 2 x linear + 3 x attention forward FLOPs")
    refs = {"train_k_joint": "train_k_single", "train_1_eager": "train_1"}
    for name in tv:
        med = statistics.median(ttimes[name])
        if name == "train_k_joint":  # one pass, padded to the longest of the K batches
            shapes = [(sum(len(b) for b in bs), n_tok + max(int(train.lengths[b].max())
                                                              for b in bs)) for bs in steps]
        else:
            k = args.k if name == "train_k_single" else 1
            shapes = [(len(b), n_tok + int(train.lengths[b].max())) for bs in steps
                      for b in bs[:k]]
        lin, att = forward_flops(shapes, npl)
        gf = (2 * lin + 3 * att) / med / 1e9
        examples = sum(r for r, _ in shapes)
        ratio = paired_ratio(ttimes, refs[name], name) if name in refs else 1.0
        print(f"{name:15s} {med:6.2f} s {examples / med:6.1f} ex/s  ratio {ratio:.3f}"
              + (f" (vs {refs[name]})" if name in refs else "")
              + f"  {gf:6.1f} GFLOP/s {gf / peak:6.1%} of peak  "
              f"{[round(t, 2) for t in ttimes[name]]}")
    dp = (tres["train_k_joint"][-1] - tres["train_k_single"][-1]).abs().max().item()
    jg, pg = grad_gaps(bb, train, init, steps[0])
    print(f"joint vs single: first-step gradients differ by {jg:.1e} of the largest entry "
          f"(single padded to the joint length vs single: {pg:.1e}); prompts after "
          f"{args.reps * args.train_steps} AdamW steps by {dp:.1e} (entries ~0.5)")
    print(f"fp32 matmul 2048^3 at the end: {matmul_peak():.1f} GFLOP/s")


if __name__ == "__main__":
    main()
