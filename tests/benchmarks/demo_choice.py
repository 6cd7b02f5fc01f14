r"""Which demo tasks and budget make prompt tuning visibly work in `make demo`? (issue 20, part 1)

Draws demo-sized samples (default 240 train / 60 validation / 200 test rows) of candidate tasks
from the shared real data (``../shared/data``) with the *same rule* as the shipped demo tasks
(:func:`tests.demo_data.sample_demo_tasks.sample_task`: same split to same split, stratified,
no duplicates, rows over 600 characters skipped, ``random.Random("0/<demo name>/<split>")``;
derived tasks keep a subset of labels and no text of their sibling's sample). A candidate is a
shipped demo task (``tweet_polarity``, ...), one of :data:`NOT_SHIPPED` (snli, the ETHICS tasks,
two AG News splits) or any ``shared/data`` folder; at the demo's sizes the shipped tasks come
out row for row as shipped. Then:

* ``screen``: for each task and learning rate, trains one prompt with the project's own
  :func:`prompt_core.training.train_prompt` (default encoder backbone, ``--pool`` (default
  ``text``), its verbaliser, 20 tokens, batch 16, dev every 20 steps) for the largest
  budget, and, for every budget in ``--budgets``, takes the checkpoint ``train_prompt`` itself
  would have returned with ``steps = budget`` (best dev accuracy among the evaluations at
  steps <= budget, first one on ties; one run gives all budgets since the batches and updates
  of a shorter run are a prefix of the longer one). It scores that checkpoint and no prompt on
  the test sample. One JSON row per (task, lr, budget) goes to ``--out``; the checkpoints go
  to ``--cache`` so ``matrix`` reuses them.
* ``matrix``: every chosen task's prompt (``--lr``, ``--budget``) on every chosen task's test
  sample, plus a random prompt and no prompt: own minus none per task, and the mean relative
  score (source / target's own prompt) of same-type and different-type off-diagonal pairs,
  as ``current_cross_task`` defines them.

Run (one torch thread; the environment of ``make``)::

    PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 \
    .venv/bin/python -m tests.benchmarks.demo_choice screen \
        --tasks tweet_sentiment,tweet_polarity,qnli,snli --lrs 0.1 --budgets 80,100,120 \
        --out /tmp/demo_choice.jsonl --cache /tmp/demo_choice_prompts [--pool all]
    .venv/bin/python -m tests.benchmarks.demo_choice report --out /tmp/demo_choice.jsonl
    .venv/bin/python -m tests.benchmarks.demo_choice matrix \
        --tasks tweet_sentiment,tweet_polarity,tweet_emotion,ag_news,news_business_tech,qnli \
        --lr 0.1 --budget 60 --select last \
        --out /tmp/demo_choice.jsonl --cache /tmp/demo_choice_prompts [--test 160]

``screen`` writes, per budget, a ``best`` row (the checkpoint ``train_prompt`` picks by dev
accuracy) and a ``last`` row (the step-``budget`` prompt: what ``train_prompt`` returns with
``eval_every`` equal to ``steps``), and a test-accuracy curve of every checkpoint, for
reading only. ``report`` prints them. ``matrix --select last`` trains what it does not find in
``--cache`` with ``eval_every = budget``. ``sizes`` prints the samples' label counts.

``--model ../models/minilm-l3`` (a local folder) runs the same on the derived 3-layer model.
Figures and the decision: ``docs/demo_choice.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from prompt_core.backbones import load_backbone
from prompt_core.config import TrainConfig
from prompt_core.evaluation import EncodedSplit
from prompt_core.prompts import init_prompt
from prompt_core.task_spec import TaskData, make_spec, normalise_split
from prompt_core.training import train_prompt
from tests.demo_data.sample_demo_tasks import TASKS as DEMO_TASKS
from tests.demo_data.sample_demo_tasks import sample_task

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
# candidates screened but not shipped: their sampler entries (shared folder, label words)
NOT_SHIPPED: dict[str, dict[str, Any]] = {
    "snli": {"shared": "snli", "label_words": ["yes", "maybe", "no"]},
    "ethics_justice": {"shared": "ethics_justice", "label_words": ["no", "yes"]},
    "ethics_deontology": {"shared": "ethics_deontology", "label_words": ["no", "yes"]},
    # a binary topic task derived from AG News like tweet_polarity from TweetEval sentiment
    "news_business_tech": {"shared": "ag_news", "labels": ["business", "sci/tech"],
                           "disjoint_from": ["ag_news"],
                           "label_words": ["business", "technology"]},
    "news_world_business": {"shared": "ag_news", "labels": ["world", "business"],
                            "disjoint_from": ["ag_news"], "label_words": ["world", "business"]},
}
CANDIDATES = {**NOT_SHIPPED, **DEMO_TASKS}
# shared folder -> demo name, for the tasks shipped under another name (not derived ones)
DEMO_NAME = {info["shared"]: name for name, info in CANDIDATES.items()
             if "labels" not in info and "disjoint_from" not in info}


def demo_sample(name: str, sizes: dict[str, int], shared: Path = SHARED) -> TaskData:
    """A demo-sized sample of a candidate task, drawn by the shipped demo tasks' rule
    (:func:`tests.demo_data.sample_demo_tasks.sample_task`). ``name``: a demo task of the
    sampler (derived ones included), one of :data:`NOT_SHIPPED`, or a ``shared/data`` folder
    (a shipped task's folder gives that task; another folder its own label words)."""
    name = DEMO_NAME.get(name, name)
    info = CANDIDATES.get(name, {"shared": name, "label_words": None})
    sizes_t = tuple((s, sizes[s]) for s in ("train", "validation", "test"))
    meta, label_names, rows, _ = sample_task(name, info, shared, sizes_t, CANDIDATES)
    words = info["label_words"] or meta.get("label_words")
    src = shared / info["shared"]
    spec = make_spec(name, meta["type"], label_names, words, source=str(src))
    splits = {split: normalise_split(pd.DataFrame(rs, columns=["text_a", "text_b", "label"]),
                                     spec, split, str(src))
              for split, rs in rows.items()}
    return TaskData(spec, splits, source=f"demo sample of {src}")


@contextlib.contextmanager
def snapshots(store: dict[int, torch.Tensor]):
    """Record the prompt at every dev evaluation of ``train_prompt`` (by wrapping AdamW, whose
    one parameter is the prompt, and the ``on_eval`` hook that follows each evaluation)."""
    real = torch.optim.AdamW
    params: list[torch.Tensor] = []

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, ps, *a, **kw):
            ps = list(ps)
            params[:] = ps
            super().__init__(ps, *a, **kw)

    def on_eval(step: int, scores: dict[str, float]) -> None:
        store[step] = params[0].detach().cpu().clone()

    torch.optim.AdamW = Recording
    try:
        yield on_eval
    finally:
        torch.optim.AdamW = real


