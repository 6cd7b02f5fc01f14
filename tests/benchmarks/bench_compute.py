"""Compute benchmarks on the offline MiniLM and ../shared/data, in one process each:

* ``scoring_vs_bare``: cross-task scoring throughput of the project's scorer
  (:func:`prompt_core.evaluation.evaluate_prompts`: tokenise the target once, length-sorted
  batches, K prompts) vs a bare frozen forward pass (embedding lookup + prompt + encoder, no
  pooling, no scoring) over the very same padded batches, collated beforehand.
* ``evaluate_unit_vs_bare``: the whole evaluate unit (``tasks.units.evaluate_target_unit.fn``
  on a local storage root: stored prompt files, random and no-prompt rows, bootstrap intervals,
  predictions and cells written as Parquet, claims) vs the bare forward pass over the same
  examples and sources.
* ``training_vs_bare``: prompt-training steps (:func:`prompt_core.training.train_prompt`, timed
  from step 1 to the last step with ``on_step``, as bench_training_speed.py does) vs a bare
  forward + backward (to the prompt) of the same batches, collated beforehand.
* ``matmul_peak_fraction``: this machine's fp32 matmul peak (``torch.matmul`` of large square
  matrices, same torch thread count) and the GFLOP/s the scorer and the training loop reach,
  counted from the model: forward ``2 * P * T``, forward + backward with frozen weights
  ``4 * P * T`` (the backward pass computes activation gradients only: no weight gradients),
  P = parameters of the encoder layers (the matmuls; embeddings are lookups), T = tokens in
  the padded batches, prompt included. Attention's own T^2 products are left out (~2% here).

Every ratio: A and B alternate (A B, B A, ...), median of the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.benchmarks.bench_common import (
    SHARED,
    Bench,
    alternate,
    capped_task,
    log,
    med,
    paired,
    secs,
    shared_missing,
)

TARGET = "sst2"
SOURCES = ["tweeteval_sentiment", "tweeteval_emotion", "mrpc", "qnli", "snli", "ag_news",
           "ethics_justice"]
N_TOKENS = 20


def _setup(threads: int):
    import torch

    from prompt_core.backbones import load_backbone

    torch.set_num_threads(threads)
    return load_backbone("encoder")


def _prompts(backbone, k: int) -> list:
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(N_TOKENS, backbone.hidden_size, generator=g) * 0.02 for _ in range(k)]


def sorted_batches(enc, batch_size: int) -> list[dict]:
    """The scorer's batches, collated: length-sorted (stable) chunks of ``batch_size``."""
    order = np.argsort(enc.lengths, kind="stable")
    return [enc.batch(order[s : s + batch_size])[0] for s in range(0, len(order), batch_size)]


def bare_forward(backbone, prompt, batches: list[dict]) -> int:
    """The frozen model's forward pass over pre-collated batches with ``prompt`` (n, D) (or
    None) in front: embedding lookup, concatenation, encoder. Returns the tokens computed."""
    import torch

    model, emb = backbone.model, backbone.input_embeddings
    tokens = 0
    with torch.inference_mode():
        for b in batches:
            x, mask, types = emb(b["input_ids"]), b["attention_mask"], b["token_type_ids"]
            if prompt is not None:
                n, B = prompt.shape[0], x.shape[0]
                x = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), x], 1)
                mask = torch.cat([mask.new_ones(B, n), mask], 1)
                types = torch.cat([types.new_zeros(B, n), types], 1)
            model(inputs_embeds=x, attention_mask=mask, token_type_ids=types)
            tokens += mask.numel()
    return tokens


def encoder_params(backbone) -> int:
    """Parameters the matmuls use per token: everything but the embedding tables."""
    model = backbone.model
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return sum(p.numel() for p in model.parameters()) - emb


# --- 1. scoring_vs_bare ----------------------------------------------------------------------


