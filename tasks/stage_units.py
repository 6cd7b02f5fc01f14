"""Prefect tasks of the cross-model and transferable-prompt-tuning stages.

Same rules as :mod:`tasks.units`: units receive ids, configs and rows (never models or
tensors), every unit has a content key, a unit whose part is stored is skipped, parts are
written last (their presence means complete), and a unit is claimed while it computes so a
second run waits and reads the result.

* ``project <src>-><tgt> [<objective>] seed=<s>``: train one projector (table ``projectors``,
  file ``projectors/<src>/<tgt>/<key>.safetensors``).
* ``cross-model <src>-><tgt> -> <task>``: score every projected (and, where the hidden sizes
  match, unprojected) source prompt on one target task of the target model (table
  ``cross_model``, one partition per target model and task).
* ``tpt <model>/<target> <- <source>``: train the target's prompt from a source prompt (of the
  same model, or projected from another) and compare its dev curve with random init under the
  same budget (table ``tpt``; the prompt and its curve go to storage and ``training_curves``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import get_run_logger

from prompt_core.analysis import tpt_metrics
from prompt_core.backbones import resolve_device
from prompt_core.cell_stats import cell_statistics
from prompt_core.config import (
    EvalConfig,
    ModelConfig,
    ProjectorConfig,
    TptConfig,
    TrainConfig,
    stable_hash,
)
from prompt_core.evaluation import EncodedSplit
from prompt_core.projectors import (
    OBJECTIVES,
    ProjectorFileError,
    project,
    projector_from_bytes,
    projector_to_bytes,
)
from prompt_core.prompts import PromptFileError, prompt_to_bytes
from prompt_core.training import train_prompt
from tasks.claims import default_owner, log_wait, unit_claim
from tasks.gpu import gpu_slot
from tasks.integrity import quarantine_key
from tasks.storage import Storage, StorageError, StorageNotFoundError
from tasks.tables import (
    CrossModelRow,
    CurveRow,
    ProjectorRow,
    PromptRow,
    TptRow,
    now_utc,
    part_path,
    read_part,
    read_parts,
    write_part,
)
from tasks.units import (
    KEY_VERSION,
    METRICS,
    N_BOOT,
    NlpTaskInfo,
    RunContext,
    get_backbone,
    load_stored_prompt,
    model_identity,
    prompt_storage_key,
    stored_row,
    task_data,
    train_config_key,
    unit_task,
)


@dataclass
class KeyedOutcome:
    """A single-row unit's result: its row and whether it was computed now."""

    row: Any
    computed: bool


@dataclass
class CrossModelOutcome:
    source_model: str
    target_model: str
    target: str
    cell_keys: list[str]
    n_cells_evaluated: int
    n_cells_cached: int
    quarantined: list[str] = field(default_factory=list)


# --- shared helpers -------------------------------------------------------------------------


def _once(ctx: RunContext, storage: Storage, table: str, where: dict[str, str], key: str,
          label: str, find: Callable[[], Any], compute: Callable[[], Any]) -> KeyedOutcome:
    """A single-row unit: its stored row (``find``), else ``compute`` it under a claim; a
    second run of the same key waits for the holder and then reads its row."""
    found = find()
    if found is not None:
        return KeyedOutcome(found, computed=False)
    with unit_claim(storage, f"{table}-{key}", default_owner(ctx.run_id),
                    is_done=lambda: storage.exists(part_path(table, where, key)),
                    on_wait=log_wait(label)):
        found = find()  # stored by the run we waited for
        if found is not None:
            return KeyedOutcome(found, computed=False)
        return KeyedOutcome(compute(), computed=True)


def projector_storage_key(source_model: str, target_model: str, key: str) -> str:
    return f"projectors/{source_model}/{target_model}/{key}.safetensors"


# --- projectors -----------------------------------------------------------------------------


