r"""The causal kind's defaults on the real SmolLM2-135M-Instruct (issue 20, part 2): which input
layout scores best with no prompt, and which learning rate prompt tuning wants.

Needs the converted model (``make models/smollm2-135m/derivation.json``, or ``prompt-transfer
derive-model gguf --out models/smollm2-135m``) and the real task data in ``../shared/data``.
Validation splits only (a fixed sample, ``DataFrame.sample(random_state=0)`` as
:class:`prompt_core.evaluation.EncodedSplit` draws it); never test.

* ``zero-shot``: no-prompt accuracy of each layout (:data:`LAYOUTS`) on each task, scored with
  the project's own :class:`~prompt_core.backbones.causal.CausalBackbone` (option ``template``:
  ``plain``: ``text_a [\n text_b] cue``, label words with a leading space; ``chat``: the same
  text and cue as the user turn of the model's chat template, then ``<|im_start|>assistant\n``,
  label words without a space, as they would start the answer line).
* ``lr``: one prompt per (task, lr) with :func:`prompt_core.training.train_prompt` (the kind's
  default layout, ``--n-tokens`` tokens, batch 16, dev every ``--eval-every`` steps); prints the dev
  accuracy at each evaluation and the best.

Run (the environment of ``make``; 2 torch threads)::

    PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false .venv/bin/python -m tests.benchmarks.smollm2_choices \
        zero-shot --tasks sst2,tweeteval_sentiment,ag_news,qnli --rows 100 --layouts 0,3,4
    ... -m tests.benchmarks.smollm2_choices lr --tasks sst2,tweeteval_sentiment \
        --lrs 0.003,0.01,0.03,0.1 --steps 40 --eval-every 10 --rows 100

Figures and the choice: docs/prompt_tuning_experiments.md, "SmolLM2-135M-Instruct".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prompt_core.backbones.base import Encoded
from prompt_core.backbones.causal import CausalBackbone
from prompt_core.config import TrainConfig
from prompt_core.data import load_task_folder
from prompt_core.evaluation import EncodedSplit
from prompt_core.training import train_prompt

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
MODEL = REPO / "models" / "smollm2-135m"


class DocStartCausal(CausalBackbone):
    """The plain layout after ``<|endoftext|>`` (the pretraining corpus's document separator)."""

    def encode(self, text_a, text_b, max_length):
        first = self._ids("<|endoftext|>")
        ids = first + super().encode(text_a, text_b, max_length - len(first)).input_ids
        return Encoded(ids, [0] * len(ids))


# name -> (backbone class, constructor options); the chat rows were measured with an earlier
# copy of the chat layout in this script, which gave the same ids as template: chat now does
LAYOUTS = {
    "plain, cue '\\nAnswer:'": (CausalBackbone, {"template": "plain"}),
    "plain, cue '\\nLabel:'": (CausalBackbone, {"template": "plain", "cue": "\nLabel:"}),
    "plain, cue ' Answer:'": (CausalBackbone, {"template": "plain", "cue": " Answer:"}),
    "plain, <|endoftext|> first, cue '\\nAnswer:'": (DocStartCausal, {"template": "plain"}),
    "chat template, cue '\\nAnswer:'": (CausalBackbone, {"template": "chat"}),
    "chat template, no cue": (CausalBackbone, {"template": "chat", "cue": ""}),
}


def load(cls, options, model=MODEL):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(model))
    lm = AutoModelForCausalLM.from_pretrained(str(model))
    return cls(lm, tok, str(model), **options)


def zero_shot(args) -> None:
    tasks = {t: load_task_folder(SHARED / t) for t in args.tasks.split(",")}
    rows = []
    names = list(LAYOUTS)
    for name in (names[int(i)] for i in args.layouts.split(",")) if args.layouts else names:
        cls, options = LAYOUTS[name]
        bb = load(cls, options)
        accs = {}
        for t, task in tasks.items():
            t0 = time.perf_counter()
            split = EncodedSplit(bb, task, "validation", args.max_length, args.rows)
            accs[t] = round(split.evaluate(None, batch_size=16)["accuracy"], 3)
            print(f"  {name} / {t}: {accs[t]} ({time.perf_counter() - t0:.0f}s)", flush=True)
        mean = round(sum(accs.values()) / len(accs), 3)
        rows.append({"layout": name, **accs, "mean": mean})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| layout | " + " | ".join(tasks) + " | mean |")
    print("|---|" + "---|" * (len(tasks) + 1))
    for r in rows:
        print(f"| {r['layout']} | " + " | ".join(str(r[t]) for t in tasks) + f" | {r['mean']} |")


def lr_sweep(args) -> None:
    bb = load(CausalBackbone, {})
    for t in args.tasks.split(","):
        task = load_task_folder(SHARED / t)
        for lr in (float(x) for x in args.lrs.split(",")):
            cfg = TrainConfig(n_tokens=args.n_tokens, steps=args.steps, batch_size=16,
                              eval_every=args.eval_every, lr=lr, max_length=args.max_length,
                              max_dev_examples=args.rows)
            res = train_prompt(bb, task, cfg, seed=0)
            curve = [(p.step, round(p.dev_accuracy, 3),
                      None if p.train_loss is None else round(p.train_loss, 3))
                     for p in res.curve]
            print(json.dumps({"task": t, "lr": lr, "best": round(res.best_scores["accuracy"], 3),
                              "best_step": res.best_step, "curve": curve,
                              "seconds": round(res.seconds)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("zero-shot", "lr"):
        p = sub.add_parser(name)
        p.add_argument("--tasks", default="sst2,tweeteval_sentiment,ag_news,qnli")
        p.add_argument("--rows", type=int, default=160, help="validation rows per task")
        p.add_argument("--max-length", type=int, default=64)
        p.add_argument("--threads", type=int, default=2)
    sub.choices["zero-shot"].add_argument(
        "--layouts", default="", help="comma-separated indices into LAYOUTS (default: all)")
    lr = sub.choices["lr"]
    lr.add_argument("--lrs", default="0.003,0.01,0.03,0.1")
    lr.add_argument("--steps", type=int, default=40)
    lr.add_argument("--eval-every", type=int, default=10)
    lr.add_argument("--n-tokens", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"zero-shot": zero_shot, "lr": lr_sweep}[args.cmd](args)


if __name__ == "__main__":
    main()
