"""The result tables, each defined once: a row dataclass (the Arrow schema comes from its
annotations; the pipeline builds and passes rows as instances) and ONE registration with its
layout (partitions, key, row id, model column, ``current_<table>`` view). Views, run_keys
coverage and DDL are derived from the registry: a new table needs only these two things.
Registration order is the order of ``TABLES`` (docs/tables.md's DDL, ``prompt-transfer tables``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tasks.tables.schema import Int16List, TableSpec, register_table


@dataclass
class RunRow:
    """One study run: its status, configuration and how much work it did vs reused."""

    run_id: str
    study: str
    flow_run_id: str | None
    status: str  # completed | failed
    started_at: dt.datetime
    finished_at: dt.datetime
    storage: str
    study_config: str  # the StudyConfig as JSON
    n_prompts_trained: int
    n_prompts_cached: int
    n_cells_evaluated: int
    n_cells_cached: int
    prefect_version: str
    package_version: str
    # JSON list of {"unit": "train minilm/sst2 seed=0", "stage": "train", "model": ...,
    # "error": "..."}: the units that failed in this run (empty list when none)
    failures: str | None = None
    # JSON {stage: {"computed": n, "stored": m}} of the stages after the cross-task matrix
    # (project, cross_model, tpt; indicators (prompt pairs), ablate, probe, correlate,
    # recommend); "{}" when the study has none
    stage_counts: str | None = None


RUNS = register_table(TableSpec.from_row(
    "runs", RunRow, partition_by=("study",), key_column="run_id",
    description="One row per study run (status completed/failed; study_config is JSON)."))


@dataclass
class PromptRow:
    """One trained soft prompt (model x NLP task x seed x training config)."""

    prompt_key: str
    config_key: str  # model identity + training config (content hashes, never paths)
    model: str
    model_id: str
    backbone_kind: str
    hidden_size: int
    task: str
    task_type: str
    task_fingerprint: str
    seed: int
    n_tokens: int
    init: str
    init_prompt_sha: str | None
    steps: int
    lr: float
    batch_size: int
    best_step: int
    dev_accuracy: float
    dev_macro_f1: float
    train_seconds: float
    prompt_uri: str
    study: str
    run_id: str  # the run that trained it
    created_at: dt.datetime


PROMPTS = register_table(TableSpec.from_row(
    "prompts", PromptRow, partition_by=("study", "model"), key_column="prompt_key",
    model_column="model", current_view=True,
    description="One row per trained soft prompt (model x task x seed)."))


@dataclass
class CurveRow:
    """Training loss at one step (and dev metrics where evaluated) of one prompt."""

    prompt_key: str
    model: str
    task: str
    seed: int
    step: int
    train_loss: float | None
    dev_accuracy: float | None
    dev_macro_f1: float | None
    elapsed_s: float
    study: str
    run_id: str
    created_at: dt.datetime


TRAINING_CURVES = register_table(TableSpec.from_row(
    "training_curves", CurveRow, partition_by=("study", "model"), key_column="prompt_key",
    model_column="model",
    description="Per-step training loss (and dev metrics where evaluated) of each prompt."))


@dataclass
class CellRow:
    """One cell of the cross-task matrix: a source prompt (or the random / no-prompt
    baseline) scored on a target task; ``relative_score`` = score / the score of the target's
    own prompt (``target_prompt_key``) of the same seed and metric."""

    cell_key: str
    config_key: str  # model identity + training config + evaluation config
    model: str
    source_task: str | None
    source_kind: str  # prompt | random | none
    source_prompt_key: str | None
    source_task_type: str | None
    target_task: str
    target_task_type: str
    target_prompt_key: str
    same_type: bool | None
    metric: str  # accuracy | macro_f1
    score: float
    relative_score: float | None
    n_examples: int
    seed: int
    eval_split: str
    study: str
    run_id: str
    created_at: dt.datetime
    # 95% percentile bootstrap over the target's test examples (None in rows written before)
    score_low: float | None = None
    score_high: float | None = None
    # (score - no-prompt score) / (own score - no-prompt score), same seed and metric; None
    # when the target's own prompt does not clearly beat no prompt: the no-prompt score is not
    # below the own score's 95% interval (prompt_core.analysis.transfer_gain)
    transfer_gain: float | None = None


CROSS_TASK = register_table(TableSpec.from_row(
    "cross_task", CellRow, partition_by=("study", "model", "target_task"),
    key_column="cell_key", row_id=("metric",), model_column="model", current_view=True,
    description="Cross-task transfer matrix: score of a source prompt (or random/none "
                "baseline) on a target task; source_kind is prompt|random|none, metric "
                "accuracy|macro_f1. View current_cross_task: the cells of each study's "
                "latest completed run."))


@dataclass
class PredictionRow:
    """The per-example predictions behind one ``cross_task`` cell (same ``cell_key``; one row
    for both metrics): ``predicted`` and ``gold`` label ids of every evaluated example, in the
    split's fixed order, so intervals that resample examples (paired across the sources
    scored on a target) can be computed from the tables alone."""

    cell_key: str
    config_key: str
    model: str
    source_kind: str  # prompt | random | none
    source_task: str | None
    source_prompt_key: str | None
    target_task: str
    target_prompt_key: str
    seed: int
    eval_split: str
    n_examples: int
    n_labels: int
    predicted: Int16List
    gold: Int16List
    study: str
    run_id: str
    created_at: dt.datetime


CROSS_TASK_PREDICTIONS = register_table(TableSpec.from_row(
    "cross_task_predictions", PredictionRow, partition_by=("study", "model", "target_task"),
    key_column="cell_key", model_column="model", current_view=True, run_keys_table="cross_task",
    description="Per-example predicted and gold label ids (list<int16>, split order) of each "
                "cross_task cell, one row per cell_key. View current_cross_task_predictions: "
                "those of each study's latest completed run."))


@dataclass
class ProjectorRow:
    """One trained cross-model projector: source model -> target model, one objective, one
    seed, trained on ``train_tasks`` (JSON list of names); the curve summary is its loss."""

    projector_key: str
    source_model: str
    target_model: str
    objective: str  # distance | task
    seed: int
    train_tasks: str  # JSON list of task names
    source_prompt_keys: str  # JSON list, train_tasks order
    target_prompt_keys: str | None  # JSON list (distance), train_tasks order
    source_hidden: int
    target_hidden: int
    n_tokens: int
    hidden: int
    activation: str
    layer_norm: bool
    steps: int
    lr: float
    n_parameters: int
    initial_loss: float
    final_loss: float
    best_loss: float
    train_seconds: float
    projector_uri: str
    study: str
    run_id: str
    created_at: dt.datetime


PROJECTORS = register_table(TableSpec.from_row(
    "projectors", ProjectorRow, partition_by=("study", "target_model"),
    key_column="projector_key", model_column="target_model", current_view=True,
    description="One row per cross-model projector (source -> target model, objective "
                "distance|task, training tasks, loss curve summary)."))


@dataclass
class CrossModelRow:
    """A source model's prompt for ``source_task``, projected into the target model (or as is:
    ``objective`` none), scored zero-shot on ``target_task``; ``relative_score`` = score / the
    target model's own prompt's score (``target_prompt_key``), same seed and metric. The
    interval is a 95% bootstrap over test examples."""

    cell_key: str
    source_model: str
    target_model: str
    objective: str  # distance | task | none (unprojected)
    projector_key: str | None
    source_task: str
    source_task_type: str
    source_prompt_key: str
    target_task: str
    target_task_type: str
    target_prompt_key: str
    held_out: bool  # neither task was among the projector's training tasks
    metric: str
    score: float
    score_low: float
    score_high: float
    relative_score: float | None
    own_score: float | None
    n_examples: int
    seed: int
    eval_split: str
    study: str
    run_id: str
    created_at: dt.datetime


CROSS_MODEL = register_table(TableSpec.from_row(
    "cross_model", CrossModelRow, partition_by=("study", "target_model", "target_task"),
    key_column="cell_key", row_id=("metric",), model_column="target_model", current_view=True,
    description="Zero-shot score of a projected (or, objective none, unprojected) source "
                "prompt on a target model and task, with a 95% bootstrap interval."))


@dataclass
class TptRow:
    """Transferable prompt tuning of one target prompt from one source, against random init
    with the same budget (``baseline_prompt_key``); dev accuracy throughout. ``steps_to_target``
    is the first evaluated step whose dev accuracy reaches ``fraction`` x the baseline's best
    (None: never); speed-ups are baseline / TPT (None when either never reaches it)."""

    tpt_key: str
    model: str
    target_task: str
    target_task_type: str
    source_kind: str  # task (same model) | model (projected from another model)
    source_model: str
    source_task: str
    source_task_type: str
    source_prompt_key: str
    projector_key: str | None
    tpt_prompt_key: str
    baseline_prompt_key: str
    same_type: bool
    seed: int
    steps: int
    eval_every: int
    fraction: float
    target_score: float  # fraction x baseline_best
    score_at_step: int
    score_at_k: float
    baseline_score_at_k: float
    init_score: float
    baseline_init_score: float
    best_score: float
    baseline_best: float
    steps_to_target: int | None
    seconds_to_target: float | None
    baseline_steps_to_target: int | None
    baseline_seconds_to_target: float | None
    speedup_steps: float | None
    speedup_seconds: float | None
    train_seconds: float
    study: str
    run_id: str
    created_at: dt.datetime


TPT = register_table(TableSpec.from_row(
    "tpt", TptRow, partition_by=("study", "model", "target_task"), key_column="tpt_key",
    model_column="model", current_view=True,
    description="Transferable prompt tuning: a target prompt trained from a source prompt vs "
                "random init (same budget): score after k steps, steps/seconds to a fraction "
                "of the baseline's best, best score, speed-up."))


@dataclass
class TptRankRow:
    """One candidate TPT source prompt scored on the target task's VALIDATION split, beside
    the target's own prompt: how ``tpt.top_k`` ranks sources (model selection never reads a
    test label). ``rank_key`` is shared by every row of one (model, target) ranking unit."""

    rank_key: str
    model: str
    target_task: str
    target_task_type: str
    target_prompt_key: str  # the target's own prompt (the denominator), same seed
    source_task: str
    source_task_type: str
    source_prompt_key: str
    seed: int
    split: str  # validation
    n_examples: int
    score: float  # accuracy of the source prompt on the target's validation examples
    own_score: float  # accuracy of the target's own prompt on the same examples
    relative_score: float | None  # score / own_score (None when own_score is 0)
    study: str
    run_id: str
    created_at: dt.datetime


TPT_RANKINGS = register_table(TableSpec.from_row(
    "tpt_rankings", TptRankRow, partition_by=("study", "model", "target_task"),
    key_column="rank_key", row_id=("seed", "source_prompt_key"),
    model_column="model", current_view=True,
    description="How tpt.top_k chose its sources: each candidate source prompt's accuracy on "
                "the target's validation split, beside the target's own prompt (relative "
                "score). Never the test split."))


@dataclass
class IndicatorRow:
    """One transferability indicator between two prompts of one model (an unordered pair,
    ``prompt_a`` < ``prompt_b`` by key); ``pair_key`` is shared by the pair's indicators."""

    pair_key: str
    model: str
    seed: int
    prompt_a: str
    prompt_b: str
    task_a: str
    task_b: str
    task_type_a: str
    task_type_b: str
    same_type: bool
    indicator: str  # es_<...> (prompt_core.indicators.ES_INDICATORS) | on | on_layers_<i>-<j>
    value: float
    study: str
    run_id: str
    created_at: dt.datetime


