"""``dask_vs_threads``: the same small study (full size: the MiniLM on 4 capped real tasks;
``--quick``: a tiny random BERT) run by ``prompt-transfer run`` with
``--runner dask --workers 2`` (a local Dask cluster of 2 worker processes) vs ``--runner threads
--workers 2``, each on a fresh storage root, both against one ``prefect server`` started for the
benchmark (Dask workers report to it through PREFECT_API_URL; tests/prefect_server.py starts it
and stops it, and all it started, at the end). Ratio: dask seconds / threads seconds, median of
the paired repetitions; both runs must train and evaluate the same units.
"""

from __future__ import annotations

import re
import shutil
import tempfile
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
    write_study,
)

DASK_TASKS = ["sst2", "tweeteval_sentiment", "ag_news", "qnli"]


def dask_vs_threads(opts) -> list[Bench]:
    """Full size: the MiniLM on 4 real tasks capped at 128 training and 64 validation and test
    rows, 40 training steps (the issue measured the demo, 201 s with threads). ``--quick``: 3
    keyword tasks on a tiny random BERT, 10 steps, where worker start-up is nearly all."""
    name = "dask_vs_threads"
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-", dir=opts.workdir))
    if opts.quick:
        n_tasks, steps = 3, 10
        model = tiny_model(tmp)
        dirs = [tiny_task(tmp / "tasks", f"task{i}", n_train=64, n_eval=32)
                for i in range(n_tasks)]
        study = tiny_study("dask", dirs, model)
        what = f"{n_tasks} keyword tasks, tiny random BERT, {steps} training steps"
    else:
        if why := shared_missing(DASK_TASKS):
            return [Bench(name, None, status="SKIP", detail=why)]
        n_tasks, steps = len(DASK_TASKS), 40
        dirs = [capped_task(tmp / "tasks", t, 128, 64) for t in DASK_TASKS]
        study = tiny_study("dask", dirs, "")
        study["models"] = [{"kind": "encoder", "name": "minilm"}]
        study["training"].update(n_tokens=20, max_dev_examples=64)
        what = f"MiniLM, {n_tasks} real tasks (128/64/64 rows), {steps} training steps"
    study["training"].update(steps=steps, eval_every=steps // 2)
    study_file = write_study(tmp / "dask.yaml", study)
    expected = f"prompts trained {n_tasks}, reused 0; cells evaluated {n_tasks * (n_tasks + 2)}"

    from tests.prefect_server import prefect_server

    log(f"{name}: starting a prefect server")
    with prefect_server(tmp / "server") as server:
        env = child_env(None, **{k: v for k, v in server.env.items()
                                 if k in ("PREFECT_HOME", "PREFECT_API_URL")})
        roots = iter(range(1000))

        def run(runner: str) -> float:
            root = tmp / f"{runner}-{next(roots)}"
            t = run_timed([PROMPT_TRANSFER, "run", str(study_file), "--storage", str(root),
                           "--runner", runner, "--workers", "2"], env)
            got = re.search(r"prompts trained .*", t.output)
            assert got and got[0].startswith(expected), t.output[-2000:]
            shutil.rmtree(root)
            return t.seconds

        run("threads")  # warm-up: the server's first flow run, file caches
        td, tt = alternate(lambda: run("dask"), lambda: run("threads"), opts.reps, name)
    ratio, per = paired(td, tt)
    return [Bench(name, ratio, "<=1.10", per,
                  f"{what}, 2 workers, prefect server: dask s {secs(td)}, threads s "
                  f"{secs(tt)}, Dask's extra {med(td) - med(tt):.1f} s")]


BENCHMARKS = {"dask_vs_threads": dask_vs_threads}