def best_upto(curve, budget: int) -> tuple[int, float]:
    """The checkpoint ``train_prompt(steps=budget)`` returns: the first best dev accuracy among
    the trained evaluations (step > 0) at steps <= budget."""
    best_step, best = 0, -1.0
    for p in curve:
        if 0 < p.step <= budget and p.dev_accuracy > best:
            best_step, best = p.step, p.dev_accuracy
    return best_step, best


def load_tasks(names: list[str], sizes: dict[str, int]) -> dict[str, TaskData]:
    return {n: demo_sample(n, sizes) for n in names}


def tok_stats(task: TaskData, backbone) -> dict[str, Any]:
    df = task.split("train")
    enc = backbone.encode_many(df["text_a"].tolist(), df["text_b"].tolist(), 128)
    lens = [len(e.input_ids) for e in enc]
    return {"mean_tokens": round(sum(lens) / len(lens), 1), "max_tokens": max(lens)}


def screen(args, backbone, cache: Path) -> None:
    sizes = {"train": args.train, "validation": args.dev, "test": args.test}
    budgets = sorted(int(b) for b in args.budgets.split(","))
    for name in args.tasks.split(","):
        task = demo_sample(name, sizes)
        test = EncodedSplit(backbone, task, "test", 128)
        none = test.evaluate(None)["accuracy"]
        stats = tok_stats(task, backbone)
        counts = {s: len(task.split(s)) for s in ("train", "validation", "test")}
        for lr in (float(x) for x in args.lrs.split(",")):
            cfg = TrainConfig(steps=budgets[-1], eval_every=args.eval_every, lr=lr,
                              max_dev_examples=args.dev)
            store: dict[int, torch.Tensor] = {}
            t0 = time.perf_counter()
            with snapshots(store) as on_eval:
                res = train_prompt(backbone, task, cfg, seed=args.seed, on_eval=on_eval)
            seconds = time.perf_counter() - t0
            steps = sorted(store)  # test accuracy of every checkpoint (not used to select)
            test_curve = [(st, s["accuracy"]) for st, s in
                          zip(steps, test.evaluate_many([store[st] for st in steps]), strict=True)]
            for budget in budgets:
                best_step, best_dev = best_upto(res.curve, budget)
                # best: what train_prompt(steps=budget) returns; last: the step-`budget` prompt,
                # what it returns with eval_every = steps (one dev evaluation, at the end)
                for select, step in (("best", best_step), ("last", budget)):
                    prompt = store[step]
                    acc = test.evaluate(prompt)["accuracy"]
                    torch.save(prompt, prompt_file(cache, args.model_tag, task.name, lr, budget,
                                                   select))
                    row = {"kind": "screen", "model": args.model_tag, "task": task.name,
                           "shared": name, "type": task.spec.type,
                           "n_labels": task.spec.n_labels, "sizes": counts, **stats, "lr": lr,
                           "budget": budget, "select": select, "step": step,
                           "best_dev": best_dev, "test_own": acc, "test_none": none,
                           "gain": acc - none, "train_seconds_full": round(seconds, 1),
                           "train_steps_full": budgets[-1],
                           "curve": [(p.step, p.dev_accuracy) for p in res.curve],
                           "test_curve": test_curve}
                    print(json.dumps({k: v for k, v in row.items()
                                      if k not in ("curve", "sizes", "test_curve")}), flush=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


def prompt_file(cache: Path, model: str, task: str, lr: float, budget: int, select: str) -> Path:
    return cache / f"{model}__{task}__lr{lr:g}__s{budget}__{select}.pt"


def matrix(args, backbone, cache: Path) -> None:
    sizes = {"train": args.train, "validation": args.dev, "test": args.test}
    names = args.tasks.split(",")
    tasks = load_tasks(names, sizes)
    prompts: dict[str, torch.Tensor] = {}
    for task in tasks.values():
        f = prompt_file(cache, args.model_tag, task.name, args.lr, args.budget, args.select)
        if f.exists():
            prompts[task.name] = torch.load(f)
        else:  # not screened: train it now (last: one dev evaluation, at the end)
            every = args.budget if args.select == "last" else args.eval_every
            cfg = TrainConfig(steps=args.budget, eval_every=every, lr=args.lr,
                              max_dev_examples=args.dev)
            prompts[task.name] = train_prompt(backbone, task, cfg, seed=args.seed).prompt
            torch.save(prompts[task.name], f)
    rand = init_prompt("random", backbone, 20, args.seed, std=0.02)
    rows, t0 = [], time.perf_counter()
    for target in tasks.values():
        test = EncodedSplit(backbone, target, "test", 128)
        srcs = list(prompts)
        scored = test.evaluate_many([prompts[s] for s in srcs] + [rand, None])
        accs = [s["accuracy"] for s in scored]
        own = accs[srcs.index(target.name)]
        for s, a in zip(srcs + ["(random)", "(none)"], accs, strict=True):
            src_type = tasks_type(tasks, s)
            rows.append({"source": s, "target": target.name, "acc": a, "own": own,
                         "relative": a / own if own else float("nan"),
                         "same_type": src_type == target.spec.type})
    seconds = time.perf_counter() - t0
    off = [r for r in rows if r["source"] != r["target"] and not r["source"].startswith("(")]
    same = [r["relative"] for r in off if r["same_type"]]
    diff = [r["relative"] for r in off if not r["same_type"]]
    gains = {r["target"]: r["own"] - r["acc"] for r in rows if r["source"] == "(none)"}
    rand_rel = [r["relative"] for r in rows if r["source"] == "(random)"]
    none_rel = [r["relative"] for r in rows if r["source"] == "(none)"]
    summary = {
        "kind": "matrix", "model": args.model_tag, "tasks": [t.name for t in tasks.values()],
        "types": sorted({t.spec.type for t in tasks.values()}), "lr": args.lr,
        "budget": args.budget, "select": args.select, "own_minus_none": gains,
        "beats_none_by_3pts": sum(g >= 0.03 for g in gains.values()),
        "same_type_rel": sum(same) / len(same) if same else None, "n_same": len(same),
        "diff_type_rel": sum(diff) / len(diff) if diff else None, "n_diff": len(diff),
        "random_rel": sum(rand_rel) / len(rand_rel), "none_rel": sum(none_rel) / len(none_rel),
        "eval_seconds": round(seconds, 1), "cells": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "cells"}), flush=True)
    for t in tasks.values():
        line = [f"{r['acc']:.3f}" for r in rows if r["target"] == t.name]
        print(f"  {t.name:22s}", " ".join(line), flush=True)
    print("  columns:", ", ".join(list(prompts) + ["(random)", "(none)"]), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(summary) + "\n")


