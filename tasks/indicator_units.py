"""Prefect tasks of the ``indicators`` stage.

Same rules as :mod:`tasks.units`: units receive ids, configs and rows (never models or
tensors), every row has a content key, stored rows are never recomputed, parts are written
last, and a unit is claimed while it computes so a second run waits and reads the result.

* ``indicators <model> seed=<s>``: ES and ON between every pair of the model's prompts of one
  seed (table ``indicators``, one row per pair and indicator). Only pairs without rows are
  computed, so adding a task computes only its new pairs; the FFN activations of a prompt
  are computed once per unit.
* ``ablate <model>/<task> seed=<s>``: neuron masking on the task's own prompt (table
  ``ablations``, one row per masked fraction).
* ``probe <model> -> <task> seed=<s>``: the recommender's cheap evidence for a target task:
  every other task's prompt scored on a seeded sample of the target's *train* split (a JSON
  file under ``probes/``; the matrix row is never read).
* ``correlate <model>`` and ``recommend <model>``: the indicators against the run's matrix
  cells (table ``correlations``) and the leave-one-task-out rankings (table
  ``recommendations``), from exactly the rows the run covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import pandas as pd
from prefect import get_run_logger

from prompt_core.backbones import resolve_device
from prompt_core.config import EvalConfig, IndicatorsConfig, ModelConfig, stable_hash
from tasks.claims import default_owner, log_wait, unit_claim
from tasks.integrity import DamagedFile, parse_probe, quarantine_key
from tasks.storage import Storage, StorageNotFoundError
from tasks.tables import (
    AblationRow,
    CorrelationRow,
    IndicatorRow,
    PromptRow,
    RecommendationRow,
    now_utc,
    part_path,
    read_parts,
    run_rows,
    write_part,
)
from tasks.units import (
    KEY_VERSION,
    NlpTaskInfo,
    RunContext,
    get_backbone,
    load_stored_prompt,
    model_identity,
    stored_row,
    task_data,
    unit_task,
)

# bump when an indicator's definition changes. 2: the official all-pairs per-token ES
# (es_token_cosine, es_token_euclidean; the aligned cosine renamed es_token_cosine_aligned), T5
# ON on the decoder only and on what feeds ``wo``, the encoder kind's per-position ON rule
INDICATOR_VERSION = 2
# bump when the correlations table changes (2: the mean over targets with its bootstrap
# interval and permutation p-value; no p-value for the pooled scope)
CORRELATION_VERSION = 2


@dataclass
class KeysOutcome:
    """A multi-row unit's result: the keys it covered, how many computed now vs stored."""

    model: str
    keys: list[str]
    n_computed: int
    n_stored: int
    quarantined: list[str] = field(default_factory=list)


def pair_key(model: ModelConfig, a: PromptRow, b: PromptRow, window: int,
             on_position: str) -> str:
    """Key of one unordered prompt pair's indicators: the two prompt keys (sorted), the
    model's identity (ON runs the model), the ON window and ON's position rule
    (``IndicatorsConfig.on_position``)."""
    return stable_hash({"v": KEY_VERSION, "iv": INDICATOR_VERSION, "model": model_identity(model),
                        "pair": sorted([a.prompt_key, b.prompt_key]), "window": window,
                        "on_position": on_position})


def _stored_keys(storage: Storage, table: str, where: dict[str, str], key_column: str
                 ) -> tuple[set[str], list[str]]:
    """Keys with rows in a partition (damaged parts quarantined and counted absent)."""
    stored, damaged = read_parts(storage, table, where)
    quarantined = [quarantine_key(storage, k, why) for k, why in damaged]
    return set(stored.column(key_column).to_pylist()) if stored.num_rows else set(), quarantined