def projector_key(source: ModelConfig, target: ModelConfig, objective: str,
                  cfg: ProjectorConfig, sources: list[PromptRow], targets: list[PromptRow],
                  infos: list[NlpTaskInfo], seed: int) -> str:
    """Content key of a projector: what it learns from. Distance: the source and target
    prompts (their keys carry models, data and training config). Task tuning: the source
    prompts, the target model's identity and the training tasks' data."""
    learns: dict[str, Any] = {"sources": [r.prompt_key for r in sources]}
    if objective == "distance":
        learns["targets"] = [r.prompt_key for r in targets]
    else:
        learns["target_model"] = model_identity(target)
        learns["tasks"] = [[i.name, i.fingerprint] for i in infos]
    return stable_hash({"v": KEY_VERSION, "objective": objective, "projector": cfg.model_dump(),
                        "learns": learns, "seed": seed})


@unit_task(task_run_name="project {source.name}->{target.name} [{objective}] seed={seed}")
def train_projector_unit(ctx: RunContext, source: ModelConfig, target: ModelConfig,
                         objective: str, cfg: ProjectorConfig, sources: list[PromptRow],
                         targets: list[PromptRow], infos: list[NlpTaskInfo],
                         seed: int) -> KeyedOutcome:
    """Train one projector from ``source``'s prompt space into ``target``'s on the training
    tasks ``infos`` (``sources[i]``, ``targets[i]``: the two models' prompts for ``infos[i]``),
    unless this study's ``projectors`` part for its key is stored."""
    storage = ctx.storage()
    key = projector_key(source, target, objective, cfg, sources, targets, infos, seed)
    where = {"study": ctx.study, "target_model": target.name}
    label = f"project {source.name}->{target.name} [{objective}] seed={seed}"
    return _once(ctx, storage, "projectors", where, key, label,
                 lambda: stored_projector(storage, where, key, source.name, target.name),
                 lambda: _train_projector(ctx, storage, source, target, objective, cfg,
                                          sources, targets, infos, seed, key, label))


def stored_projector(storage: Storage, where: dict[str, str], key: str, source: str,
                      target: str) -> ProjectorRow | None:
    """This study's ``projectors`` row of ``key`` if its part is intact and its projector file
    is there and loads; else None, and the projector is trained again. A damaged file is
    quarantined (with its sidecar); a missing one (quarantined by ``verify`` or an earlier
    run) leaves the row, which the retrained projector's row replaces."""
    row = stored_row(storage, "projectors", where, key, ProjectorRow, "projector_key")
    if row is None:
        return None
    skey = projector_storage_key(source, target, key)
    try:
        projector_from_bytes(storage.read_bytes(skey), storage.uri(skey))
    except StorageNotFoundError:
        return None
    except ProjectorFileError as exc:
        quarantine_key(storage, skey, str(exc))
        return None
    return row