def report(path: str) -> None:
    """The screen's table from ``--out``: per (model, task, lr) the no-prompt test accuracy,
    own minus none for each budget and checkpoint rule, and the test accuracy curve."""
    runs: dict[tuple, dict[str, Any]] = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("kind") != "screen" or "test_curve" not in r:
            continue
        run = runs.setdefault((r["model"], r["task"], r["lr"]), {"row": r, "gains": {}})
        run["gains"][(r["budget"], r.get("select", "best"))] = (r["gain"], r.get("step",
                                                                                r.get("best_step")))
        if "select" not in r:  # rows of the first version: the last checkpoint from the curve
            last = dict(r["test_curve"])[r["budget"]]
            run["gains"][(r["budget"], "last")] = (last - r["test_none"], r["budget"])
    for (model, task, lr), run in runs.items():
        r = run["row"]
        gains = "  ".join(f"{b}/{sel}: {g:+.3f} (step {st})"
                          for (b, sel), (g, st) in sorted(run["gains"].items()))
        print(f"{model} {task} ({r['type']}) lr {lr:g}: none {r['test_none']:.3f}; {gains}")
        print(f"    dev  {[round(a, 2) for _, a in r['curve']]}")
        print(f"    test {[round(a, 2) for _, a in r['test_curve']]}"
              f"  ({r['train_seconds_full']} s for {r['train_steps_full']} steps, "
              f"{r['mean_tokens']} tokens/example)")