@unit_task(task_run_name="indicators {model.name} seed={seed}")
def indicators_unit(ctx: RunContext, model: ModelConfig, seed: int, prompts: list[PromptRow],
                    cfg: IndicatorsConfig) -> KeysOutcome:
    """ES and ON between every pair of ``prompts`` (one model, one seed); only pairs without
    rows in ``indicators`` are computed, written as one part named by their keys."""
    storage = ctx.storage()
    where = {"study": ctx.study, "model": model.name}
    rows_by_key = {r.prompt_key: r for r in prompts}
    pairs = {pair_key(model, a, b, cfg.window, cfg.on_position):
             tuple(sorted((a.prompt_key, b.prompt_key)))
             for a, b in combinations(prompts, 2)}
    keys = sorted(pairs)

    def todo() -> tuple[list[str], list[str]]:
        done, quarantined = _stored_keys(storage, "indicators", where, "pair_key")
        return [k for k in keys if k not in done], quarantined

    missing, quarantined = todo()
    if not missing:
        return KeysOutcome(model.name, keys, 0, len(keys), quarantined)
    label = f"indicators {model.name} seed={seed}"
    with unit_claim(storage, f"indicators-{stable_hash([ctx.study, missing])}",
                    default_owner(ctx.run_id), is_done=lambda: not todo()[0], poll_s=2.0,
                    on_wait=log_wait(label)):
        missing, more = todo()
        quarantined += more
        if not missing:
            return KeysOutcome(model.name, keys, 0, len(keys), quarantined)
        from prompt_core.indicators import all_indicators

        ctx.use_torch_threads()
        backbone = get_backbone(model, resolve_device(ctx.device))
        tensors: dict[str, Any] = {}
        acts: dict[str, Any] = {}
        for k in sorted({p for key in missing for p in pairs[key]}):
            tensors[k] = load_stored_prompt(storage, rows_by_key[k], backbone.hidden_size)  # (n, D)
            acts[k] = backbone.ffn_activations(tensors[k], cfg.on_position)  # (L, F)
        now = now_utc()
        out = []
        for key in missing:
            ka, kb = pairs[key]
            a, b = rows_by_key[ka], rows_by_key[kb]
            values = all_indicators(tensors[ka], tensors[kb], acts[ka], acts[kb], cfg.window)
            out += [IndicatorRow(
                pair_key=key, model=model.name, seed=seed, prompt_a=ka, prompt_b=kb,
                task_a=a.task, task_b=b.task, task_type_a=a.task_type, task_type_b=b.task_type,
                same_type=a.task_type == b.task_type, indicator=name, value=float(v),
                study=ctx.study, run_id=ctx.run_id, created_at=now)
                for name, v in values.items()]
        write_part(storage, "indicators", out, stable_hash(missing))
        get_run_logger().info("%s: %d new pair(s), %d stored", label, len(missing),
                              len(keys) - len(missing))
        return KeysOutcome(model.name, keys, len(missing), len(keys) - len(missing),
                           quarantined)


def ablation_key(model: ModelConfig, prompt: PromptRow, cfg: IndicatorsConfig,
                 evaluation: EvalConfig) -> str:
    return stable_hash({"v": KEY_VERSION, "iv": INDICATOR_VERSION,
                        "model": model_identity(model), "prompt": prompt.prompt_key,
                        "fractions": cfg.ablation_fractions, "split": cfg.ablation_split,
                        "on_position": cfg.on_position,
                        "max_examples": cfg.ablation_max_examples,
                        "max_length": evaluation.max_length})


@unit_task(task_run_name="ablate {model.name}/{info.name} seed={prompt.seed}")
def ablation_unit(ctx: RunContext, model: ModelConfig, info: NlpTaskInfo, prompt: PromptRow,
                  cfg: IndicatorsConfig, evaluation: EvalConfig) -> KeysOutcome:
    """Neuron masking on ``info``'s own prompt: its accuracy with the top-k% FFN neurons it
    activates zeroed vs k% random neurons, for each k of ``cfg.ablation_fractions``."""
    storage = ctx.storage()
    key = ablation_key(model, prompt, cfg, evaluation)
    where = {"study": ctx.study, "model": model.name}

    def stored() -> bool:  # an intact part (a damaged one is quarantined)
        return stored_row(storage, "ablations", where, key, AblationRow,
                           "ablation_key") is not None

    if stored():
        return KeysOutcome(model.name, [key], 0, 1)
    label = f"ablate {model.name}/{info.name} seed={prompt.seed}"
    with unit_claim(storage, f"ablations-{stable_hash([ctx.study, key])}",
                    default_owner(ctx.run_id), is_done=stored, on_wait=log_wait(label)):
        if stored():
            return KeysOutcome(model.name, [key], 0, 1)
        from prompt_core.indicators import masking_ablation

        ctx.use_torch_threads()
        backbone = get_backbone(model, resolve_device(ctx.device))
        p = load_stored_prompt(storage, prompt, backbone.hidden_size)
        results = masking_ablation(backbone, task_data(ctx, info), p, cfg.ablation_fractions,
                                   split=cfg.ablation_split,
                                   max_examples=cfg.ablation_max_examples,
                                   max_length=evaluation.max_length, seed=prompt.seed,
                                   on_position=cfg.on_position)
        now = now_utc()
        n_layers, n_ffn = backbone.ffn_shape
        rows = [AblationRow(ablation_key=key, model=model.name, seed=prompt.seed,
                            prompt_key=prompt.prompt_key, task=info.name,
                            n_total=n_layers * n_ffn, split=cfg.ablation_split,
                            study=ctx.study, run_id=ctx.run_id, created_at=now, **r)
                for r in results]
        write_part(storage, "ablations", rows, key)
        for r in rows:
            get_run_logger().info("%s: k=%g top-k masked %.3f -> %.3f, random %.3f", label,
                                  r.fraction, r.score, r.top_masked_score,
                                  r.random_masked_score)
        return KeysOutcome(model.name, [key], 1, 0)