def _train_projector(ctx: RunContext, storage: Storage, source: ModelConfig,
                     target: ModelConfig, objective: str, cfg: ProjectorConfig,
                     sources: list[PromptRow], targets: list[PromptRow],
                     infos: list[NlpTaskInfo], seed: int, key: str, label: str
                     ) -> ProjectorRow:
    ctx.use_torch_threads()
    src_prompts = [load_stored_prompt(storage, r) for r in sources]  # each (n, d_s)
    if objective == "distance":
        pairs = [(p, load_stored_prompt(storage, r))
                 for p, r in zip(src_prompts, targets, strict=True)]
        result = OBJECTIVES["distance"](pairs, cfg, seed=seed)
        target_hidden = targets[0].hidden_size
    else:
        device = resolve_device(ctx.device)
        backbone = get_backbone(target, device)
        tds = [task_data(ctx, i) for i in infos]
        with gpu_slot(device, ctx.trainings_per_gpu):
            result = OBJECTIVES["task"](src_prompts, backbone, tds, cfg, seed=seed,
                                        bf16=ctx.bf16, n_tokens=sources[0].n_tokens)
        target_hidden = backbone.hidden_size
    skey = projector_storage_key(source.name, target.name, key)
    now = now_utc()
    row = ProjectorRow(
        projector_key=key, source_model=source.name, target_model=target.name,
        objective=objective, seed=seed, train_tasks=json.dumps([i.name for i in infos]),
        source_prompt_keys=json.dumps([r.prompt_key for r in sources]),
        target_prompt_keys=(json.dumps([r.prompt_key for r in targets])
                            if objective == "distance" else None),
        source_hidden=sources[0].hidden_size, target_hidden=target_hidden,
        n_tokens=sources[0].n_tokens, hidden=cfg.hidden, activation=cfg.activation,
        layer_norm=cfg.layer_norm, steps=cfg.steps, lr=cfg.lr,
        n_parameters=result.projector.n_parameters, initial_loss=result.initial_loss,
        final_loss=result.final_loss, best_loss=result.best_loss, train_seconds=result.seconds,
        projector_uri=storage.uri(skey), study=ctx.study, run_id=ctx.run_id, created_at=now,
    )
    meta = {**asdict(row), "created_at": now.isoformat(), "projector_config": cfg.model_dump(),
            "losses": result.losses}
    storage.write_bytes(skey, projector_to_bytes(result.projector, meta))
    storage.write_json(skey.removesuffix(".safetensors") + ".json", meta)
    write_part(storage, "projectors", [row], key)
    get_run_logger().info("%s: loss %.4g -> %.4g in %d steps (%.1fs)", label,
                          result.initial_loss, result.final_loss, cfg.steps, result.seconds)
    return row


# --- cross-model evaluation -----------------------------------------------------------------


@dataclass
class CrossModelCell:
    key: str
    objective: str  # distance | task | none
    source: PromptRow
    projector: ProjectorRow | None

    @property
    def source_id(self) -> tuple[str, str]:
        return (self.projector.projector_key if self.projector else "none",
                self.source.prompt_key)


def cross_model_cell_key(target_model: ModelConfig, evaluation: EvalConfig, projector: str,
                         source: PromptRow, target: NlpTaskInfo, own: PromptRow) -> str:
    ev = evaluation.model_dump(include={"split", "max_examples", "max_length"})
    return stable_hash({"v": KEY_VERSION, "model": model_identity(target_model), "eval": ev,
                        "projector": projector, "source": source.prompt_key,
                        "target": [target.name, target.fingerprint], "own": own.prompt_key,
                        "seed": source.seed, "boot": N_BOOT})


def plan_cross_model_cells(target_model: ModelConfig, target: NlpTaskInfo,
                           own: dict[int, PromptRow], sources: list[PromptRow],
                           projectors: list[ProjectorRow], unprojected: bool,
                           evaluation: EvalConfig) -> list[CrossModelCell]:
    """Every source prompt through every projector of its seed, and as is where the hidden
    sizes match (``unprojected``)."""
    cells = []
    for p in projectors:
        for s in sources:
            if s.seed == p.seed:
                cells.append(CrossModelCell(cross_model_cell_key(
                    target_model, evaluation, p.projector_key, s, target, own[s.seed]),
                    p.objective, s, p))
    if unprojected:
        for s in sources:
            if s.hidden_size == own[s.seed].hidden_size and s.n_tokens == own[s.seed].n_tokens:
                cells.append(CrossModelCell(cross_model_cell_key(
                    target_model, evaluation, "none", s, target, own[s.seed]), "none", s, None))
    return cells