def tasks_type(tasks: dict[str, TaskData], task_name: str) -> str | None:
    for t in tasks.values():
        if t.name == task_name:
            return t.spec.type
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["screen", "matrix", "sizes", "report"])
    ap.add_argument("--tasks", default="", help="shared/data folder names, comma-separated")
    ap.add_argument("--lrs", default="0.03,0.1,0.3", help="screen: learning rates")
    ap.add_argument("--budgets", default="80,120", help="screen: step budgets")
    ap.add_argument("--lr", type=float, default=0.1, help="matrix: learning rate")
    ap.add_argument("--budget", type=int, default=80, help="matrix: step budget")
    ap.add_argument("--select", choices=["best", "last"], default="best",
                    help="matrix: the best-dev checkpoint (train_prompt's) or the last one")
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--dev", type=int, default=60)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model folder (default: the encoder's MiniLM)")
    ap.add_argument("--pool", choices=["text", "all"], default="text",
                    help="the encoder's pool option (a study's models entry sets it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default="/tmp/demo_choice_prompts",
                    help="folder for the trained checkpoints")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.mode == "report":  # the table of a screen's --out, nothing computed
        report(args.out)
        return
    if args.mode == "sizes":  # the samples' sizes and label counts, nothing trained
        for n in args.tasks.split(","):
            t = demo_sample(n, {"train": args.train, "validation": args.dev, "test": args.test})
            print(n, t.spec.type, t.spec.label_words,
                  {s: dict(sorted(Counter(t.split(s)["label"]).items()))
                   for s in ("train", "validation", "test")})
        return
    args.model_tag = (Path(args.model).name if args.model else "minilm") + (
        "" if args.pool == "text" else f"-pool{args.pool}")
    backbone = load_backbone("encoder", args.model, pool=args.pool)
    (screen if args.mode == "screen" else matrix)(args, backbone, cache)


if __name__ == "__main__":
    main()