INDICATORS = register_table(TableSpec.from_row(
    "indicators", IndicatorRow, partition_by=("study", "model"), key_column="pair_key",
    row_id=("indicator",), model_column="model", current_view=True,
    description="Transferability indicators between two prompts of one model: ES (cosine, "
                "per-token cosine, 1/(1+euclidean) of the prompts) and ON (overlap of the FFN "
                "neurons each activates, all layers and per window of layers)."))


@dataclass
class AblationRow:
    """Neuron masking: a prompt's own-task accuracy with the top ``fraction`` of the FFN
    neurons it activates zeroed, against the same number of random neurons zeroed."""

    ablation_key: str
    model: str
    seed: int
    prompt_key: str
    task: str
    fraction: float
    n_masked: int  # neurons masked, of n_total (all FFN neurons of all layers)
    n_total: int
    metric: str  # accuracy
    split: str
    n_examples: int
    score: float  # accuracy unmasked
    top_masked_score: float
    random_masked_score: float
    top_drop: float  # score - top_masked_score
    random_drop: float
    study: str
    run_id: str
    created_at: dt.datetime


ABLATIONS = register_table(TableSpec.from_row(
    "ablations", AblationRow, partition_by=("study", "model"), key_column="ablation_key",
    row_id=("fraction",), model_column="model", current_view=True,
    description="Neuron masking ablation: own-task accuracy with a prompt's top-k% activated "
                "FFN neurons zeroed vs k% random neurons zeroed."))


