"""Helpers shared by the flow, CLI and bad-input tests: small keyword task folders, study
dicts on tiny models, call counters."""

from __future__ import annotations

import json
import threading
from pathlib import Path

POS = ["great", "wonderful", "superb", "lovely", "excellent", "delightful"]
NEG = ["awful", "terrible", "dreadful", "horrible", "boring", "poor"]
DEV_EVALS = 3  # dev evaluations per trained prompt in study_dict: steps 0, 2 and 4
THINGS = ["film", "meal", "phone", "hotel", "book", "show", "car", "song"]


def write_task(root: Path, name: str, type_: str, pair: bool = False, n: int = 48) -> Path:
    """A small keyword task folder (jsonl) with balanced labels."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    labels = ["no", "yes"] if pair else ["negative", "positive"]
    (d / "task.json").write_text(json.dumps({"name": name, "type": type_,
                                             "label_names": labels}))
    for split, size in (("train", n), ("validation", 16), ("test", 16)):
        rows = []
        for i in range(size):
            lab = i % 2
            word = (POS if lab else NEG)[(i // 2) % 6]
            thing = THINGS[(i * 7 + len(split) + len(name) + ord(name[-1])) % 8]
            if pair:
                rows.append({"text_a": f"the {thing} number {i} was {word}",
                             "text_b": f"was it {POS[i % 6]}?", "label": lab})
            else:
                rows.append({"text_a": f"a {word} {thing}, take {i} of {split}", "text_b": None,
                             "label": lab})
        (d / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


class Counter:
    """Thread-safe call counter wrapped around a function."""

    def __init__(self, fn):
        self.fn, self.n, self.lock = fn, 0, threading.Lock()

    def __call__(self, *a, **k):
        with self.lock:
            self.n += 1
        return self.fn(*a, **k)


def study_dict(tasks_root: Path, names: list[str], storage: str, model_path: str) -> dict:
    types = {"pos_a": "sentiment", "pos_b": "sentiment", "pair_c": "nli", "pos_d": "sentiment"}
    return {
        "name": "t-study",
        "storage": storage,
        "models": [{"kind": "encoder", "name": "tiny", "model_id": model_path}],
        "tasks": [{"path": str(tasks_root / n), "type": types[n]} for n in names],
        "training": {"steps": 4, "batch_size": 8, "eval_every": 2, "n_tokens": 4, "lr": 0.05},
        "evaluation": {"batch_size": 8},
        "runner": {"torch_threads": 1},  # tiny models run fastest on one thread
    }


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}


def task_run_names(flow_run_id: str) -> list[str]:
    """The names of the task runs a flow run created, sorted (from the Prefect API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(t.name for t in runs)