def scoring_vs_bare(opts) -> list[Bench]:
    name = "scoring_vs_bare"
    if why := shared_missing([TARGET]):
        return [Bench(name, None, status="SKIP", detail=why)]
    from prompt_core.data import load_task_folder
    from prompt_core.evaluation import EncodedSplit, evaluate_prompts

    n, k = (64, 2) if opts.quick else (200, 3)
    backbone = _setup(opts.threads)
    task = load_task_folder(SHARED / TARGET)
    prompts = _prompts(backbone, k)
    enc0 = EncodedSplit(backbone, task, "test", 128, n)
    batches = sorted_batches(enc0, 64)
    enc0.evaluate(prompts[0])  # warm-up, both paths
    bare_forward(backbone, prompts[0], batches)

    def scorer() -> float:  # tokenises the target once, then scores every prompt
        t0 = time.perf_counter()
        out = evaluate_prompts(backbone, task, dict(enumerate(prompts)), split="test",
                               batch_size=64, max_length=128, max_examples=n)
        seconds = time.perf_counter() - t0
        assert all(r["n_examples"] == n for r in out.values()), out
        return seconds

    def bare() -> float:
        t0 = time.perf_counter()
        for p in prompts:
            bare_forward(backbone, p, batches)
        return time.perf_counter() - t0

    ts, tb = alternate(scorer, bare, opts.reps, name)
    ratio, per = paired(tb, ts)  # throughput scorer / bare = bare seconds / scorer seconds
    ex = n * k
    return [Bench(name, ratio, ">=0.95", per,
                  f"{TARGET} test {n} examples x {k} prompts of {N_TOKENS} tokens, batch 64, "
                  f"{opts.threads} torch threads: scorer {ex / med(ts):.1f} examples/s "
                  f"(s {secs(ts)}), bare forward {ex / med(tb):.1f} examples/s (s {secs(tb)})")]


# --- 2. evaluate_unit_vs_bare ----------------------------------------------------------------


def evaluate_unit_vs_bare(opts) -> list[Bench]:
    name = "evaluate_unit_vs_bare"
    k = 2 if opts.quick else 5  # source tasks besides the target
    if why := shared_missing([TARGET, *SOURCES[:k]]):
        return [Bench(name, None, status="SKIP", detail=why)]
    from prefect.logging import disable_run_logger

    from prompt_core.config import EvalConfig, ModelConfig, TaskConfig, TrainConfig
    from prompt_core.data import load_task_folder
    from prompt_core.evaluation import EncodedSplit
    from prompt_core.prompts import init_prompt
    from tasks.units import RunContext, evaluate_target_unit, prepare_nlp_task, train_prompt_unit

    n = 32 if opts.quick else 128
    backbone = _setup(opts.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-evalunit-", dir=opts.workdir))
    data = tmp / "data"
    folders = [capped_task(data, TARGET, 64, n)]
    folders += [capped_task(data, s, 64, 16) for s in SOURCES[:k]]
    ctx = RunContext(str(tmp / "store"), "bench", "setup", torch_threads=opts.threads)
    model = ModelConfig(kind="encoder")
    train = TrainConfig(steps=2, eval_every=2, batch_size=8, n_tokens=N_TOKENS,
                        max_dev_examples=16)
    evaluation = EvalConfig()
    log(f"{name}: training {len(folders)} prompts (2 steps each, not timed)")
    with disable_run_logger():
        infos = [prepare_nlp_task.fn(ctx, TaskConfig(path=str(f)), f.name) for f in folders]
        rows = [train_prompt_unit.fn(ctx, model, info, train, 0).row for info in infos]
    target, own = infos[0], {0: rows[0]}

    # the bare side: the same examples (the whole capped test split) and the same sources
    # (k + 1 prompts, the random prompt, no prompt), in the unit's batches
    from tasks.storage import open_storage
    from tasks.units import load_stored_prompt

    storage = open_storage(ctx.storage_root)
    sources = [load_stored_prompt(storage, r, backbone.hidden_size) for r in rows]
    sources += [init_prompt("random", backbone, N_TOKENS, 0, std=train.init_std), None]
    enc = EncodedSplit(backbone, load_task_folder(folders[0]), "test", 128)
    assert len(enc) == n
    batches = sorted_batches(enc, evaluation.batch_size)
    runs = iter(range(10_000))

    def unit() -> float:
        rep = RunContext(ctx.storage_root, f"bench-{next(runs)}", "run",  # a fresh partition
                         torch_threads=opts.threads)
        t0 = time.perf_counter()
        with disable_run_logger():
            out = evaluate_target_unit.fn(rep, model, target, own, rows, train, evaluation)
        seconds = time.perf_counter() - t0
        assert out.n_cells_evaluated == len(sources), out
        return seconds

    def bare() -> float:
        t0 = time.perf_counter()
        for p in sources:
            bare_forward(backbone, p, batches)
        return time.perf_counter() - t0

    with disable_run_logger():  # warm-up of every code path: a source task as the target
        evaluate_target_unit.fn(ctx, model, infos[1], {0: rows[1]}, rows, train, evaluation)
    bare_forward(backbone, sources[0], batches[:1])
    tu, tb = alternate(unit, bare, opts.reps, name)
    ratio, per = paired(tb, tu)
    return [Bench(name, ratio, ">=0.95", per,
                  f"target {TARGET} test {n} examples x {len(sources)} sources ({k + 1} "
                  f"prompts, random, none): unit s {secs(tu)}, bare forward s {secs(tb)}")]


# --- 3. training_vs_bare -----------------------------------------------------------------------


def _train_rate(backbone, task, cfg, seed: int = 0) -> float:
    """Seconds from step 1 to the last step of ``train_prompt`` (steps 2..N)."""
    from prompt_core.training import train_prompt

    stamps: dict[int, float] = {}
    train_prompt(backbone, task, cfg, seed=seed,
                 on_step=lambda step, total: stamps.__setitem__(step, time.perf_counter()))
    return stamps[cfg.steps] - stamps[1]


def bare_train_steps(backbone, batches: list[dict]) -> int:
    """Forward + backward to a prompt (n, D) over pre-collated batches; the tokens computed."""
    import torch

    model, emb = backbone.model, backbone.input_embeddings
    prompt = torch.nn.Parameter(torch.randn(N_TOKENS, backbone.hidden_size) * 0.02)
    tokens = 0
    for b in batches:
        x, mask, types = emb(b["input_ids"]), b["attention_mask"], b["token_type_ids"]
        B = x.shape[0]
        x = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), x], 1)
        mask = torch.cat([mask.new_ones(B, N_TOKENS), mask], 1)
        types = torch.cat([types.new_zeros(B, N_TOKENS), types], 1)
        out = model(inputs_embeds=x, attention_mask=mask, token_type_ids=types)
        out.last_hidden_state.float().pow(2).mean().backward()
        prompt.grad = None
        tokens += mask.numel()
    return tokens


