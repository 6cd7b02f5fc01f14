"""The benchmark suite (``make bench``): speed ratios of the project against bare baselines and
against other ways of doing the same work, one ``BENCH`` line per figure:

    BENCH <name> ratio=<x> goal=<op><y> PASS|MISS     (a goal)
    BENCH <name> ratio=<x> goal=report                (reported only)
    BENCH <name> SKIP (<why>)   /   BENCH <name> ERROR (<what>)

For a seconds or GB figure ``ratio=`` holds that value. Every ratio is measured side by side
in one run: the two sides alternate (A B, B A, ...) and the line gives the median of the
per-repetition ratios (``--reps``, default 3). Each benchmark runs in a child process of its
own (and starts further processes where a fresh one matters: CLI runs, peak RSS, the official
per-cell processes); its progress goes to stderr, the lines come at the end on stdout, each
followed by a ``#`` line of detail, and with ``--json FILE`` also as JSON.

    .venv/bin/python tests/benchmarks/bench_suite.py [--only NAME,...] [--reps 3] [--quick]
        [--json FILE] [--n-tasks 200] [--anchor-tasks 8] [--anchor-examples 16] [--keep]

The benchmarks (docs/benchmarks.md says what each measures; --only takes these names or any
line name that starts with one):
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_common import BASE_ENV, REPO, SHARED, Bench, log  # noqa: E402

# name -> (module, needs ../shared/data, one line of what it is)
BENCHMARKS: dict[str, tuple[str, bool, str]] = {
    "scoring_vs_bare": ("bench_compute", True,
                        "project scorer vs bare frozen forward, same batches (>= 0.95)"),
    "evaluate_unit_vs_bare": ("bench_compute", True,
                              "whole evaluate unit vs bare forward, same examples (>= 0.95)"),
    "training_vs_bare": ("bench_compute", True,
                         "prompt-training steps vs bare forward+backward (>= 0.95)"),
    "matmul_peak_fraction": ("bench_compute", True,
                             "scoring and training GFLOP/s / fp32 matmul peak (report)"),
    "anchor_per_cell": ("bench_anchor", True,
                        "official process-per-cell matrix vs our flow (>= 5)"),
    "run_vs_direct_tiny": ("bench_rerun", False,
                           "prompt-transfer run vs direct unit calls, tiny study (<= 1.2)"),
    "noop_rerun": ("bench_rerun", False,
                   "no-op rerun vs status, seconds and peak RSS at N tasks (<= 3, 60 s, 1.5 GB)"),
    "dask_vs_threads": ("bench_dask", False, "--runner dask vs threads, 2 workers (<= 1.10)"),
}
__doc__ += "".join(f"\n* ``{k}``: {v[2]}" for k, v in BENCHMARKS.items()) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(f"  {k}: {v[2]}" for k, v in BENCHMARKS.items()))
    ap.add_argument("--only", default="", help="comma-separated benchmarks (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="A/B repetitions per ratio (median)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (whole suite < 10 min)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                    help="torch threads of the compute benchmarks (default: the cores)")
    ap.add_argument("--n-tasks", type=int, help="noop_rerun: N (default 200, --quick 40)")
    ap.add_argument("--n-tasks-small", type=int,
                    help="noop_rerun: the smaller N it also measures (default 50, --quick 10)")
    ap.add_argument("--anchor-tasks", type=int, help="anchor_per_cell: K (default 8, --quick 2)")
    ap.add_argument("--anchor-examples", type=int,
                    help="anchor_per_cell: test and validation examples per task (default 16, "
                    "--quick 8)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--workdir", help="where temporary folders go (default: the system's)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one benchmark
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def selected(only: str) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = []
    for want in (w.strip() for w in only.split(",") if w.strip()):
        hits = [k for k in BENCHMARKS if want == k or want.startswith(k)]
        if not hits:
            raise SystemExit(f"unknown benchmark {want!r}; known: {', '.join(BENCHMARKS)}")
        names += [h for h in hits if h not in names]
    return names


def child_argv(args: argparse.Namespace) -> list[str]:
    """The options a benchmark's child process gets (all but --only, --json, --child*)."""
    argv = ["--reps", str(args.reps), "--threads", str(args.threads)]
    for opt in ("n_tasks", "n_tasks_small", "anchor_tasks", "anchor_examples", "workdir"):
        if getattr(args, opt) is not None:
            argv += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    return argv + ["--quick"] * args.quick + ["--keep"] * args.keep


def run_child(args: argparse.Namespace) -> None:
    """In the child process: run one benchmark, write its results as JSON."""
    os.environ.update(BASE_ENV)
    module = importlib.import_module(f"tests.benchmarks.{BENCHMARKS[args.child][0]}")
    # every temporary folder of the benchmark goes under one, removed at the end (--keep: kept)
    args.workdir = tempfile.mkdtemp(prefix=f"bench-{args.child}-", dir=args.workdir)
    try:
        results = module.BENCHMARKS[args.child](args)
    finally:
        if args.keep:
            log(f"{args.child}: its files are kept in {args.workdir}")
        else:
            shutil.rmtree(args.workdir, ignore_errors=True)
    Path(args.child_out).write_text(json.dumps([r.to_json() for r in results]))


def run_one(name: str, argv: list[str], timeout: float) -> list[dict]:
    """One benchmark in a child process; an ERROR line when it fails."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = {**os.environ, **BASE_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                      os.environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "tests.benchmarks.bench_suite", *argv, "--child", name,
           "--child-out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr)
    try:
        code = proc.wait(timeout=timeout)
    except BaseException as exc:  # the timeout or Ctrl-C: stop it and all it started
        code = "timeout" if isinstance(exc, subprocess.TimeoutExpired) else "interrupted"
        kill_tree(proc)
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
    seconds = time.perf_counter() - t0
    try:
        results = json.loads(out.read_text()) if code == 0 else []
    finally:
        out.unlink(missing_ok=True)
    if not results:
        why = (f"no result within --timeout {timeout:.0f} s" if code == "timeout" else
               f"the benchmark exited {code} after {seconds:.0f} s; its output above says why")
        bench = Bench(name, None, status="ERROR", detail=why)
        results = [bench.to_json()]
    for r in results:
        r["benchmark"], r["benchmark_seconds"] = name, round(seconds, 1)
    log(f"{name}: done in {seconds:.0f} s")
    return results


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a benchmark's child process and every process under it (servers it started in
    sessions of their own included)."""
    import psutil

    try:
        procs = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.Error:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    names = selected(args.only)
    t0 = time.perf_counter()
    results = []
    try:
        for name in names:
            if BENCHMARKS[name][1] and not (SHARED / "sst2" / "task.json").is_file():
                results.append(Bench(name, None, status="SKIP",
                                     detail=f"needs ../shared/data at {SHARED}").to_json())
                log(results[-1]["line"])
                continue
            log(f"{name}: {BENCHMARKS[name][2]}")
            results += run_one(name, child_argv(args), args.timeout)
    except KeyboardInterrupt:
        log("interrupted: the lines of the benchmarks that finished")
    total = time.perf_counter() - t0
    print(f"\n# {len(names)} benchmark(s) in {total / 60:.1f} min "
          f"({'quick' if args.quick else 'full'} sizes, {args.reps} repetitions, load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    for r in results:
        print(r["line"])
        if r.get("detail") and r["status"] not in ("SKIP", "ERROR"):
            print(f"#   {r['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": round(total, 1), "quick": args.quick,
                                               "reps": args.reps, "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