@unit_task(task_run_name="cross-model {source.name}->{target_model.name} -> {target.name}")
def evaluate_cross_model_unit(ctx: RunContext, source: ModelConfig, target_model: ModelConfig,
                              target: NlpTaskInfo, own: dict[int, PromptRow],
                              sources: list[PromptRow], projectors: list[ProjectorRow],
                              unprojected: bool, train_tasks: list[str],
                              evaluation: EvalConfig) -> CrossModelOutcome:
    """Score ``source``'s prompts, projected into ``target_model`` by each projector (and as
    is, where they fit), on one target task; relative to the target model's own prompt for
    it (``own``: seed -> row). The target split is tokenised once for all cells."""
    storage = ctx.storage()
    cells = plan_cross_model_cells(target_model, target, own, sources, projectors, unprojected,
                                   evaluation)
    where = {"study": ctx.study, "target_model": target_model.name, "target_task": target.name}
    all_keys = [c.key for c in cells]
    quarantined: list[str] = []

    def todo() -> list[CrossModelCell]:
        stored, damaged = read_parts(storage, "cross_model", where)
        quarantined.extend(quarantine_key(storage, k, why) for k, why in damaged)
        df = stored.to_pandas()
        complete = df.groupby("cell_key")["metric"].nunique()
        done = set(complete[complete == len(METRICS)].index)
        return [c for c in cells if c.key not in done]

    def outcome(n_new: int) -> CrossModelOutcome:
        return CrossModelOutcome(source.name, target_model.name, target.name, all_keys, n_new,
                                 len(cells) - n_new, quarantined)

    if not todo():
        return outcome(0)
    label = f"cross-model {source.name}->{target_model.name} -> {target.name}"
    with unit_claim(storage, f"xm-{stable_hash([ctx.study, sorted(all_keys)])}",
                    default_owner(ctx.run_id), is_done=lambda: not todo(), poll_s=2.0,
                    on_wait=log_wait(label)):
        missing = todo()
        if not missing:
            return outcome(0)
        _score_cross_model(ctx, storage, target_model, target, own, missing, train_tasks,
                           evaluation)
        get_run_logger().info("%s: %d cell(s) scored, %d stored before", label, len(missing),
                              len(cells) - len(missing))
        return outcome(len(missing))


def _score_cross_model(ctx: RunContext, storage: Storage, target_model: ModelConfig,
                       target: NlpTaskInfo, own: dict[int, PromptRow],
                       todo: list[CrossModelCell], train_tasks: list[str],
                       evaluation: EvalConfig) -> None:
    """Predict every missing cell (and the own prompt of each of their seeds) on the target
    split and write their ``cross_model`` rows: the statistics are
    :func:`prompt_core.cell_stats.cell_statistics` of those predictions."""
    ctx.use_torch_threads()
    backbone = get_backbone(target_model, resolve_device(ctx.device))
    enc = EncodedSplit(backbone, task_data(ctx, target), evaluation.split,
                       evaluation.max_length, evaluation.max_examples, bf16=ctx.bf16)
    projectors: dict[str, Any] = {}
    preds: dict[tuple[str, str], Any] = {}
    for c in todo:
        if c.source_id in preds:
            continue
        prompt = load_stored_prompt(storage, c.source)  # (n, d_s)
        if c.projector is not None:
            pk = c.projector.projector_key
            if pk not in projectors:
                skey = projector_storage_key(c.projector.source_model, c.projector.target_model,
                                             pk)
                projectors[pk], _ = projector_from_bytes(storage.read_bytes(skey),
                                                         storage.uri(skey))
            prompt = project(projectors[pk], prompt, c.source.prompt_uri)  # (n, d_t)
        preds[c.source_id] = enc.predict(prompt, evaluation.batch_size)
    own_sources = {seed: ("own prompt", r.prompt_key) for seed, r in own.items()
                   if any(c.source.seed == seed for c in todo)}
    for seed, own_id in own_sources.items():
        own_prompt = load_stored_prompt(storage, own[seed], backbone.hidden_size)
        preds[own_id] = enc.predict(own_prompt, evaluation.batch_size)
    stats = cell_statistics({c.source_id: c.source.seed for c in todo}, preds, enc.labels,
                            enc.n_labels, own=own_sources, metrics=METRICS, n_boot=N_BOOT)
    now = now_utc()
    rows = []
    for c in todo:
        for metric in METRICS:
            st = stats[c.source_id, metric]
            rows.append(CrossModelRow(
                cell_key=c.key, source_model=c.source.model, target_model=target_model.name,
                objective=c.objective,
                projector_key=c.projector.projector_key if c.projector else None,
                source_task=c.source.task, source_task_type=c.source.task_type,
                source_prompt_key=c.source.prompt_key, target_task=target.name,
                target_task_type=target.type, target_prompt_key=own[c.source.seed].prompt_key,
                held_out=c.source.task not in train_tasks and target.name not in train_tasks,
                metric=metric, score=st.score, score_low=st.score_low,
                score_high=st.score_high, relative_score=st.relative_score,
                own_score=st.own_score, n_examples=len(enc), seed=c.source.seed,
                eval_split=evaluation.split, study=ctx.study, run_id=ctx.run_id,
                created_at=now))
    write_part(storage, "cross_model", rows, stable_hash(sorted(c.key for c in todo)))