def _train_batches(backbone, task, cfg, seed: int = 0) -> list[dict]:
    """The batches ``train_prompt`` draws at steps 2..N (same generator, same seed)."""
    from prompt_core.evaluation import EncodedSplit
    from prompt_core.training import train_batches

    train = EncodedSplit(backbone, task, "train", cfg.max_length)
    gen = train_batches(cfg, train, np.random.default_rng(seed))
    idx = [next(gen) for _ in range(cfg.steps)][1:]
    return [train.batch(i)[0] for i in idx]


def training_vs_bare(opts) -> list[Bench]:
    name = "training_vs_bare"
    if why := shared_missing([TARGET]):
        return [Bench(name, None, status="SKIP", detail=why)]
    from prompt_core.config import TrainConfig
    from prompt_core.data import load_task_folder

    steps, rows = (6, 256) if opts.quick else (30, 1000)
    backbone = _setup(opts.threads)
    data = Path(tempfile.mkdtemp(prefix="bench-train-", dir=opts.workdir))
    # fewer training rows keep the untimed tokenisation short
    task = load_task_folder(capped_task(data, TARGET, rows, 16))
    cfg = TrainConfig(steps=steps, eval_every=steps, batch_size=16, n_tokens=N_TOKENS,
                      max_dev_examples=16)
    batches = _train_batches(backbone, task, cfg)

    def train() -> float:
        return _train_rate(backbone, task, cfg)

    def bare() -> float:
        t0 = time.perf_counter()
        bare_train_steps(backbone, batches)
        return time.perf_counter() - t0

    train()  # warm-up: every batch shape once, both ways
    bare()

    tt, tb = alternate(train, bare, opts.reps, name)
    ratio, per = paired(tb, tt)
    ex = (steps - 1) * cfg.batch_size
    return [Bench(name, ratio, ">=0.95", per,
                  f"{TARGET} train, {steps - 1} timed steps x batch 16 (bucketed): train_prompt "
                  f"{ex / med(tt):.1f} examples/s (s {secs(tt)}), bare forward+backward "
                  f"{ex / med(tb):.1f} examples/s (s {secs(tb)})")]


