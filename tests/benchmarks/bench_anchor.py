"""``anchor_per_cell_KxK``: the paper's official way of computing a cross-task matrix vs this
project's flow, on the same prompts and the same examples.

Set-up (not timed): K tasks of ../shared/data copied with their splits capped (data order
kept: ``--anchor-examples`` test and validation rows, 256 training rows), one MiniLM prompt
trained per task (10 steps; 4 with ``--quick``) by the prepare and train units called directly
(``.fn``) into a template storage root, each prompt also saved as a ``.pt`` file and each
task's verbalizer (label words, pooling, temperature) as JSON for the official side.

* A, the official way (METHOD.md; thunlp/Prompt-Transferability): one OS process per (source
  prompt, target task) cell, K x K of them one after the other
  (``tests/benchmarks/bench_anchor_cell.py``: load the model, tokenise the target split padded
  to max_length 128 in data order, score).
* B, ours: ``run_study`` in a fresh process on a copy of the template root, where the prompts
  are stored and no cross_task cell is: the flow prepares (stored), finds the prompts, computes
  the K x K matrix (plus its random-prompt and no-prompt rows, bootstrap intervals, predictions)
  and publishes the run. The run must report K x (K + 2) cells evaluated and 0 prompts trained.

Both sides' accuracies must agree within 1e-6 for every cell (else the line is an ERROR);
the ratio is A's seconds / B's seconds, median of the paired repetitions.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from tests.benchmarks.bench_common import (
    REPO,
    Bench,
    alternate,
    capped_task,
    child_env,
    log,
    med,
    paired,
    python_cmd,
    run_timed,
    secs,
    shared_missing,
    warm_prefect_home,
    write_study,
)

TASKS = ["sst2", "tweeteval_sentiment", "tweeteval_emotion", "restaurant", "mrpc", "qnli",
         "snli", "ag_news"]
STUDY = "anchor"
CELL = str(Path(__file__).with_name("bench_anchor_cell.py"))
RUN_STUDY = ("import json, sys\n"
             "from flows.transfer_matrix import run_study\n"
             "r = run_study(sys.argv[1], storage=sys.argv[2])\n"
             "print('RESULT ' + json.dumps({'trained': r.n_prompts_trained, 'evaluated': "
             "r.n_cells_evaluated, 'status': r.status, 'seconds': r.seconds}))\n")


def _setup(tmp: Path, k: int, cap: int, steps: int, threads: int
           ) -> tuple[Path, Path, list[dict]]:
    """Task folders, the study file, the template root with the prompts; per task: its
    folder, its prompt .pt and its verbalizer JSON."""
    import torch
    from prefect.logging import disable_run_logger

    from prompt_core.config import load_study
    from prompt_core.data import load_task_folder
    from tasks.storage import open_storage
    from tasks.units import RunContext, load_stored_prompt, prepare_nlp_task, train_prompt_unit

    folders = [capped_task(tmp / "data", t, 256, cap) for t in TASKS[:k]]
    study_file = write_study(tmp / "anchor.yaml", {
        "name": STUDY,
        "models": [{"kind": "encoder"}],
        "tasks": [{"path": str(f)} for f in folders],
        "training": {"steps": steps, "eval_every": steps, "batch_size": 16,
                     "max_dev_examples": cap},
        "runner": {"torch_threads": threads},
    })
    study = load_study(study_file)
    template = tmp / "template"
    ctx = RunContext(str(template), STUDY, "setup", torch_threads=threads)
    model = study.models[0]
    options = model.identity()["options"]
    log(f"anchor: training {k} prompts ({steps} steps each; set-up, not timed)")
    cells = []
    with disable_run_logger():
        for cfg, folder in zip(study.tasks, folders, strict=True):
            info = prepare_nlp_task.fn(ctx, cfg, cfg.label())
            row = train_prompt_unit.fn(ctx, model, info, study.training, 0).row
            pt = tmp / "official" / f"{folder.name}.pt"
            pt.parent.mkdir(exist_ok=True)
            torch.save(load_stored_prompt(open_storage(str(template)), row), pt)
            verbalizer = pt.with_suffix(".json")
            verbalizer.write_text(json.dumps({
                "label_words": list(load_task_folder(folder).spec.label_words),
                "pool": options["pool"], "temperature": options["temperature"]}))
            cells.append({"task": folder.name, "folder": folder, "prompt": pt,
                          "verbalizer": verbalizer})
    return study_file, template, cells


def _our_accuracies(root: Path) -> tuple[dict, dict]:
    """(source, target) -> accuracy and -> predicted label ids, from the run's tables."""
    from tasks.storage import open_storage
    from tasks.tables import read_table

    storage = open_storage(str(root))
    rows = read_table(storage, "cross_task", filters={"study": STUDY}).to_pandas()
    rows = rows[(rows.source_kind == "prompt") & (rows.metric == "accuracy")]
    acc = {(r.source_task, r.target_task): r.score for r in rows.itertuples()}
    preds = read_table(storage, "cross_task_predictions", filters={"study": STUDY}).to_pandas()
    preds = preds[preds.source_kind == "prompt"]
    pred = {(r.source_task, r.target_task): list(r.predicted) for r in preds.itertuples()}
    return acc, pred


