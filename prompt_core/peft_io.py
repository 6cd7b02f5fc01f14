"""Soft prompts to and from PEFT prompt-tuning adapters (interchange with Hugging Face ``peft``).

A PEFT prompt-tuning adapter is a folder with two files:

* ``adapter_config.json``: a :class:`peft.PromptTuningConfig` (``peft_type`` ``PROMPT_TUNING``,
  ``task_type``, ``num_virtual_tokens`` n, ``token_dim`` D, ``num_transformer_submodules``,
  ``base_model_name_or_path``, ...);
* ``adapter_model.safetensors`` (older PEFT: ``adapter_model.bin``): one tensor
  ``prompt_embeddings`` of shape (n * num_transformer_submodules, D).

``PeftModel.from_pretrained(base_model, folder)`` then puts the n rows in front of the input
embeddings, as :meth:`Backbone.embed_with_prompt` does, for the PEFT model class of the
``task_type`` (:data:`PEFT_TASK_TYPES` maps each backbone kind to one that prepends):

* ``encoder`` / ``mlm`` -> ``FEATURE_EXTRACTION``: the prompt goes in front of the input and the
  base model's own output (hidden states, or MLM logits for ``*ForMaskedLM``) comes back. PEFT
  has no masked-LM task type, and ``task_type`` None would not prepend anything.
* ``causal`` -> ``CAUSAL_LM``.
* ``seq2seq`` -> ``SEQ_2_SEQ_LM`` with ``num_transformer_submodules`` 1: the prompt goes in front
  of the ENCODER input only, like :class:`Seq2SeqBackbone`. (PEFT's default for seq2seq is 2, a
  second prompt in front of the decoder input, which a prompt here cannot represent, so such an
  adapter is refused on import.)

Both sides extend the attention mask with ones over the prompt. Differences to know: PEFT drops
``token_type_ids`` (all zero) and ``position_ids`` (default positions 0..n+T-1), so outputs
agree exactly for single-segment inputs; for a text pair, BERT's second segment gets type 0
under PEFT and type 1 here.

Our metadata (the prompt file's metadata plus ``backbone_kind`` and the base model) travels in
the safetensors header of the weights file under ``prompt_transfer``, as in prompt files
(:mod:`prompt_core.prompts`); PEFT ignores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from prompt_core.errors import InputError
from prompt_core.prompts import FORMAT_VERSION, META_KEY, check_prompt_shape

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"  # PEFT before safetensors became its default
WEIGHTS_KEY = "prompt_embeddings"  # the key PEFT's prompt encoders save and load
PROMPT_TUNING = "PROMPT_TUNING"

# backbone kind -> the PEFT task_type whose PeftModel class prepends the prompt the same way
PEFT_TASK_TYPES: dict[str, str] = {
    "encoder": "FEATURE_EXTRACTION",
    "mlm": "FEATURE_EXTRACTION",
    "causal": "CAUSAL_LM",
    "seq2seq": "SEQ_2_SEQ_LM",
}


class PeftAdapterError(InputError):
    """A PEFT adapter folder that cannot be read as (or written from) a soft prompt."""


# --- export ----------------------------------------------------------------------------------


def export_peft(prompt: torch.Tensor, folder: str | Path, *, base_model_name_or_path: str,
                backbone_kind: str, metadata: dict[str, Any] | None = None,
                overwrite: bool = False) -> Path:
    """Write prompt (n, D) as a PEFT prompt-tuning adapter folder; return the folder.

    ``PeftModel.from_pretrained(base_model, folder)`` loads it (``base_model`` being the model
    ``base_model_name_or_path`` names, loaded as the backbone kind loads it). ``metadata``
    (JSON-able, e.g. a prompt file's) is kept in the weights file's header for
    :func:`import_peft`. A folder that exists and is not empty is refused unless ``overwrite``.
    """
    folder = Path(folder)
    where = f"PEFT export to {folder}"
    if backbone_kind not in PEFT_TASK_TYPES:
        raise PeftAdapterError(f"{where}: unknown backbone kind {backbone_kind!r}; "
                               f"known: {sorted(PEFT_TASK_TYPES)}")
    if not isinstance(base_model_name_or_path, str) or not base_model_name_or_path.strip():
        raise PeftAdapterError(f"{where}: base_model_name_or_path must be a non-empty string")
    _check_prompt(prompt, where)
    meta = {**(metadata or {}), "format_version": FORMAT_VERSION,
            "backbone_kind": backbone_kind, "base_model_name_or_path": base_model_name_or_path}
    try:
        header = {"format": "pt", META_KEY: json.dumps(meta, sort_keys=True)}
    except (TypeError, ValueError) as e:
        raise PeftAdapterError(f"{where}: metadata is not JSON-serialisable ({e})") from e
    n, d = prompt.shape
    config = _prompt_tuning_config(n, d, PEFT_TASK_TYPES[backbone_kind], base_model_name_or_path)
    _prepare_folder(folder, overwrite)
    config.save_pretrained(str(folder))
    tensor = prompt.detach().cpu().float().contiguous()
    save_file({WEIGHTS_KEY: tensor}, str(folder / WEIGHTS_NAME), metadata=header)
    return folder


def _check_prompt(prompt: Any, where: str) -> None:
    """A finite 2-d tensor (n, D) with n > 0 and D > 0."""
    if not isinstance(prompt, torch.Tensor):
        raise PeftAdapterError(f"{where}: the prompt must be a tensor (n, D), "
                               f"got {type(prompt).__name__}")
    check_prompt_shape(prompt.detach(), None, where=where)
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise PeftAdapterError(f"{where}: the prompt has shape {tuple(prompt.shape)}; "
                               "n_tokens and the hidden size must both be > 0")


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    """Create ``folder``; refuse a file, or a non-empty folder unless ``overwrite`` (which then
    also removes a stale ``adapter_model.bin``, so only the new weights remain)."""
    if folder.exists() and not folder.is_dir():
        raise PeftAdapterError(f"PEFT export to {folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise PeftAdapterError(f"PEFT export to {folder}: the folder is not empty; choose "
                                   "an empty or new folder, or pass --force (overwrite=True) "
                                   "to replace its adapter files")
        (folder / LEGACY_WEIGHTS_NAME).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)


def _prompt_tuning_config(n: int, d: int, task_type: str, base_model: str) -> Any:
    """PEFT's own config object for a saved (inference-mode) adapter of n virtual tokens."""
    from peft import PromptTuningConfig, PromptTuningInit

    return PromptTuningConfig(
        task_type=task_type, num_virtual_tokens=n, token_dim=d, num_transformer_submodules=1,
        prompt_tuning_init=PromptTuningInit.RANDOM, base_model_name_or_path=base_model,
        inference_mode=True,  # what PeftModel.save_pretrained writes
    )


# --- import ----------------------------------------------------------------------------------


def import_peft(folder: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a PEFT prompt-tuning adapter folder (ours or PEFT's own) -> (prompt (n, D), meta).

    ``meta`` holds the metadata :func:`export_peft` stored (if any), then ``peft_type``,
    ``peft_task_type`` (PEFT's task type, e.g. ``CAUSAL_LM``; a prompt file's ``task_type`` is
    the NLP task's type), ``base_model_name_or_path``, ``n_tokens``, ``hidden_size`` and
    ``backbone_kind`` (the stored one, else the one the task type implies, or None when it is
    ambiguous: ``FEATURE_EXTRACTION`` is encoder or mlm). The prompt is float32.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PeftAdapterError(f"PEFT adapter folder {folder} does not exist or is not a folder")
    config = _read_config(folder)
    weights, header = _read_weights(folder)
    prompt = _prompt_from(weights, config, folder)
    stored = _stored_metadata(header, folder)
    meta = {
        **stored,
        "peft_type": PROMPT_TUNING,
        "peft_task_type": _plain(config.task_type),
        "base_model_name_or_path": config.base_model_name_or_path,
        "n_tokens": prompt.shape[0],
        "hidden_size": prompt.shape[1],
        "backbone_kind": stored.get("backbone_kind") or _kind_of(config.task_type),
    }
    return prompt, meta


def _plain(value: Any) -> Any:
    """A str enum member (PEFT's TaskType/PeftType) as its plain string value."""
    return getattr(value, "value", value)


def _kind_of(task_type: Any) -> str | None:
    """The one backbone kind mapped to ``task_type``, or None (none or several)."""
    kinds = [k for k, t in PEFT_TASK_TYPES.items() if t == _plain(task_type)]
    return kinds[0] if len(kinds) == 1 else None


def _read_config(folder: Path) -> Any:
    """adapter_config.json as a PromptTuningConfig; anything else is refused, by name."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise PeftAdapterError(f"{folder}: no {CONFIG_NAME}; not a PEFT adapter folder")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PeftAdapterError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise PeftAdapterError(f"{path}: expected a JSON object, got {type(data).__name__}")
    peft_type = data.get("peft_type")
    if peft_type != PROMPT_TUNING:
        raise PeftAdapterError(
            f"{folder}: a {peft_type} adapter (peft_type {peft_type!r}), not prompt tuning; only "
            f"{PROMPT_TUNING} adapters hold a soft prompt that can be imported"
        )
    from peft import PromptTuningConfig

    try:
        return PromptTuningConfig.from_peft_type(**data)
    except (TypeError, ValueError) as e:
        raise PeftAdapterError(f"{path}: not a valid prompt-tuning config ({e})") from e


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The adapter's tensors and safetensors header metadata (empty for a .bin file)."""
    st_path, bin_path = folder / WEIGHTS_NAME, folder / LEGACY_WEIGHTS_NAME
    if st_path.is_file():
        try:
            with safe_open(str(st_path), framework="pt") as f:
                header = f.metadata() or {}
            return load_file(str(st_path)), header
        except (SafetensorError, OSError, ValueError) as e:
            raise PeftAdapterError(f"{st_path}: not a valid safetensors file ({e})") from e
    if bin_path.is_file():
        return _load_bin(bin_path), {}
    raise PeftAdapterError(f"{folder}: no adapter weights ({WEIGHTS_NAME} or "
                           f"{LEGACY_WEIGHTS_NAME})")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A legacy ``adapter_model.bin``, unpickled with ``weights_only`` (tensors and plain
    containers only). A pickle holding anything else is refused, never loaded: loading it
    would run code from the file. The message gives torch's reason, not its advice."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may not know
            warnings.simplefilter("ignore")
            weights = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PeftAdapterError(
            f"{path}: refused: not a pickle of tensors only ({_unpickling_reason(e)}); a "
            "pickle of other objects can run code when loaded, so it is not loaded; convert "
            f"the adapter to {WEIGHTS_NAME} where you trust it (PEFT's save_pretrained "
            "writes safetensors)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure is a bad file
        detail = _unpickling_reason(e) or type(e).__name__
        raise PeftAdapterError(f"{path}: cannot be read as PEFT weights ({detail})") from None
    if not isinstance(weights, dict):
        raise PeftAdapterError(f"{path}: holds a {type(weights).__name__}, not a dict of "
                               "tensors")
    return weights


def _unpickling_reason(exc: BaseException) -> str:
    """torch's reason for refusing a pickle, without its advice (re-running ``torch.load``
    with ``weights_only=False``, or allowlisting the file's globals, would run its code; we
    never do either)."""
    import re

    advice = ("weights only load failed", "weights_only", "check the documentation",
              "please file an issue", "do it only if", "re-running", "safe_globals",
              "allowlist", "if you trust")
    kept = []
    for raw in str(exc).splitlines():
        text = raw.replace("WeightsUnpickler error:", "").strip()
        for sentence in re.split(r"(?<=\.)\s+", text):
            if sentence and not any(a in sentence.lower() for a in advice):
                kept.append(sentence.rstrip("."))
    return "; ".join(kept)


def _prompt_from(weights: dict[str, torch.Tensor], config: Any, folder: Path) -> torch.Tensor:
    """The (n, D) prompt from ``prompt_embeddings``, checked against the config."""
    if WEIGHTS_KEY not in weights:
        raise PeftAdapterError(f"{folder}: the weights have no {WEIGHTS_KEY!r} tensor "
                               f"(found {sorted(weights)})")
    table = weights[WEIGHTS_KEY]
    subs = config.num_transformer_submodules
    if subs is None:  # PEFT's own default when loading
        subs = 2 if _plain(config.task_type) == "SEQ_2_SEQ_LM" else 1
    if subs != 1:
        raise PeftAdapterError(
            f"{folder}: num_transformer_submodules={subs}: the adapter holds {subs} prompts "
            f"(encoder and decoder, PEFT's default for SEQ_2_SEQ_LM; weights shape "
            f"{tuple(table.shape)}); a prompt here is one (n, D) tensor in front of the encoder "
            "input only, so the decoder prompt cannot be represented"
        )
    n, d = config.num_virtual_tokens, config.token_dim
    if table.ndim != 2:
        raise PeftAdapterError(f"{folder}: {WEIGHTS_KEY} should be 2-d (n, D), got shape "
                               f"{tuple(table.shape)}")
    if n != table.shape[0]:
        raise PeftAdapterError(f"{folder}: num_virtual_tokens {n} in {CONFIG_NAME} does not "
                               f"match the weights' {table.shape[0]} rows (shape "
                               f"{tuple(table.shape)})")
    if d is not None and d != table.shape[1]:  # None: PEFT takes it from the base model
        raise PeftAdapterError(f"{folder}: token_dim {d} in {CONFIG_NAME} does not match the "
                               f"weights' hidden size {table.shape[1]} (shape "
                               f"{tuple(table.shape)})")
    prompt = table.float()
    _check_prompt(prompt, str(folder))
    return prompt


def _stored_metadata(header: dict[str, str], folder: Path) -> dict[str, Any]:
    """What :func:`export_peft` kept in the safetensors header ({} for other adapters)."""
    if META_KEY not in header:
        return {}
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise PeftAdapterError(f"{folder / WEIGHTS_NAME}: {META_KEY} metadata is not valid "
                               f"JSON ({e})") from e
    if not isinstance(meta, dict):
        raise PeftAdapterError(f"{folder / WEIGHTS_NAME}: {META_KEY} metadata is not a JSON "
                               "object")
    return meta