# --- 4. matmul_peak_fraction ---------------------------------------------------------------------


def matmul_gflops(size: int, repeats: int = 4) -> float:
    """Best fp32 GFLOP/s of ``size`` x ``size`` matmuls (2 n^3 flops each), after a warm-up."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_peak_fraction(opts) -> list[Bench]:
    name = "matmul_peak_fraction"
    if why := shared_missing([TARGET]):
        return [Bench(name, None, status="SKIP", detail=why)]
    from prompt_core.config import TrainConfig
    from prompt_core.data import load_task_folder
    from prompt_core.evaluation import EncodedSplit

    n, steps, size = (64, 4, 1536) if opts.quick else (200, 12, 2048)
    backbone = _setup(opts.threads)
    params = encoder_params(backbone)
    data = Path(tempfile.mkdtemp(prefix="bench-peak-", dir=opts.workdir))
    task = load_task_folder(capped_task(data, TARGET, 256 if opts.quick else 1000, n))
    enc = EncodedSplit(backbone, task, "test", 128)
    prompt = _prompts(backbone, 1)[0]
    score_tokens = sum(b["attention_mask"].numel() + N_TOKENS * b["attention_mask"].shape[0]
                       for b in sorted_batches(enc, 64))
    score_real = int(enc.lengths.sum()) + N_TOKENS * len(enc)
    cfg = TrainConfig(steps=steps, eval_every=steps, batch_size=16, n_tokens=N_TOKENS,
                      max_dev_examples=16)
    train_tokens = sum(b["attention_mask"].numel() + N_TOKENS * b["attention_mask"].shape[0]
                       for b in _train_batches(backbone, task, cfg))
    enc.predict(prompt)  # warm-up
    peak, score, train = [], [], []
    for i in range(opts.reps):
        peak.append(matmul_gflops(size))
        t0 = time.perf_counter()
        enc.predict(prompt)
        score.append(2 * params * score_tokens / (time.perf_counter() - t0) / 1e9)
        train.append(4 * params * train_tokens / _train_rate(backbone, task, cfg) / 1e9)
        log(f"{name} rep {i + 1}/{opts.reps}: peak {peak[-1]:.1f}, scoring {score[-1]:.1f}, "
            f"training {train[-1]:.1f} GFLOP/s")
    fs, per_s = paired(score, peak)
    ft, per_t = paired(train, peak)
    what = (f"fp32 matmul peak {med(peak):.1f} GFLOP/s ({size}x{size}, {opts.threads} torch "
            f"threads); P = {params / 1e6:.2f}M encoder-layer parameters")
    return [
        Bench(f"{name}_scoring", fs, "report", per_s,
              f"{what}; scoring {med(score):.1f} GFLOP/s = 2*P*T, T = {score_tokens} padded "
              f"tokens ({score_real} real) for {len(enc)} {TARGET} test examples, 1 prompt"),
        Bench(f"{name}_training", ft, "report", per_t,
              f"{what}; training {med(train):.1f} GFLOP/s = 4*P*T (forward 2PT + backward "
              f"2PT: frozen weights, no weight gradients; the 6PT convention would read 1.5x "
              f"higher), T = {train_tokens} padded tokens over {steps - 1} steps x batch 16"),
    ]


BENCHMARKS = {
    "scoring_vs_bare": scoring_vs_bare,
    "evaluate_unit_vs_bare": evaluate_unit_vs_bare,
    "training_vs_bare": training_vs_bare,
    "matmul_peak_fraction": matmul_peak_fraction,
}


def main() -> None:  # for development: one benchmark without the suite
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(BENCHMARKS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.workdir = None
    for b in BENCHMARKS[args.name](args):
        print(b.line(), "#", b.detail)


if __name__ == "__main__":
    main()
