"""Flow overhead on tiny studies, every side a fresh process with its own timed wall clock:

* ``run_vs_direct_tiny``: ``prompt-transfer run`` (the CLI: checks, an ephemeral Prefect API,
  the flow, artifacts) on a tiny study vs the same units called directly (``.fn``) in a fresh
  process (``tests/benchmarks/bench_direct.py``), each on a fresh storage root. Full size: the
  issue's reference, the MiniLM on 4 real tasks capped small (``REAL_TINY_TASKS``); ``--quick``:
  a tiny random BERT on keyword tasks. The detail gives the fixed cost in seconds.
* ``noop_rerun`` uses a tiny random BERT and small keyword task folders in the format of
  ../shared/data: a finished study of N tasks (default 200: 200 prompts, 200 x 202 cells); a
  rerun that finds everything stored (``prompt-transfer run``) vs ``prompt-transfer status`` on
  the same study: ``noop_rerun_vs_status_N`` (rerun seconds / status seconds),
  ``noop_rerun_N_seconds`` and ``noop_rerun_N_peak_rss_gb`` (the CLI process's peak RSS from
  ``wait4``; the detail adds the peak of the CLI plus its Prefect server, sampled), and the
  same at a smaller N (default 50) to show how they grow with N. The stored state is laid out
  beforehand, not timed, by the units called directly in two processes (bench_direct.py
  ``--part``), which costs a fraction of a first run through the flow; one untimed rerun per
  N comes before the timed ones.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmarks.bench_common import (
    PROMPT_TRANSFER,
    Bench,
    alternate,
    capped_task,
    child_env,
    log,
    med,
    paired,
    run_timed,
    secs,
    shared_missing,
    tiny_model,
    tiny_study,
    tiny_task,
    warm_prefect_home,
    write_study,
)

DIRECT = str(Path(__file__).with_name("bench_direct.py"))


def _direct_result(output: str) -> dict:
    return json.loads(output.split("RESULT ", 1)[1].splitlines()[0])


def _cli_counts(output: str) -> tuple[int, int]:
    """(prompts trained, cells evaluated) from ``prompt-transfer run``'s last lines."""
    m = re.search(r"prompts trained (\d+), reused \d+; cells evaluated (\d+)", output)
    if m is None:
        raise RuntimeError(f"prompt-transfer run printed no counts:\n{output[-2000:]}")
    return int(m[1]), int(m[2])


# --- 6. run_vs_direct_tiny ---------------------------------------------------------------------


REAL_TINY_TASKS = ["sst2", "tweeteval_sentiment", "ag_news", "qnli"]


def run_vs_direct_tiny(opts) -> list[Bench]:
    """Full size: the issue's own reference, a tiny study of the real model (45 s through the
    CLI against 28.5 s of direct calls): the MiniLM on 4 real tasks capped at 64 training and
    32 validation and test rows, 20 steps (dev every 10). ``--quick``: 3 keyword tasks on a
    tiny random BERT, 4 steps, where the fixed cost is nearly all there is."""
    name = "run_vs_direct_tiny"
    tmp = Path(tempfile.mkdtemp(prefix="bench-tiny-", dir=opts.workdir))
    if opts.quick:
        n_tasks = 3
        model = tiny_model(tmp)
        dirs = [tiny_task(tmp / "tasks", f"task{i}", n_train=48, n_eval=16)
                for i in range(n_tasks)]
        study = tiny_study("tiny", dirs, model)
        study["training"].update(steps=4, eval_every=2)
        what = f"{n_tasks} keyword tasks, tiny random BERT, 4 training steps"
    else:
        if why := shared_missing(REAL_TINY_TASKS):
            return [Bench(name, None, status="SKIP", detail=why)]
        n_tasks = len(REAL_TINY_TASKS)
        dirs = [capped_task(tmp / "tasks", t, 64, 32) for t in REAL_TINY_TASKS]
        study = tiny_study("tiny", dirs, "")
        study["models"] = [{"kind": "encoder", "name": "minilm"}]
        study["training"].update(steps=20, eval_every=10, n_tokens=20, max_dev_examples=32)
        study["runner"] = {"torch_threads": opts.threads}
        what = f"MiniLM, {n_tasks} real tasks (64/32/32 rows), 20 training steps"
    study_file = write_study(tmp / "tiny.yaml", study)
    home = tmp / "prefect-home"
    warm_prefect_home(home)
    env = child_env(home)
    roots = iter(range(1000))
    expected = (n_tasks, n_tasks * (n_tasks + 2))

    def cli() -> float:
        root = tmp / f"cli-{next(roots)}"
        t = run_timed([PROMPT_TRANSFER, "run", str(study_file), "--storage", str(root)], env)
        assert _cli_counts(t.output) == expected, t.output[-2000:]
        shutil.rmtree(root)
        return t.seconds

    def direct() -> float:
        root = tmp / f"direct-{next(roots)}"
        t = run_timed([sys.executable, DIRECT, str(study_file), "--storage", str(root)], env)
        got = _direct_result(t.output)
        assert (got["trained"], got["evaluated"]) == expected, got
        shutil.rmtree(root)
        return t.seconds

    ta, tb = alternate(cli, direct, opts.reps, name)
    ratio, per = paired(ta, tb)
    return [Bench(name, ratio, "<=1.2", per,
                  f"{what}, {expected[1]} cells: prompt-transfer run s {secs(ta)}, direct unit "
                  f"calls s {secs(tb)}, fixed cost {med(ta) - med(tb):.1f} s")]


