"""Prefect task that ranks TPT's candidate sources for one target on VALIDATION data.

``tpt.top_k`` chooses, for each target task, the k source prompts to start TPT from. Choosing is
model selection, so it may read validation labels only, never the test split the cross-task
matrix reports (METHOD.md, "Transferable prompt tuning"). One unit per (model, target task):
every candidate source prompt (the model's prompts of the other tasks, every seed) and the
target's own prompt are scored on at most ``tpt.rank_max_examples`` examples of the target's
validation split; a candidate's relative score is its accuracy over the own prompt's (same
seed). The rows go to the ``tpt_rankings`` table (one part per unit, named by its key), so a
rerun reads them instead of scoring again, and an analyst can see why a source was chosen.

Same rules as :mod:`tasks.units`: ids, configs and rows in (never tensors), a content key, the
part written last, a claim while computing.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger

from prompt_core.backbones import resolve_device
from prompt_core.config import EvalConfig, ModelConfig, TptConfig, stable_hash
from prompt_core.evaluation import EncodedSplit
from prompt_core.prompts import prompt_from_bytes
from tasks.claims import default_owner, log_wait, unit_claim
from tasks.integrity import quarantine_key
from tasks.storage import Storage
from tasks.tables import PromptRow, TptRankRow, now_utc, read_parts, write_part
from tasks.units import (
    KEY_VERSION,
    NlpTaskInfo,
    RunContext,
    get_backbone,
    model_identity,
    prompt_storage_key,
    task_data,
    unit_task,
)

RANK_SPLIT = "validation"  # the only split a choice may read


@dataclass
class RankOutcome:
    """A ranking unit's result: its rows (every candidate, every seed) and whether they were
    computed now."""

    model: str
    target: str
    key: str
    rows: list[TptRankRow]
    computed: bool


def rank_key(model: ModelConfig, target: NlpTaskInfo, own: dict[int, PromptRow],
             candidates: list[PromptRow], tpt: TptConfig, evaluation: EvalConfig) -> str:
    """Content key of one ranking: model identity, target task (name + data fingerprint), the
    own and candidate prompts by key, and the validation slice scored."""
    return stable_hash({
        "v": KEY_VERSION, "model": model_identity(model), "split": RANK_SPLIT,
        "target": [target.name, target.fingerprint],
        "own": {str(s): r.prompt_key for s, r in sorted(own.items())},
        "candidates": sorted(r.prompt_key for r in candidates),
        "max_examples": tpt.rank_max_examples, "max_length": evaluation.max_length,
    })


@unit_task(task_run_name="rank tpt sources {model.name} -> {target.name}")
def rank_tpt_sources_unit(ctx: RunContext, model: ModelConfig, target: NlpTaskInfo,
                          own: dict[int, PromptRow], candidates: list[PromptRow],
                          tpt: TptConfig, evaluation: EvalConfig) -> RankOutcome:
    """Score every candidate source prompt and the target's own prompt (per seed) on the
    target's validation split, unless this ranking is stored (its part in ``tpt_rankings``)."""
    storage = ctx.storage()
    key = rank_key(model, target, own, candidates, tpt, evaluation)
    where = {"study": ctx.study, "model": model.name, "target_task": target.name}
    n_rows = len(candidates)

    def stored() -> list[TptRankRow] | None:
        table, damaged = read_parts(storage, "tpt_rankings", where)
        for part, why in damaged:
            quarantine_key(storage, part, why)
        rows = [TptRankRow(**r) for r in table.to_pylist() if r["rank_key"] == key]
        return rows if len(rows) == n_rows else None

    found = stored()
    if found is not None:
        return RankOutcome(model.name, target.name, key, found, computed=False)
    label = f"rank tpt sources {model.name} -> {target.name}"
    with unit_claim(storage, f"tpt_rankings-{stable_hash([ctx.study, key])}",
                    default_owner(ctx.run_id), is_done=lambda: stored() is not None,
                    on_wait=log_wait(label)):
        found = stored()
        if found is not None:
            return RankOutcome(model.name, target.name, key, found, computed=False)
        rows = _score_candidates(ctx, storage, model, target, own, candidates, tpt,
                                 evaluation, key)
        if rows:
            write_part(storage, "tpt_rankings", rows, key)
        get_run_logger().info("%s: %d candidate(s) scored on %d validation examples", label,
                              len(candidates), rows[0].n_examples if rows else 0)
        return RankOutcome(model.name, target.name, key, rows, computed=True)


def _score_candidates(ctx: RunContext, storage: Storage, model: ModelConfig,
                      target: NlpTaskInfo, own: dict[int, PromptRow],
                      candidates: list[PromptRow], tpt: TptConfig, evaluation: EvalConfig,
                      key: str) -> list[TptRankRow]:
    ctx.use_torch_threads()
    backbone = get_backbone(model, resolve_device(ctx.device))
    enc = EncodedSplit(backbone, task_data(ctx, target), RANK_SPLIT, evaluation.max_length,
                       tpt.rank_max_examples, bf16=ctx.bf16)
    accuracy: dict[str, float] = {}  # prompt key -> accuracy on the validation examples

    def score(row: PromptRow) -> float:
        if row.prompt_key not in accuracy:
            skey = prompt_storage_key(model.name, row.task, row.prompt_key)
            prompt, _ = prompt_from_bytes(storage.read_bytes(skey), storage.uri(skey),
                                          backbone.hidden_size, row.n_tokens)
            accuracy[row.prompt_key] = enc.evaluate(prompt, evaluation.batch_size)["accuracy"]
        return accuracy[row.prompt_key]

    now = now_utc()
    rows = []
    for c in candidates:
        mine = own[c.seed]
        s, o = score(c), score(mine)
        rows.append(TptRankRow(
            rank_key=key, model=model.name, target_task=target.name,
            target_task_type=target.type, target_prompt_key=mine.prompt_key,
            source_task=c.task, source_task_type=c.task_type, source_prompt_key=c.prompt_key,
            seed=c.seed, split=RANK_SPLIT, n_examples=len(enc), score=s, own_score=o,
            relative_score=s / o if o else None, study=ctx.study, run_id=ctx.run_id,
            created_at=now))
    return rows
