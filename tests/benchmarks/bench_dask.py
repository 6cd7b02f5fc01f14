"""``dask_vs_threads``: the same small tiny-model study run by ``prompt-transfer run`` with
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
    child_env,
    log,
    paired,
    run_timed,
    secs,
    tiny_model,
    tiny_study,
    tiny_task,
    write_study,
)


def dask_vs_threads(opts) -> list[Bench]:
    name = "dask_vs_threads"
    n_tasks, steps = (3, 10) if opts.quick else (6, 40)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-", dir=opts.workdir))
    model = tiny_model(tmp)
    dirs = [tiny_task(tmp / "tasks", f"task{i}", n_train=64, n_eval=32) for i in range(n_tasks)]
    study = tiny_study("dask", dirs, model)
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
                  f"{n_tasks} tiny tasks x {steps} training steps, 2 workers, prefect server: "
                  f"dask s {secs(td)}, threads s {secs(tt)}")]


BENCHMARKS = {"dask_vs_threads": dask_vs_threads}