def probe_storage_key(model: ModelConfig, target: NlpTaskInfo, sources: list[PromptRow],
                      cfg: IndicatorsConfig, evaluation: EvalConfig, seed: int) -> str:
    key = stable_hash({"v": KEY_VERSION, "iv": INDICATOR_VERSION, "model": model_identity(model),
                       "target": [target.name, target.fingerprint],
                       "sources": sorted(s.prompt_key for s in sources),
                       "n": cfg.probe_examples, "seed": seed,
                       "max_length": evaluation.max_length})
    return f"probes/{model.name}/{target.name}/{key}.json"


def stored_probe_scores(storage: Storage, skey: str) -> dict[str, float] | None:
    """The scores of the probe stored at ``skey``, None when it is absent or damaged (a damaged
    record is quarantined; the unit computes it again)."""
    try:
        return parse_probe(storage.read_bytes(skey))
    except StorageNotFoundError:
        return None
    except DamagedFile as exc:
        quarantine_key(storage, skey, str(exc))
        return None


@dataclass
class ProbeOutcome:
    """The probe scores of one target (source prompt key -> accuracy on the target's train
    sample) and whether they were computed now."""

    model: str
    scores: dict[str, float]
    computed: bool


@unit_task(task_run_name="probe {model.name} -> {target.name} seed={seed}")
def probe_unit(ctx: RunContext, model: ModelConfig, target: NlpTaskInfo, seed: int,
               sources: list[PromptRow], cfg: IndicatorsConfig, evaluation: EvalConfig
               ) -> ProbeOutcome:
    """The recommender's evidence for ``target``: each source prompt's accuracy on
    ``cfg.probe_examples`` seeded examples of the target's train split (prompt key -> score);
    stored as JSON by content key, so a rerun reads it."""
    storage = ctx.storage()
    skey = probe_storage_key(model, target, sources, cfg, evaluation, seed)
    stored = stored_probe_scores(storage, skey)
    if stored is not None:
        return ProbeOutcome(model.name, stored, False)
    from prompt_core.recommend import probe_scores

    ctx.use_torch_threads()
    backbone = get_backbone(model, resolve_device(ctx.device))
    prompts = {s.prompt_key: load_stored_prompt(storage, s, backbone.hidden_size) for s in sources}
    scores = probe_scores(backbone, task_data(ctx, target), prompts, cfg.probe_examples,
                          seed=seed, max_length=evaluation.max_length)
    storage.write_json(skey, {"target": target.name, "model": model.name, "seed": seed,
                              "n_examples": cfg.probe_examples,
                              "scores": {k: float(v) for k, v in scores.items()}})
    return ProbeOutcome(model.name, scores, True)


# --- the analyses: from exactly the rows the run covered ------------------------------------


