"""Options sections of the built-in stages (``cross_model:``, ``tpt:``, ``indicators:`` in the
study file): their pydantic models and defaults. :mod:`prompt_core.config` registers them as
the stages' :class:`~prompt_core.config.StageSpec` options and re-exports every name here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from prompt_core.backbone_kinds import DEFAULT_ON_POSITION, OnPosition
from prompt_core.config_sections import StrictSection, TrainConfig


class ProjectorConfig(StrictSection):
    """A cross-model projector g: flatten (n * d_s) -> Linear -> activation -> Linear ->
    (n * d_t), optional LayerNorm per token (METHOD.md; the paper's hidden size is 768)."""

    hidden: int = Field(768, ge=1, description="hidden width of the projector MLP")
    activation: Literal["tanh", "leaky_relu"] = Field("tanh", description="tanh or leaky_relu")
    layer_norm: bool = Field(False, description="LayerNorm over each projected prompt token")
    steps: int = Field(200, ge=1, description="optimiser steps")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(16, ge=1, description="task tuning: examples per step")
    max_length: int = Field(128, ge=8, description="task tuning: max tokens of the input text")


class ModelPair(StrictSection):
    """A source model whose prompts are projected into a target model (names from
    ``models``)."""

    source: str = Field(description="source model name")
    target: str = Field(description="target model name")


class CrossModelConfig(StrictSection):
    """Cross-model transfer: projectors trained on ``train_tasks``, evaluated zero-shot on
    the study's other tasks (held out)."""

    train_tasks: list[str] = Field(
        min_length=1, description="tasks (names) the projectors train on; every other study "
        "task is held out and evaluated")
    pairs: list[ModelPair] | None = Field(
        None, description="(source, target) model pairs; default: every ordered pair of "
        "distinct models")
    objectives: list[Literal["distance", "task"]] = Field(
        default_factory=lambda: ["distance", "task"], min_length=1,
        description="distance (L2 to the target model's own prompt) and/or task (the target "
        "model's task loss through the projector)")
    projector: ProjectorConfig = Field(default_factory=ProjectorConfig)
    unprojected: bool = Field(
        True, description="where hidden sizes match, also score the source prompt as is")

    @model_validator(mode="after")
    def _unique(self):
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives repeat: {self.objectives}")
        if len(set(self.train_tasks)) != len(self.train_tasks):
            raise ValueError(f"train_tasks repeat: {self.train_tasks}")
        return self


class TptSource(StrictSection):
    """A source prompt for transferable prompt tuning: a task's prompt of the same model, or
    of another model (projected by the cross_model stage's projector)."""

    task: str = Field(description="source task name")
    model: str | None = Field(None, description="source model name; default: the target's")


class TptConfig(StrictSection):
    """Transferable prompt tuning: train a target task's prompt from a source prompt (fresh
    optimiser) and compare its curve with random init under the same budget."""

    models: list[str] | None = Field(None, description="models to run TPT on; default: all")
    targets: list[str] | None = Field(None, description="target tasks; default: all")
    sources: list[TptSource] | None = Field(
        None, description="explicit sources, tried for every target (a target is never its "
        "own source)")
    top_k: int | None = Field(
        None, ge=1, description="or: the k best sources for each target, ranked by their mean "
        "relative accuracy over seeds on the target's VALIDATION split (never the test split: "
        "choosing sources is model selection)")
    rank_max_examples: int | None = Field(
        300, ge=1, description="top_k: score the candidate sources on at most this many "
        "validation examples of the target (null: all)")
    steps: int | None = Field(None, ge=1, description="training steps; default: training.steps")
    eval_every: int | None = Field(
        None, ge=1, description="steps between dev evaluations; default: training.eval_every")
    fraction: float = Field(0.9, gt=0, le=1, description="reach this fraction of the random "
                                                          "init's best dev score")
    score_at_step: int | None = Field(
        None, ge=1, description="report the dev score after this many steps (the last "
        "evaluation at or before it); default: eval_every")
    projector_objective: Literal["distance", "task"] = Field(
        "distance", description="which projector carries another model's prompt over")

    @model_validator(mode="after")
    def _one_source_rule(self):
        if (self.sources is None) == (self.top_k is None):
            raise ValueError("tpt needs exactly one of sources (explicit) and top_k")
        return self

    def train_config(self, training: TrainConfig) -> TrainConfig:
        """The training config of TPT runs and their random-init baseline: the study's, with
        TPT's budget (the same config gives the train stage's prompts as the baseline). Early
        stopping (``patience``) applies to both alike; the TPT measures read curves that end
        early as ending at their last evaluation (:func:`~prompt_core.analysis.tpt_metrics`)."""
        update = {k: v for k, v in {"steps": self.steps, "eval_every": self.eval_every}.items()
                  if v is not None}
        return training.model_copy(update=update) if update else training


class IndicatorsConfig(StrictSection):
    """Transferability indicators between every pair of one model's prompts (ES: prompt
    embedding similarity; ON: overlap of the FFN neurons the prompts activate), their
    correlation with the cross-task matrix, the neuron-masking ablation and the source
    recommender's leave-one-task-out evaluation."""

    models: list[str] | None = Field(None, description="models to compute them for; default: "
                                                        "all")
    window: int = Field(3, ge=1, description="ON per window of this many consecutive layers "
                                             "(besides ON over all layers)")
    on_position: OnPosition = Field(
        DEFAULT_ON_POSITION, description="ON of the encoder kind, which reads several positions "
        "(the pooled ones): a neuron is activated (> 0) at a position, and a prompt activates "
        "it when it is activated at: any pooled position (any; the layer's value is the max "
        "over them, which also ranks the neurons the masking ablation zeroes), the first text "
        "position, [CLS] (first), any prompt position (prompt), or the legacy rule, the mean "
        "over the pooled positions > 0 (mean; for comparison only). The other kinds (mlm, "
        "causal, seq2seq) read one position, so it does not change them")
    ablation_fractions: list[float] = Field(
        default_factory=lambda: [0.01, 0.05, 0.1],
        description="neuron masking: fractions k of all FFN neurons masked (the prompt's top-k "
        "activated vs k random); empty: no ablation")
    ablation_split: Literal["validation", "test"] = Field(
        "validation", description="split the ablation scores the own task on")
    ablation_max_examples: int | None = Field(
        200, ge=1, description="at most this many examples of that split (null: all)")
    probe_examples: int = Field(
        64, ge=1, description="recommender: train examples of the new task each source prompt "
        "is scored on")

    @field_validator("ablation_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0 < f < 1]
        if bad:
            raise ValueError(f"ablation_fractions must lie in (0, 1), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"ablation_fractions repeat: {v}")
        return sorted(v)