# --- transferable prompt tuning -------------------------------------------------------------


def tpt_prompt_key(model: ModelConfig, train: TrainConfig, target: NlpTaskInfo,
                   source: PromptRow, projector: ProjectorRow | None, seed: int) -> str:
    """Key of a TPT prompt: the training config, the init (source prompt, and the projector
    that carried it over), the target task's data and the seed."""
    return stable_hash({"v": KEY_VERSION, "train": train_config_key(model, train, None),
                        "init": source.prompt_key,
                        "projector": projector.projector_key if projector else None,
                        "task": [target.name, target.fingerprint], "seed": seed})


def tpt_key(prompt_key: str, baseline: PromptRow, tpt: TptConfig, k: int) -> str:
    return stable_hash({"v": KEY_VERSION, "tpt": prompt_key, "baseline": baseline.prompt_key,
                        "fraction": tpt.fraction, "k": k})


def _curve_points(rows: list[dict]) -> list[tuple[int, float, float]]:
    """(step, elapsed_s, dev_accuracy) of the evaluated steps, by step."""
    pts = {r["step"]: (r["step"], r["elapsed_s"], r["dev_accuracy"]) for r in rows
           if r["dev_accuracy"] is not None}
    return [pts[s] for s in sorted(pts)]


def read_curve(storage: Storage, study: str, row: PromptRow) -> list[tuple[int, float, float]]:
    """A prompt's dev curve from ``training_curves``: this study's part, else the part of the
    study that trained it (named in the prompt file's metadata, for a reused prompt)."""
    studies = [study]
    skey = prompt_storage_key(row.model, row.task, row.prompt_key)
    try:
        meta = storage.read_json(skey.removesuffix(".safetensors") + ".json")
        if meta.get("study") and meta["study"] != study:
            studies.append(meta["study"])
    except (StorageError, ValueError, OSError):
        pass
    for s in studies:
        part = part_path("training_curves", {"study": s, "model": row.model}, row.prompt_key)
        if storage.exists(part):
            rows = read_part(storage, "training_curves", part).to_pylist()
            pts = _curve_points([r for r in rows if r["prompt_key"] == row.prompt_key])
            if pts:
                return pts
    raise StorageError(f"no training curve of prompt {row.prompt_key} ({row.model}/{row.task})"
                       f" in training_curves of study {' or '.join(studies)}")


@unit_task(task_run_name="tpt {model.name}/{target.name} <- {source_label}")
def tpt_unit(ctx: RunContext, model: ModelConfig, target: NlpTaskInfo, source: PromptRow,
             source_label: str, projector: ProjectorRow | None, baseline: PromptRow,
             train: TrainConfig, tpt: TptConfig, seed: int) -> KeyedOutcome:
    """Train ``target``'s prompt on ``model`` starting from ``source`` (projected by
    ``projector`` when it belongs to another model) with a fresh optimiser, and compare its dev
    curve with ``baseline`` (random init, the same ``train`` config)."""
    storage = ctx.storage()
    k = tpt.score_at_step or train.eval_every
    pkey = tpt_prompt_key(model, train, target, source, projector, seed)
    key = tpt_key(pkey, baseline, tpt, k)
    where = {"study": ctx.study, "model": model.name, "target_task": target.name}
    label = f"tpt {model.name}/{target.name} <- {source_label}"
    return _once(ctx, storage, "tpt", where, key, label,
                 lambda: stored_row(storage, "tpt", where, key, TptRow, "tpt_key"),
                 lambda: _train_tpt(ctx, storage, model, target, source, projector, baseline,
                                    train, tpt, seed, pkey, key, k, label))