def _correlation_rows(ctx: RunContext, model: str, key: str, table: pd.DataFrame
                      ) -> list[CorrelationRow]:
    now = now_utc()
    return [CorrelationRow(correlation_key=key, model=model, scope=r.scope,
                           indicator=r.indicator, measure=r.measure, method=r.method,
                           rho=None if pd.isna(r.rho) else float(r.rho),
                           p_value=None if pd.isna(r.p_value) else float(r.p_value),
                           n_pairs=int(r.n_pairs),
                           low=None if pd.isna(r.low) else float(r.low),
                           high=None if pd.isna(r.high) else float(r.high),
                           n_targets=int(r.n_targets), p_method=r.p_method,
                           study=ctx.study, run_id=ctx.run_id, created_at=now)
            for r in table.itertuples(index=False)]


def correlation_key(cell_keys: list[str], pair_keys: list[str]) -> str:
    """Key of one model's correlations: exactly the cells and indicator pairs they read."""
    return stable_hash({"v": KEY_VERSION, "iv": INDICATOR_VERSION, "cv": CORRELATION_VERSION,
                        "cells": sorted(cell_keys), "pairs": sorted(pair_keys)})


def recommend_key(cell_keys: list[str], pair_keys: list[str], probes: list[dict]) -> str:
    """Key of one model's recommendations: the cells, indicator pairs and probe scores."""
    return stable_hash({"v": KEY_VERSION, "iv": INDICATOR_VERSION, "cells": sorted(cell_keys),
                        "pairs": sorted(pair_keys),
                        "probes": sorted(stable_hash(p) for p in probes)})


@unit_task(task_run_name="correlate {model}")
def correlations_unit(ctx: RunContext, model: str, cell_keys: list[str],
                      pair_keys: list[str]) -> KeysOutcome:
    """Spearman and Kendall of every indicator with ``relative_score`` and ``transfer_gain``
    over the run's cells of ``model`` (per target task, as the mean over targets with its
    bootstrap interval and permutation p-value, and over all pairs pooled)."""
    from prompt_core.correlations import correlate, transfer_pairs

    storage = ctx.storage()
    key = correlation_key(cell_keys, pair_keys)
    where = {"study": ctx.study, "model": model}
    if storage.exists(part_path("correlations", where, key)):
        return KeysOutcome(model, [key], 0, 1)
    cells = run_rows(storage, "cross_task", ctx.study, [(model, cell_keys)])
    indicators = run_rows(storage, "indicators", ctx.study, [(model, pair_keys)])
    table = correlate(transfer_pairs(cells, indicators))
    write_part(storage, "correlations", _correlation_rows(ctx, model, key, table), key)
    return KeysOutcome(model, [key], 1, 0)


@unit_task(task_run_name="recommend {model}")
def recommendations_unit(ctx: RunContext, model: str, cell_keys: list[str],
                         pair_keys: list[str], probes: list[dict]) -> KeysOutcome:
    """Leave-one-task-out rankings of the sources of every target task of ``model``: the
    recommender (``probe``: each source prompt's accuracy on a sample of the target's train
    split, ``probes``: [{seed, target_task, scores: {prompt key: score}}]) and the baselines
    (``same_type``, ``random``, each indicator between the source and the target's own
    prompt), each with the source's true score in the matrix."""
    from prompt_core.recommend import loo_scores, truth_table, with_ranks

    storage = ctx.storage()
    key = recommend_key(cell_keys, pair_keys, probes)
    where = {"study": ctx.study, "model": model}
    if storage.exists(part_path("recommendations", where, key)):
        return KeysOutcome(model, [key], 0, 1)
    cells = run_rows(storage, "cross_task", ctx.study, [(model, cell_keys)])
    indicators = run_rows(storage, "indicators", ctx.study, [(model, pair_keys)])
    probe = pd.DataFrame([{"model": model, "seed": p["seed"], "target_task": p["target_task"],
                           "source_prompt_key": k, "score": v}
                          for p in probes for k, v in p["scores"].items()],
                         columns=["model", "seed", "target_task", "source_prompt_key", "score"])
    scores = loo_scores(cells, indicators if len(indicators) else None,
                        probe if len(probe) else None)
    ranked = with_ranks(scores, truth_table(cells))
    now = now_utc()
    fields = set(RecommendationRow.__dataclass_fields__)
    rows = [RecommendationRow(**{k: v for k, v in r.items() if k in fields},
                              recommend_key=key, study=ctx.study, run_id=ctx.run_id,
                              created_at=now)
            for r in ranked.to_dict("records")]
    write_part(storage, "recommendations", rows, key)
    return KeysOutcome(model, [key], 1, 0)
