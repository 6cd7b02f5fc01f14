"""Prefect tasks: one per unit of work of the transfer-matrix study.

Naming: an *NLP task* (SST-2, MNLI...) is called ``nlp_task`` here; a *Prefect task* is one of
the ``@task`` functions below. Tasks receive ids, configs and URIs (a :class:`RunContext`),
never models or tensors; the frozen backbone and the task data are loaded (once per process)
inside.

Every unit has a deterministic key: the hash of the *content* that decides its result (model
identity or a local model folder's fingerprint, NLP task name + data fingerprint, training or
evaluation config, init prompt file hash, seed), never a file location (:mod:`tasks.keys`). A
unit checks only its own part: a prompt its ``prompts`` part (named by the prompt key) and its
prompt file; a target its own ``cross_task`` partition directory. Damaged files count as
absent: they are moved to ``_quarantine/`` (reported by path) and recomputed. Prefect's result
cache is not used (NO_CACHE): the tables are the cache.

The records passed between stages live in :mod:`tasks.unit_records`, the keys in
:mod:`tasks.keys`, the per-process loading and stored-row checks in :mod:`tasks.unit_io`; they
are re-exported here, where the stages and tests import them from.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prompt_core.backbones import resolve_device
from prompt_core.cell_stats import METRICS, N_BOOT, cell_statistics
from prompt_core.config import EvalConfig, ModelConfig, TaskConfig, TrainConfig, stable_hash
from prompt_core.data import TaskDataError, task_to_parquet
from prompt_core.errors import InputError
from prompt_core.evaluation import EncodedSplit
from prompt_core.preflight import read_prompt_bytes
from prompt_core.prompts import init_prompt, prompt_from_bytes, prompt_to_bytes
from prompt_core.training import train_prompt
from tasks.claims import ClaimWaitStopped, default_owner, log_wait, unit_claim
from tasks.gpu import gpu_slot
from tasks.integrity import quarantine_key
from tasks.keys import (
    KEY_VERSION,
    cell_key,
    eval_config_key,
    model_identity,
    prompt_key,
    prompt_storage_key,
    random_source_key,
    task_data_key,
    train_config_key,
)
from tasks.storage import Storage, StorageError
from tasks.tables import (
    CellRow,
    CurveRow,
    PredictionRow,
    PromptRow,
    now_utc,
    part_path,
    read_parts,
    write_part,
)
from tasks.unit_io import (
    get_backbone,
    get_nlp_task,
    intact_prompt_meta,
    load_stored_prompt,
    nlp_task_info,
    read_init_prompt,
    stored_prompt_row,
    stored_row,
    stored_task_cached,
    task_data,
)
from tasks.unit_records import Cell, EvalOutcome, NlpTaskInfo, RunContext, TrainOutcome

__all__ = [  # what other modules import from here (re-exported from the modules above)
    "KEY_VERSION", "METRICS", "N_BOOT", "Cell", "EvalOutcome", "NlpTaskInfo", "RunContext",
    "TrainOutcome", "cell_key", "eval_config_key", "evaluate_target_unit", "get_backbone",
    "get_nlp_task", "intact_prompt_meta", "load_stored_prompt", "model_identity",
    "nlp_task_info", "plan_cells", "prepare_nlp_task", "prompt_key", "prompt_storage_key",
    "random_source_key", "read_init_prompt", "read_prompt_bytes", "stored_prompt_row",
    "stored_row", "task_data", "task_data_key", "train_config_key", "train_prompt_unit",
    "unit_task",
]

ROW_FIELDS = {f.name for f in dataclasses.fields(PromptRow)}
# source prompts scored in one forward pass (batch_size x K rows): on a GPU, where MiniLM-sized
# passes are launch-bound, 4; on a CPU one, whose GEMMs are already large (K rows more only add
# memory traffic: 0.87x the bare one-prompt forward in make bench), so the unit runs the bare
# forward's own shapes
PROMPTS_PER_PASS = {"cuda": 4, "cpu": 1}


def _is_disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _retry_transient_only(task, task_run, state) -> bool:
    """Retry transient failures (a dropped connection, a busy server), never bad input or a
    full disk, which would fail again."""
    try:
        state.result()
    except (InputError, ClaimWaitStopped):  # bad input; a run told to stop while it waited
        return False
    except Exception as exc:  # noqa: BLE001
        return not _is_disk_full(exc)
    return False


unit_task = functools.partial(
    task, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
    retry_condition_fn=_retry_transient_only,
)


# --- Prefect tasks --------------------------------------------------------------------------


@unit_task(task_run_name="prepare {cfg_label}")
def prepare_nlp_task(ctx: RunContext, cfg: TaskConfig, cfg_label: str) -> NlpTaskInfo:
    """Load and validate one NLP task where the study names it (a local folder, a built-in
    task, the hub) and copy it into storage as one Parquet file named by its fingerprint, so
    the units read it from there wherever they run. An intact copy is kept, a damaged one
    replaced."""
    info = dataclasses.replace(nlp_task_info(cfg), label=cfg_label)
    storage = ctx.storage()
    key = task_data_key(info.name, info.fingerprint)
    if storage.exists(key):
        try:
            stored_task_cached(ctx.storage_root, key)
            return dataclasses.replace(info, data_key=key)
        except (TaskDataError, StorageError) as exc:
            stored_task_cached.cache_clear()
            quarantine_key(storage, key, str(exc))
    storage.write_bytes(key, task_to_parquet(get_nlp_task(cfg)))
    return dataclasses.replace(info, data_key=key)


@unit_task(task_run_name="train {model.name}/{info.name} seed={seed}")
def train_prompt_unit(
    ctx: RunContext,
    model: ModelConfig,
    info: NlpTaskInfo,
    train: TrainConfig,
    seed: int,
) -> TrainOutcome:
    """Train one soft prompt (model x NLP task x seed) unless it is already stored.

    Done means: this study's ``prompts`` part for the key is readable and the prompt file
    loads. A prompt file with the same key trained by another study (same content key) is
    reused, not retrained or overwritten: only this study's row is written. Otherwise the
    prompt (safetensors carrying its row as metadata, + .json) and its ``training_curves``
    part are written, then the ``prompts`` part last, so its presence means complete.
    """
    storage = ctx.storage()
    init_bytes, init_sha = read_init_prompt(train)
    cfg_key = train_config_key(model, train, init_sha)
    key = prompt_key(cfg_key, info, seed)
    skey = prompt_storage_key(model.name, info.name, key)
    found = _stored_prompt(storage, ctx, model.name, key, skey, train.n_tokens)
    if found is not None:
        return found
    # claimed while computed: a second run (or worker) of the same prompt waits for this one
    # and reads its result; a crashed holder's claim expires (tasks/claims.py)
    label = f"train {model.name}/{info.name} seed={seed}"
    part = part_path("prompts", {"study": ctx.study, "model": model.name}, key)
    with unit_claim(storage, f"prompt-{key}", default_owner(ctx.run_id),
                    is_done=lambda: storage.exists(part), on_wait=log_wait(label)):
        found = _stored_prompt(storage, ctx, model.name, key, skey, train.n_tokens)
        if found is not None:  # stored by the run we waited for
            return found
        return _train_and_store(ctx, storage, model, info, train, seed, key, cfg_key, skey,
                                init_bytes, init_sha)


def _stored_prompt(storage: Storage, ctx: RunContext, model: str, key: str, skey: str,
                   n_tokens: int) -> TrainOutcome | None:
    """The prompt if stored: this study's row and an intact file; or a file another study
    trained with the same content key, reused (only this study's row is written)."""
    meta = intact_prompt_meta(storage, skey, key, n_tokens)
    row = stored_prompt_row(storage, ctx, model, key) if meta else None
    if row is not None:
        return TrainOutcome(row, skey, trained=False)
    if meta is not None and ROW_FIELDS <= meta.keys():  # another study's file: reuse it
        row = PromptRow(**{**{f: meta[f] for f in ROW_FIELDS}, "study": ctx.study,
                           "created_at": now_utc()})
        write_part(storage, "prompts", [row], key)
        return TrainOutcome(row, skey, trained=False)
    return None


def _train_and_store(ctx: RunContext, storage: Storage, model: ModelConfig, info: NlpTaskInfo,
                     train: TrainConfig, seed: int, key: str, cfg_key: str, skey: str,
                     init_bytes: bytes | None, init_sha: str | None) -> TrainOutcome:
    """Train the prompt and write it: prompt file (+ JSON), curve, then the ``prompts`` part
    last, so its presence means complete."""
    logger = get_run_logger()
    ctx.use_torch_threads()
    device = resolve_device(ctx.device)  # InputError (not retried) when the GPU is missing
    backbone = get_backbone(model, device)
    td = task_data(ctx, info)
    lr = model.learning_rate(train)
    label = f"train {model.name}/{info.name} seed={seed}"
    init = None
    if init_bytes is not None:
        init, _ = prompt_from_bytes(init_bytes, train.init_prompt, backbone.hidden_size,
                                    train.n_tokens)

    def log_dev(step: int, s: dict[str, float]) -> None:  # to the task run's logs in the UI
        logger.info("%s: step %d/%d dev accuracy %.3f, macro-F1 %.3f", label, step,
                    train.steps, s["accuracy"], s["macro_f1"])

    with gpu_slot(device, ctx.trainings_per_gpu):  # one training per card unless asked
        result = train_prompt(backbone, td, train, seed=seed, lr=lr, init=init,
                              bf16=ctx.bf16, on_eval=log_dev)
    now = now_utc()
    row = PromptRow(
        prompt_key=key, config_key=cfg_key, model=model.name,
        model_id=model.model_id, backbone_kind=model.kind, hidden_size=backbone.hidden_size,
        task=info.name, task_type=info.type, task_fingerprint=info.fingerprint, seed=seed,
        n_tokens=train.n_tokens, init=train.init, init_prompt_sha=init_sha, steps=train.steps,
        lr=lr, batch_size=train.batch_size, best_step=result.best_step,
        dev_accuracy=result.best_scores["accuracy"],
        dev_macro_f1=result.best_scores["macro_f1"], train_seconds=result.seconds,
        prompt_uri=storage.uri(skey), study=ctx.study, run_id=ctx.run_id, created_at=now,
    )
    meta = {**asdict(row), "created_at": now.isoformat(),  # the row, then what made it
            "train_config": train.model_dump(), "model_identity": model_identity(model),
            "dev_scores": result.best_scores}
    storage.write_bytes(skey, prompt_to_bytes(result.prompt, meta))
    storage.write_json(skey.removesuffix(".safetensors") + ".json", meta)
    curve = [CurveRow(prompt_key=key, model=model.name, task=info.name, seed=seed,
                      study=ctx.study, run_id=ctx.run_id, created_at=now, **asdict(c))
             for c in result.curve]
    write_part(storage, "training_curves", curve, key)
    write_part(storage, "prompts", [row], key)
    logger.info("%s: best dev accuracy %.3f at step %d (%.1fs)", label,
                result.best_scores["accuracy"], result.best_step, result.seconds)
    return TrainOutcome(row, skey, trained=True)


def plan_cells(config_key: str, target: NlpTaskInfo, own: dict[int, PromptRow],
               sources: list[PromptRow], seeds: list[int], train: TrainConfig,
               evaluation: EvalConfig) -> list[Cell]:
    """Every cell of one target column: each source prompt, then random and none per seed."""
    cells = [Cell(cell_key(config_key, s.prompt_key, target, own[s.seed].prompt_key, s.seed),
                  "prompt", s.seed, s) for s in sources]
    for seed in seeds:
        if evaluation.random_prompt:
            cells.append(Cell(cell_key(config_key, random_source_key(train, seed), target,
                                       own[seed].prompt_key, seed), "random", seed))
        if evaluation.no_prompt:
            cells.append(Cell(cell_key(config_key, "none", target, own[seed].prompt_key, seed),
                              "none", seed))
    return cells


@unit_task(task_run_name="evaluate {model.name} -> {target.name}")
def evaluate_target_unit(
    ctx: RunContext,
    model: ModelConfig,
    target: NlpTaskInfo,
    own: dict[int, PromptRow],
    sources: list[PromptRow],
    train: TrainConfig,
    evaluation: EvalConfig,
) -> EvalOutcome:
    """Score every source prompt (+ random and no-prompt rows) on one target NLP task.

    ``own`` maps seed -> the target's own prompt: the denominator of ``relative_score``
    (stored as ``target_prompt_key``). One Prefect task per (model, target): the target split
    is tokenised once and the model loaded once for all its cells. Stored cells are read from
    the target's own partition directory only; the new cells go into one Parquet part there,
    named by the hash of their keys.
    """
    storage = ctx.storage()
    seeds = sorted(own)
    missing = [s.seed for s in sources if s.seed not in own]
    if missing:
        raise ValueError(f"target {target.name!r} has no own prompt for seed(s) {missing}")
    # the own prompts carry the training config key: no need to re-read the init prompt file
    config_key = eval_config_key(own[seeds[0]].config_key, evaluation)
    cells = plan_cells(config_key, target, own, sources, seeds, train, evaluation)

    where = {"study": ctx.study, "model": model.name, "target_task": target.name}
    all_keys = [c.key for c in cells]
    quarantined: list[str] = []

    def stored_cells():
        """(the partition's cross_task rows, the cells not done, the keys with rows of every
        metric, the keys with a predictions row): a cell is done when it has both."""
        stored, damaged = read_parts(storage, "cross_task", where)
        quarantined.extend(quarantine_key(storage, k, why) for k, why in damaged)
        preds, damaged = read_parts(storage, "cross_task_predictions", where)
        quarantined.extend(quarantine_key(storage, k, why) for k, why in damaged)
        df = stored.to_pandas()
        complete = df.groupby("cell_key")["metric"].nunique()
        rows_done = set(complete[complete == len(METRICS)].index)
        preds_done = set(preds.column("cell_key").to_pylist())
        todo = [c for c in cells if c.key not in rows_done or c.key not in preds_done]
        return df, todo, rows_done, preds_done

    stored_df, todo, _, _ = stored_cells()
    if not todo:
        return EvalOutcome(model.name, target.name, all_keys, 0, len(cells), None, quarantined)
    # claimed while computed (per study: each study writes its own partition); a second run
    # waits, then scores only what is still missing
    label = f"evaluate {model.name} -> {target.name}"
    with unit_claim(storage, f"cells-{stable_hash([ctx.study, sorted(all_keys)])}",
                    default_owner(ctx.run_id), is_done=lambda: not stored_cells()[1],
                    poll_s=2.0, on_wait=log_wait(label)):
        stored_df, todo, rows_done, preds_done = stored_cells()
        if not todo:
            return EvalOutcome(model.name, target.name, all_keys, 0, len(cells), None,
                               quarantined)
        return _score_and_store(ctx, storage, model, target, own, train, evaluation,
                                config_key, cells, stored_df, todo, quarantined,
                                rows_done, preds_done)


def _stored_references(stored_df, cells: list[Cell], scored: dict, refs: set) -> dict:
    """source id -> metric -> (score, score_low) from the stored rows of the reference cells
    (``refs``: own prompts, no prompt) that were not scored now (``scored``)."""
    out = {}
    for c in cells:
        if c.source_id in refs and c.source_id not in scored:
            rows = stored_df[stored_df["cell_key"] == c.key].itertuples()
            out[c.source_id] = {r.metric: (r.score, r.score_low) for r in rows}
    return out


def _score_and_store(ctx: RunContext, storage: Storage, model: ModelConfig,
                     target: NlpTaskInfo, own: dict[int, PromptRow], train: TrainConfig,
                     evaluation: EvalConfig, config_key: str, cells: list[Cell], stored_df,
                     todo: list[Cell], quarantined: list[str], rows_done: set[str],
                     preds_done: set[str]) -> EvalOutcome:
    """Score the missing cells of one target and write them: the predictions of those without
    a ``cross_task_predictions`` row as one part there, then the rows of those without
    ``cross_task`` rows as one part there (last: rows present mean the predictions are too;
    a cell stored before predictions were kept is rescored for its predictions only). The
    rows' statistics are :func:`prompt_core.cell_stats.cell_statistics` of the predictions
    (reference cells not rescored: their stored rows)."""
    all_keys = [c.key for c in cells]
    ctx.use_torch_threads()
    backbone = get_backbone(model, resolve_device(ctx.device))
    backbone.check_lengths(train.n_tokens, evaluation.max_length)
    td = task_data(ctx, target)
    enc = EncodedSplit(backbone, td, evaluation.split, evaluation.max_length,
                       evaluation.max_examples, bf16=ctx.bf16)
    prompts: dict[tuple[str, int], Any] = {}  # source id -> its prompt (n, D), None: none
    for c in todo:
        if c.source_id in prompts:
            continue
        if c.kind == "prompt":
            skey = prompt_storage_key(model.name, c.source.task, c.source.prompt_key)
            prompts[c.source_id], _ = prompt_from_bytes(
                storage.read_bytes(skey), storage.uri(skey), backbone.hidden_size,
                train.n_tokens)
        elif c.kind == "random":
            prompts[c.source_id] = init_prompt("random", backbone, train.n_tokens, c.seed,
                                               std=train.init_std)
        else:
            prompts[c.source_id] = None
    # several prompts per forward pass on a GPU (identical predictions, fewer passes)
    got, got_preds = enc.evaluate_many(
        list(prompts.values()), evaluation.batch_size, return_predictions=True,
        prompts_per_pass=PROMPTS_PER_PASS.get(backbone.device.type, 1))
    scores = dict(zip(prompts, got, strict=True))  # source id -> metric -> score
    preds = dict(zip(prompts, got_preds, strict=True))  # source id -> predicted ids (N,)

    # each seed's references, as source ids: the own prompt (the denominator of
    # relative_score) and no prompt (transfer_gain)
    own_sources = {seed: next(c for c in cells if c.kind == "prompt" and c.source is not None
                              and c.source.prompt_key == rec.prompt_key
                              and c.seed == seed).source_id for seed, rec in own.items()}
    none_sources = {c.seed: c.source_id for c in cells if c.kind == "none"}
    stats = cell_statistics(
        {c.source_id: c.seed for c in todo if c.key not in rows_done}, preds, enc.labels,
        enc.n_labels, own=own_sources, none=none_sources, scores=scores,
        stored=_stored_references(stored_df, cells, scores,
                                  {*own_sources.values(), *none_sources.values()}),
        metrics=METRICS, n_boot=N_BOOT)
    now = now_utc()
    rows = []
    for c in todo:
        if c.key in rows_done:  # stored before; only its predictions were missing
            continue
        src = c.source
        for metric in METRICS:
            st = stats[c.source_id, metric]
            rows.append(CellRow(
                cell_key=c.key, config_key=config_key, model=model.name,
                source_task=src.task if src else None, source_kind=c.kind,
                source_prompt_key=src.prompt_key if src else None,
                source_task_type=src.task_type if src else None, target_task=target.name,
                target_task_type=target.type, target_prompt_key=own[c.seed].prompt_key,
                same_type=(src.task_type == target.type) if src else None, metric=metric,
                score=st.score, relative_score=st.relative_score, n_examples=len(enc),
                seed=c.seed, eval_split=evaluation.split, study=ctx.study, run_id=ctx.run_id,
                created_at=now, score_low=st.score_low, score_high=st.score_high,
                transfer_gain=st.transfer_gain,
            ))
    need_preds = [c for c in todo if c.key not in preds_done]
    if need_preds:
        gold = enc.labels.tolist()
        write_part(storage, "cross_task_predictions", [PredictionRow(
            cell_key=c.key, config_key=config_key, model=model.name, source_kind=c.kind,
            source_task=c.source.task if c.source else None,
            source_prompt_key=c.source.prompt_key if c.source else None,
            target_task=target.name, target_prompt_key=own[c.seed].prompt_key, seed=c.seed,
            eval_split=evaluation.split, n_examples=len(enc), n_labels=enc.n_labels,
            predicted=[int(p) for p in preds[c.source_id]], gold=gold, study=ctx.study,
            run_id=ctx.run_id, created_at=now) for c in need_preds],
            stable_hash(sorted(c.key for c in need_preds)))
    need_rows = [c for c in todo if c.key not in rows_done]
    uri = None
    if rows:
        uri = write_part(storage, "cross_task", rows,
                         stable_hash(sorted(c.key for c in need_rows)))
    get_run_logger().info("evaluate %s -> %s: %d cell(s) scored on %d examples, %d stored "
                          "before", model.name, target.name, len(todo), len(enc),
                          len(cells) - len(todo))
    return EvalOutcome(model.name, target.name, all_keys, len(todo), len(cells) - len(todo),
                       uri, quarantined)
