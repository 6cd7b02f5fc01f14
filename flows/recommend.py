"""``prompt-transfer recommend``: rank a finished study's source prompts for a new task.

The new task has no row in the matrix: the ranking uses only what is cheap to get for it, its
data. Each of the study's current prompts (one model, one seed) is scored on a seeded sample of
the new task's *train* split (:func:`prompt_core.recommend.probe_scores`), and the sources are
ranked by that score, the method the ``indicators`` stage evaluates leave-one-task-out as
``probe`` (table ``recommendations``). No Prefect run is started and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prompt_core.config import ModelConfig, StudyConfig
from prompt_core.data import TaskData, load_task_folder
from prompt_core.errors import InputError
from tasks.storage import Storage


class RecommendError(InputError):
    """The study has no prompts to recommend, or the model, seed or task is unknown."""


@dataclass
class Recommendation:
    rank: int
    source_task: str
    source_task_type: str
    score: float  # accuracy of the source prompt on the new task's train sample
    prompt_key: str


def resolve_task(study: StudyConfig, task: str) -> tuple[TaskData, bool]:
    """The new task's data: a task folder (``task.json`` + splits), else a task of the study
    by name (then its own prompt is left out of the sources, as in the leave-one-out
    evaluation). Returns (data, whether it is a study task)."""
    from tasks.units import get_nlp_task

    path = Path(task).expanduser()
    if path.is_dir():
        return load_task_folder(path), False
    for cfg in study.tasks:
        if cfg.label() == task:
            return get_nlp_task(cfg), True
    raise RecommendError(f"--task {task!r} is neither a task folder nor a task of study "
                         f"{study.name!r} ({', '.join(c.label() for c in study.tasks)})")


def pick_model(study: StudyConfig, name: str | None) -> ModelConfig:
    if name is None:
        return study.models[0]
    for m in study.models:
        if m.name == name:
            return m
    raise RecommendError(f"--model {name!r} is not a model of study {study.name!r} "
                         f"({', '.join(m.name for m in study.models)})")


def recommend(study: StudyConfig, storage: Storage, task: str, model: str | None = None,
              seed: int | None = None, n_examples: int | None = None, device: str = "cpu"
              ) -> tuple[str, list[Recommendation]]:
    """Rank the study's current prompts of ``model`` (default: the first) and ``seed``
    (default: the first) for ``task``, best first. Returns (the new task's name, ranking)."""
    from prompt_core.backbones import resolve_device
    from prompt_core.recommend import probe_scores, rank_sources
    from tasks.tables import PromptRow, duckdb_connect
    from tasks.units import load_stored_prompt

    m = pick_model(study, model)
    seed = study.seeds[0] if seed is None else seed
    data, in_study = resolve_task(study, task)
    con = duckdb_connect(storage, ["runs", "run_keys", "prompts"])
    df = con.execute("select * from current_prompts where study = ? and model = ? and seed = ?",
                     [study.name, m.name, seed]).df()
    if in_study:
        df = df[df["task"] != data.spec.name]
    if df.empty:
        raise RecommendError(f"study {study.name!r} has no completed run with prompts of model "
                             f"{m.name!r}, seed {seed} under {storage.root}: run it first")
    from tasks.units import get_backbone

    backbone = get_backbone(m, resolve_device(device))
    fields = PromptRow.__dataclass_fields__
    rows = [PromptRow(**{k: v for k, v in r.items() if k in fields})
            for r in df.to_dict("records")]
    prompts = {r.prompt_key: load_stored_prompt(storage, r, backbone.hidden_size) for r in rows}
    n = n_examples or (study.indicators.probe_examples if study.indicators else 64)
    scores = probe_scores(backbone, data, prompts, n, seed=seed,
                          max_length=study.evaluation.max_length)
    by_task = {r.task: r for r in rows}  # one prompt per task (one model, one seed)
    ranked = rank_sources({r.task: scores[r.prompt_key] for r in rows})
    return data.spec.name, [
        Recommendation(i + 1, t, by_task[t].task_type, float(s), by_task[t].prompt_key)
        for i, (t, s) in enumerate(ranked)]
