"""Speed of cross-task evaluation: the grouped scorer vs a naive per-cell loop.

The flow scores every source prompt on a target inside one unit: the split is tokenised once,
label embeddings are built once, and batches are length-sorted so padding is small. The naive
loop does what a per-cell Prefect task would: tokenise and build the label scorer for every
prompt, and batch in data order. Both run here, in one process, on the same prompts and data;
the script prints examples/s for each and the ratio, and checks both give identical predictions.

    .venv/bin/python tests/benchmarks/bench_evaluation.py [--task sst2] [--prompts 4] [--n 300]

Uses the real data in ../shared/data and the offline MiniLM.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from prompt_core.backbones import load_backbone
from prompt_core.data import load_task_folder
from prompt_core.evaluation import EncodedSplit

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def naive_predict(backbone, task, split, prompt, max_examples, batch_size=64):
    """Per-cell work: tokenise + label scorer for this prompt, batches in data order."""
    enc = EncodedSplit(backbone, task, split, 128, max_examples)
    preds = []
    with torch.inference_mode():
        for start in range(0, len(enc), batch_size):
            idx = np.arange(start, min(start + batch_size, len(enc)))
            batch, _ = enc.batch(idx)
            preds.append(backbone.logits(prompt, batch, enc.scorer).argmax(-1).numpy())
    return np.concatenate(preds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=300, help="test examples")
    args = ap.parse_args()
    if not (SHARED / args.task).is_dir():
        raise SystemExit(f"needs the real data at {SHARED / args.task}")
    backbone = load_backbone("encoder")
    task = load_task_folder(SHARED / args.task)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randn(20, backbone.hidden_size, generator=g) * 0.02
               for _ in range(args.prompts)]

    t0 = time.perf_counter()
    naive = [naive_predict(backbone, task, "test", p, args.n) for p in prompts]
    t_naive = time.perf_counter() - t0

    t0 = time.perf_counter()
    enc = EncodedSplit(backbone, task, "test", 128, args.n)
    grouped = [enc.predict(p) for p in prompts]
    t_grouped = time.perf_counter() - t0

    same = all((a == b).all() for a, b in zip(naive, grouped, strict=True))
    n = args.n * args.prompts
    print(f"task {args.task}: {args.prompts} prompts x {args.n} examples, torch threads "
          f"{torch.get_num_threads()}")
    print(f"naive per-cell : {t_naive:7.2f} s  {n / t_naive:8.1f} examples/s")
    print(f"grouped        : {t_grouped:7.2f} s  {n / t_grouped:8.1f} examples/s")
    print(f"speed-up       : {t_naive / t_grouped:.2f}x   identical predictions: {same}")


if __name__ == "__main__":
    main()
