"""Prompt-tuning experiments on the real data's validation splits (never the test split).

Each variant trains one prompt per task with the offline MiniLM (``encoder`` kind) and reports
the best dev accuracy, the no-prompt dev accuracy and the time. The record of what was tried is
``docs/prompt_tuning_experiments.md``; this script is how its figures were made:

    .venv/bin/python tests/benchmarks/tuning_experiments.py --variant base --variant text_pool \\
        --out /tmp/tuning.jsonl [--tasks sst2,snli] [--steps 150] [--dev 200] [--threads 1]

Dev accuracy is measured on at most ``--dev`` validation examples (a fixed sample); selection of
the best checkpoint uses the same examples, so the figures are optimistic by the selection's
noise, equally for every variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from prompt_core.backbones import load_backbone
from prompt_core.config import TrainConfig
from prompt_core.data import load_task_folder
from prompt_core.evaluation import EncodedSplit
from prompt_core.training import train_prompt

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TASKS = ["sst2", "imdb", "tweeteval_sentiment", "restaurant", "mnli", "snli", "qnli",
         "ethics_deontology", "ethics_justice", "ag_news"]

# variant -> (backbone options, TrainConfig overrides, label words: "names" | "descriptions")
VARIANTS: dict[str, tuple[dict, dict, str]] = {
    "base": ({"pool": "all"}, {}, "names"),
    "text_pool": ({"pool": "text"}, {}, "names"),
    "text_pool_lr0.1": ({"pool": "text"}, {"lr": 0.1}, "names"),
    "text_pool_lr0.01": ({"pool": "text"}, {"lr": 0.01}, "names"),
    "text_pool_t0.1": ({"pool": "text", "temperature": 0.1}, {}, "names"),
    "text_pool_t0.02": ({"pool": "text", "temperature": 0.02}, {}, "names"),
    "text_pool_n100": ({"pool": "text"}, {"n_tokens": 100}, "names"),
    "text_pool_n5": ({"pool": "text"}, {"n_tokens": 5}, "names"),
    "text_pool_desc": ({"pool": "text"}, {}, "descriptions"),
    "text_pool_vocab": ({"pool": "text"}, {"init": "vocab"}, "names"),
    "base_lr0.1": ({"pool": "all"}, {"lr": 0.1}, "names"),
}

# label descriptions built from label_names only (general: no per-task wording)
def describe(words: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"this text is {w.replace('_', ' ')}" for w in words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, choices=sorted(VARIANTS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--matrix", action="store_true",
                    help="also score every trained prompt on every task's dev sample and print "
                    "the mean relative accuracy of same-type vs different-type pairs")
    ap.add_argument("--overrides", default="{}",
                    help="JSON of further TrainConfig fields, e.g. '{\"steps\": 450}'")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the real data at {SHARED}")
    torch.set_num_threads(args.threads)
    for name in args.variant:
        options, overrides, words = VARIANTS[name]
        backbone = load_backbone("encoder", **options)
        cfg = TrainConfig(**{"steps": args.steps, "eval_every": args.eval_every,
                             "max_length": args.max_length, "max_dev_examples": args.dev,
                             **overrides, **json.loads(args.overrides)})
        trained: dict[str, tuple] = {}  # task -> (TaskData, prompt)
        for task_name in args.tasks.split(","):
            task = load_task_folder(SHARED / task_name)
            if words == "descriptions":
                task.spec = dataclasses.replace(task.spec,
                                                label_words=describe(task.spec.label_words))
            t0 = time.perf_counter()
            res = train_prompt(backbone, task, cfg, seed=args.seed)
            seconds = time.perf_counter() - t0
            dev = EncodedSplit(backbone, task, "validation", cfg.max_length, args.dev)
            none = dev.evaluate(None)["accuracy"]
            trained[task_name] = (task, res.prompt)
            row = {"variant": name, "task": task_name, "best_dev": res.best_scores["accuracy"],
                   "best_step": res.best_step, "no_prompt_dev": none, "seconds": seconds,
                   "steps": cfg.steps, "curve": [(p.step, p.dev_accuracy) for p in res.curve],
                   "lr": res.lr, "seed": args.seed, "overrides": args.overrides}
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        if args.matrix:
            matrix(name, backbone, cfg, trained, args.dev, args.out)


def matrix(name, backbone, cfg, trained, n_dev, out) -> None:
    """Dev accuracy of every trained prompt on every task; relative to the target's own."""
    rows = []
    for target, (task, own) in trained.items():
        dev = EncodedSplit(backbone, task, "validation", cfg.max_length, n_dev)
        own_acc = dev.evaluate(own)["accuracy"]
        for source, (src_task, prompt) in trained.items():
            if source == target:
                continue
            acc = dev.evaluate(prompt)["accuracy"]
            rows.append({"variant": name, "source": source, "target": target, "acc": acc,
                         "relative": acc / own_acc,
                         "same_type": src_task.spec.type == task.spec.type})
    same = [r["relative"] for r in rows if r["same_type"]]
    diff = [r["relative"] for r in rows if not r["same_type"]]
    summary = {"variant": name, "matrix": True, "same_type_rel": sum(same) / max(len(same), 1),
               "diff_type_rel": sum(diff) / max(len(diff), 1), "pairs": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "pairs"}), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