def _train_tpt(ctx: RunContext, storage: Storage, model: ModelConfig, target: NlpTaskInfo,
               source: PromptRow, projector: ProjectorRow | None, baseline: PromptRow,
               train: TrainConfig, tpt: TptConfig, seed: int, pkey: str, key: str, k: int,
               label: str) -> TptRow:
    ctx.use_torch_threads()
    device = resolve_device(ctx.device)
    backbone = get_backbone(model, device)
    init = load_stored_prompt(storage, source)  # (n, d_source)
    if projector is not None:
        skey = projector_storage_key(projector.source_model, projector.target_model,
                                     projector.projector_key)
        proj, _ = projector_from_bytes(storage.read_bytes(skey), storage.uri(skey))
        init = project(proj, init, source.prompt_uri)  # (n, D)
    if init.shape[1] != backbone.hidden_size:
        raise PromptFileError(f"{source.prompt_uri}: hidden size {init.shape[1]} does not fit "
                              f"{model.name} ({backbone.hidden_size}) and no projector is given")
    base_curve = read_curve(storage, ctx.study, baseline)
    lr = model.learning_rate(train)
    with gpu_slot(device, ctx.trainings_per_gpu):
        result = train_prompt(backbone, task_data(ctx, target), train, seed=seed, lr=lr,
                              init=init, bf16=ctx.bf16)
    curve = [(c.step, c.elapsed_s, c.dev_accuracy) for c in result.curve]
    m = tpt_metrics(curve, base_curve, tpt.fraction, k=k)
    k_used = max(step for step, _, _ in curve if step <= k)  # the evaluation reported
    now = now_utc()
    skey = prompt_storage_key(model.name, target.name, pkey)
    meta = {"prompt_key": pkey, "tpt_key": key, "model": model.name, "task": target.name,
            "seed": seed, "source_prompt_key": source.prompt_key,
            "projector_key": projector.projector_key if projector else None,
            "train_config": train.model_dump(), "model_identity": model_identity(model),
            "best_step": result.best_step, "dev_scores": result.best_scores,
            "study": ctx.study, "run_id": ctx.run_id, "created_at": now.isoformat()}
    storage.write_bytes(skey, prompt_to_bytes(result.prompt, meta))
    storage.write_json(skey.removesuffix(".safetensors") + ".json", meta)
    write_part(storage, "training_curves", [
        CurveRow(prompt_key=pkey, model=model.name, task=target.name, seed=seed,
                 study=ctx.study, run_id=ctx.run_id, created_at=now, **asdict(c))
        for c in result.curve], pkey)
    row = TptRow(
        tpt_key=key, model=model.name, target_task=target.name, target_task_type=target.type,
        source_kind="model" if projector else "task", source_model=source.model,
        source_task=source.task, source_task_type=source.task_type,
        source_prompt_key=source.prompt_key,
        projector_key=projector.projector_key if projector else None, tpt_prompt_key=pkey,
        baseline_prompt_key=baseline.prompt_key, same_type=source.task_type == target.type,
        seed=seed, steps=train.steps, eval_every=train.eval_every, fraction=tpt.fraction,
        score_at_step=k_used, train_seconds=result.seconds, study=ctx.study, run_id=ctx.run_id,
        created_at=now, **m)
    write_part(storage, "tpt", [row], key)
    get_run_logger().info("%s: best dev %.3f (random init %.3f), %s steps to %.0f%% (random "
                          "init %s)", label, row.best_score, row.baseline_best,
                          row.steps_to_target, 100 * tpt.fraction,
                          row.baseline_steps_to_target)
    return row
