"""A study's units called directly (the Prefect tasks' ``.fn``), without a flow, a task runner
or a Prefect API: prepare every task, train every prompt, evaluate every (model, target), in
this process, one after the other, the way the flow plans them (the target's own prompt per
seed as the denominator, every prompt of the model as a source). No check_study, no runs /
run_keys rows, no artifacts: the units' own work only. Prints ``RESULT {json}`` with the
counts.

    python tests/benchmarks/bench_direct.py STUDY.yaml --storage ROOT [--part I/N]
        [--phase all|train|evaluate]

``--part I/N`` does only every N-th unit starting at I (0-based) of the phase's own stage
(prepare + train with ``--phase train``, evaluate with ``--phase evaluate``; the evaluate phase
prepares and finds every prompt first, which the train phase must have stored): N processes
with the parts 0/N .. N-1/N lay out a study's stored state in parallel
(``bench_rerun.py``'s set-up).
"""

from __future__ import annotations

import argparse
import json
import uuid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--storage", required=True)
    ap.add_argument("--part", default="0/1")
    ap.add_argument("--phase", choices=("all", "train", "evaluate"), default="all")
    args = ap.parse_args()
    i, n = (int(x) for x in args.part.split("/"))

    from prefect.logging import disable_run_logger

    from prompt_core.config import load_study
    from tasks.units import RunContext, evaluate_target_unit, prepare_nlp_task, train_prompt_unit

    study = load_study(args.study)
    ctx = RunContext(args.storage, study.name, uuid.uuid4().hex, study.runner.device,
                     study.runner.bf16, study.runner.trainings_per_gpu,
                     study.runner.torch_threads or 1)

    def mine(j: int) -> bool:
        return j % n == i

    def prepare_mine(j: int) -> bool:  # the evaluate phase needs every task and prompt
        return args.phase != "train" or mine(j)

    counts = {"prepared": 0, "trained": 0, "found": 0, "evaluated": 0, "cached": 0}
    with disable_run_logger():
        infos = []
        for j, cfg in enumerate(study.tasks):
            if prepare_mine(j):
                infos.append(prepare_nlp_task.fn(ctx, cfg, cfg.label()))
                counts["prepared"] += 1
        rows = []
        for m in study.models:
            for info in infos:
                for seed in study.seeds:
                    out = train_prompt_unit.fn(ctx, m, info, study.training, seed)
                    counts["trained" if out.trained else "found"] += 1
                    rows.append(out.row)
        if args.phase != "train":
            for m in study.models:
                sources = [r for r in rows if r.model == m.name]
                for j, info in enumerate(infos):
                    if args.phase == "evaluate" and not mine(j):
                        continue
                    own = {r.seed: r for r in sources if r.task == info.name}
                    out = evaluate_target_unit.fn(ctx, m, info, own, sources, study.training,
                                                  study.evaluation)
                    counts["evaluated"] += out.n_cells_evaluated
                    counts["cached"] += out.n_cells_cached
    print("RESULT " + json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