@dataclass
class CorrelationRow:
    """Rank correlation of one indicator with one transfer measure over the prompt pairs of a
    scope (``all``: every pair of the model pooled, rho descriptive and no p-value;
    ``mean_over_targets``: the mean of the per-target rhos, with a bootstrap interval over
    targets and a within-target permutation p-value; else one target task).
    :func:`prompt_core.correlations.correlate` says how each is computed."""

    correlation_key: str
    model: str
    scope: str
    indicator: str
    measure: str  # relative_score | transfer_gain
    method: str  # spearman | kendall
    rho: float | None
    p_value: float | None  # None for scope all (pooled pairs are not independent)
    n_pairs: int
    low: float | None  # 95% bootstrap interval over targets (scope mean_over_targets only)
    high: float | None
    n_targets: int | None  # targets behind rho (None in rows written before this column)
    p_method: str | None  # scipy | none | permutation_within_target
    study: str
    run_id: str
    created_at: dt.datetime


CORRELATIONS = register_table(TableSpec.from_row(
    "correlations", CorrelationRow, partition_by=("study", "model"),
    key_column="correlation_key", row_id=("scope", "indicator", "measure", "method"),
    model_column="model", current_view=True,
    description="Spearman and Kendall correlation of each indicator with relative_score "
                "and transfer_gain per target task (scipy p-value), as the mean over targets "
                "(bootstrap interval over targets, within-target permutation p-value) and "
                "over all pairs of a model pooled (descriptive: no p-value)."))