# --- 7. noop_rerun ----------------------------------------------------------------------------


def lay_out(tmp: Path, n: int, model: str, env: dict[str, str]) -> tuple[Path, Path]:
    """A finished n-task tiny study: its file and its storage root (units called directly in
    two processes: prepare + train, then evaluate)."""
    tasks = [tiny_task(tmp / "tasks", f"t{i:03d}") for i in range(n)]
    root = tmp / f"store-{n}"
    study_file = write_study(tmp / f"noop-{n}.yaml",
                             tiny_study(f"noop{n}", tasks, model, storage=root))
    for phase in ("train", "evaluate"):
        procs = [subprocess.Popen([sys.executable, DIRECT, str(study_file), "--storage",
                                   str(root), "--phase", phase, "--part", f"{i}/2"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for i in range(2)]
        for p in procs:
            out, _ = p.communicate()
            if p.returncode:
                raise RuntimeError(f"bench_direct.py --phase {phase} failed:\n{out[-3000:]}")
    return study_file, root


def noop_rerun(opts) -> list[Bench]:
    big = opts.n_tasks or (40 if opts.quick else 200)
    small = opts.n_tasks_small or (10 if opts.quick else 50)
    tmp = Path(tempfile.mkdtemp(prefix="bench-noop-", dir=opts.workdir))
    model = tiny_model(tmp)
    home = tmp / "prefect-home"
    warm_prefect_home(home)
    env = child_env(home)
    out: list[Bench] = []
    figures = {}
    for n in sorted({small, big}):
        t0 = time.perf_counter()
        study_file, root = lay_out(tmp, n, model, env)
        log(f"noop_rerun: {n} tasks laid out in {time.perf_counter() - t0:.0f} s (not timed)")
        # one untimed rerun first (the study's first runs row; first writes of this Prefect
        # database), so every timed rerun finds the same state
        first = run_timed([PROMPT_TRANSFER, "run", str(study_file)], env)
        assert _cli_counts(first.output) == (0, 0), first.output[-2000:]
        rss, tree = [], []

        def rerun(rss=rss, tree=tree, study_file=study_file) -> float:
            t = run_timed([PROMPT_TRANSFER, "run", str(study_file)], env, sample_tree=True)
            assert _cli_counts(t.output) == (0, 0), t.output[-2000:]
            rss.append(t.maxrss_gb)
            tree.append(t.tree_peak_gb)
            return t.seconds

        def status(study_file=study_file) -> float:
            t = run_timed([PROMPT_TRANSFER, "status", str(study_file)], env)
            assert "every unit is stored" in t.output, t.output[-2000:]
            return t.seconds

        ta, tb = alternate(rerun, status, opts.reps, f"noop_rerun N={n}")
        figures[n] = (ta, tb, rss, tree)
        if n != big and not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    for n in sorted(figures, reverse=True):
        ta, tb, rss, tree = figures[n]
        ratio, per = paired(ta, tb)
        main = n == big
        cells = n * (n + 2)
        out += [
            Bench(f"noop_rerun_vs_status_{n}", ratio, "<=3" if main else "report", per,
                  f"{n} tasks ({n} prompts, {cells} cells stored): rerun s {secs(ta)}, "
                  f"status s {secs(tb)}"),
            Bench(f"noop_rerun_{n}_seconds", med(ta), "<=60" if main else "report", ta,
                  f"prompt-transfer run finding all {n} prompts and {cells} cells stored"),
            Bench(f"noop_rerun_{n}_peak_rss_gb", med(rss), "<=1.5" if main else "report", rss,
                  f"the CLI process (wait4); with its Prefect server (sampled) "
                  f"{'/'.join(f'{x:.2f}' for x in tree)} GB"),
        ]
    if small != big:
        (ta, _, rss, _), (sa, _, srss, _) = figures[big], figures[small]
        slope = (med(ta) - med(sa)) / (big - small)
        out.append(Bench(f"noop_rerun_peak_rss_growth_{small}_to_{big}", med(rss) / med(srss),
                         "report", [], f"peak RSS at N={big} / at N={small} (1.0 = flat in N)"))
        if big < 200 and slope >= 0:
            out.append(Bench("noop_rerun_200_seconds_extrapolated", med(ta) + slope * (200 - big),
                             "report", [], f"linear from N={small} ({med(sa):.1f} s) and "
                             f"N={big} ({med(ta):.1f} s): {slope:.3f} s per task (a floor if "
                             "the cost grows faster than N)"))
    return out


BENCHMARKS = {"run_vs_direct_tiny": run_vs_direct_tiny, "noop_rerun": noop_rerun}
