"""Speed of prompt training: length-bucketed vs random batches (TrainConfig.batching).

A random batch is padded to its longest member, so on long texts most of a step's tokens are
padding; bucketed batches hold examples of similar length. This script trains with
:func:`prompt_core.training.train_prompt` itself, both ways, on a short task (sst2) and a long
one (imdb), and reports training examples/s (timed between the first and the last optimiser
step via ``on_step``, so neither tokenisation nor the step-0 / final dev evaluations count),
the real and padded tokens per batch, the bucketed/random ratio, and dev evaluation
examples/s (:meth:`EncodedSplit.evaluate`, which is the same for both batchings).

The machine may be shared with other jobs, so the two batchings run interleaved (random,
bucketed, random, bucketed, ...: ABAB), each repeat with the same seed for both, and the ratio
is total examples / total time per batching over all repeats; the ratio of each A/B pair is
printed too (a pair run while the machine was quiet is the least disturbed).

    .venv/bin/python tests/benchmarks/bench_training_speed.py [--tasks sst2 imdb] [--steps 30]
        [--repeats 2] [--threads 2]

Uses the real data in ../shared/data and the offline MiniLM; skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch

from prompt_core.backbones import EncoderBackbone
from prompt_core.config import TrainConfig
from prompt_core.data import load_task_folder
from prompt_core.evaluation import EncodedSplit
from prompt_core.training import train_batches, train_prompt

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BATCHINGS = ("random", "bucketed")


def train_rate(backbone, task, cfg: TrainConfig, seed: int) -> float:
    """Training examples/s of ``train_prompt``, timed from step 1 to the last step."""
    stamps: dict[int, float] = {}
    train_prompt(backbone, task, cfg, seed=seed,
                 on_step=lambda step, total: stamps.__setitem__(step, time.perf_counter()))
    return (cfg.steps - 1) * cfg.batch_size / (stamps[cfg.steps] - stamps[1])


def tokens_per_batch(train: EncodedSplit, cfg: TrainConfig, seed: int) -> tuple[float, float]:
    """(real, padded) tokens per batch over the batches a run of ``cfg.steps`` draws."""
    gen = train_batches(cfg, train, np.random.default_rng(seed))
    batches = list(itertools.islice(gen, cfg.steps))
    real = np.mean([train.lengths[b].sum() for b in batches])
    padded = np.mean([train.lengths[b].max() * len(b) for b in batches])
    return float(real), float(padded)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["sst2", "imdb"])
    ap.add_argument("--steps", type=int, default=30, help="optimiser steps per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="ABAB repeats per task")
    ap.add_argument("--dev-n", type=int, default=200, help="dev examples for the eval timing")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    missing = [t for t in args.tasks if not (SHARED / t / "task.json").is_file()]
    if missing:
        print(f"SKIP: needs the real data at {SHARED} (missing: {', '.join(missing)})")
        return
    torch.set_num_threads(args.threads)
    backbone = EncoderBackbone.from_pretrained(EncoderBackbone.default_model_id)
    load0 = os.getloadavg()[0]
    print(f"MiniLM, torch threads {torch.get_num_threads()}, {args.steps} steps x batch "
          f"{args.batch_size}, max_length {args.max_length}; batchings interleaved "
          f"{'/'.join(BATCHINGS)} x {args.repeats} (ABAB) so a busy machine slows both alike; "
          f"load average {load0:.2f}")
    rows, speedup, paired, dev_rate = [], {}, {}, {}
    for name in args.tasks:
        task = load_task_folder(SHARED / name)
        train = EncodedSplit(backbone, task, "train", args.max_length)
        # a small dev cap keeps the (untimed) step-0 and final evaluations short
        cfgs = {b: TrainConfig(steps=args.steps, batch_size=args.batch_size, batching=b,
                               max_length=args.max_length, eval_every=args.steps,
                               max_dev_examples=32) for b in BATCHINGS}
        rates: dict[str, list[float]] = {b: [] for b in BATCHINGS}
        for r in range(args.repeats):
            for b in BATCHINGS:
                rates[b].append(train_rate(backbone, task, cfgs[b], seed=r))
        for b in BATCHINGS:
            real, padded = tokens_per_batch(train, cfgs[b], seed=0)
            # total examples / total time over the repeats = harmonic mean of the rates
            mean = len(rates[b]) / sum(1 / x for x in rates[b])
            rows.append((name, b, rates[b], mean, real, padded))
        speedup[name] = rows[-1][3] / rows[-2][3]
        paired[name] = [b / a for a, b in zip(*(rates[b] for b in BATCHINGS), strict=True)]
        dev = EncodedSplit(backbone, task, "validation", args.max_length, args.dev_n)
        prompt = torch.randn(20, backbone.hidden_size, generator=torch.Generator().manual_seed(0))
        dev.evaluate(prompt * 0.02)  # warm-up
        t0 = time.perf_counter()
        dev.evaluate(prompt * 0.02)
        dev_rate[name] = len(dev) / (time.perf_counter() - t0)

    print(f"\n{'task':6} {'batching':9} {'train examples/s per repeat':28} {'overall':>8} "
          f"{'real tok/batch':>15} {'padded tok/batch':>17} {'padding':>8}")
    for name, b, per, mean, real, padded in rows:
        each = " ".join(f"{x:6.1f}" for x in per)
        print(f"{name:6} {b:9} {each:28} {mean:8.1f} {real:15.0f} {padded:17.0f} "
              f"{1 - real / padded:8.0%}")
    print()
    for name, ratio in speedup.items():
        each = ", ".join(f"{x:.2f}" for x in paired[name])
        print(f"{name}: bucketed / random training speed {ratio:.2f}x overall, per repeat "
              f"{each} (median {np.median(paired[name]):.2f}x); dev evaluation "
              f"{dev_rate[name]:.1f} examples/s (length-sorted batches of 64, inference mode)")
    print(f"load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
          "(other jobs on the machine slow every number, the interleaved ratio less so)")


if __name__ == "__main__":
    main()