@dataclass
class RecommendationRow:
    """One source prompt as ranked for one target task by one method (``probe``: the
    recommender, from the target's train data only; baselines ``same_type``, ``random`` and the
    indicators), with the true transfer score it had in the matrix (evaluation only)."""

    recommend_key: str
    model: str
    seed: int
    target_task: str
    target_task_type: str
    method: str
    source_task: str
    source_task_type: str
    source_prompt_key: str
    score: float  # the method's score (higher = recommended first)
    rank: float  # 1 = first; ties share their mean rank
    true_score: float  # accuracy of the source prompt on the target's test split (matrix)
    true_rank: float
    study: str
    run_id: str
    created_at: dt.datetime


RECOMMENDATIONS = register_table(TableSpec.from_row(
    "recommendations", RecommendationRow, partition_by=("study", "model"),
    key_column="recommend_key", row_id=("seed", "target_task", "method", "source_prompt_key"),
    model_column="model", current_view=True,
    description="Leave-one-task-out source rankings: per target task and method (probe, the "
                "recommender; same_type, random, indicators: baselines) each source's score "
                "and rank, with its true transfer score."))


@dataclass
class RunKeyRow:
    """A key (prompt, cell, ...) that a run covered, trained or reused: the run's exact
    membership, behind the ``current_*`` views."""

    run_id: str
    study: str
    model: str
    table_name: str
    key: str
    created_at: dt.datetime


RUN_KEYS = register_table(TableSpec.from_row(
    "run_keys", RunKeyRow, partition_by=("study", "model"), key_column="key", model_column="model",
    description="Which keys (table_name, key) each run covered, trained or reused."))