def anchor_per_cell(opts) -> list[Bench]:
    k = opts.anchor_tasks or (2 if opts.quick else 8)
    cap = opts.anchor_examples or (8 if opts.quick else 16)
    name = f"anchor_per_cell_{k}x{k}"
    if why := shared_missing(TASKS[:k]):
        return [Bench(name, None, status="SKIP", detail=why)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-anchor-", dir=opts.workdir))
    steps = 4 if opts.quick else 10
    study_file, template, cells = _setup(tmp, k, cap, steps, opts.threads)
    home = tmp / "prefect-home"
    log(f"anchor: prompts trained; Prefect database created in {warm_prefect_home(home):.0f} s")
    env = child_env(home)
    reps = iter(range(1000))
    ours_acc: list[dict] = []
    ours_pred: list[dict] = []
    official: list[dict] = []

    def ours() -> float:
        root = tmp / f"ours-{next(reps)}"
        shutil.copytree(template, root)
        t = run_timed(python_cmd(RUN_STUDY, str(study_file), str(root)), env)
        result = json.loads(t.output.split("RESULT ", 1)[1].splitlines()[0])
        assert result["trained"] == 0 and result["evaluated"] == k * (k + 2), result
        acc, pred = _our_accuracies(root)
        ours_acc.append(acc)
        ours_pred.append(pred)
        shutil.rmtree(root)
        return t.seconds

    def anchor() -> float:
        total, acc, pred = 0.0, {}, {}
        for src in cells:
            for tgt in cells:
                out = tmp / "cell.json"
                t = run_timed([sys.executable, CELL, "--model", _minilm_dir(),
                               "--prompt", str(src["prompt"]), "--task", str(tgt["folder"]),
                               "--verbalizer", str(tgt["verbalizer"]), "--out", str(out),
                               "--threads", str(opts.threads)], env, cwd=REPO)
                total += t.seconds
                res = json.loads(out.read_text())
                acc[src["task"], tgt["task"]] = res["accuracy"]
                pred[src["task"], tgt["task"]] = res["predicted"]
        official.append({"acc": acc, "pred": pred})
        return total

    ta, tb = alternate(anchor, ours, opts.reps, name)
    ratio, per = paired(ta, tb)
    worst, flips, n_pred = 0.0, 0, 0
    for o in official:
        for acc, pred in zip(ours_acc, ours_pred, strict=True):
            for key, a in o["acc"].items():
                worst = max(worst, abs(a - acc[key]))
                flips += sum(x != y for x, y in zip(o["pred"][key], pred[key], strict=True))
                n_pred += len(pred[key])
    detail = (f"{k} tasks x {cap} test examples: {k * k} official cell processes s "
              f"{secs(ta)} (median {med(ta) / (k * k):.2f} s per cell), our run_study "
              f"({k * (k + 2)} cells incl. random and none rows) s {secs(tb)}; accuracies "
              f"max |diff| {worst:.2g}, {flips} of {n_pred} predictions differ")
    if worst > 1e-6:
        return [Bench(name, ratio, ">=5", per, f"accuracies differ (ratio {ratio:.2f}): "
                      + detail, status="ERROR")]
    return [Bench(name, ratio, ">=5", per, detail)]


def _minilm_dir() -> str:
    from prompt_core.backbone_kinds import MINILM_ID, resolve_model_path

    return resolve_model_path(MINILM_ID)


BENCHMARKS = {"anchor_per_cell": anchor_per_cell}
