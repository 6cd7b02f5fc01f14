"""The prompt file format and the shape of a prompt, without torch.

A prompt file is safetensors (never pickle): one tensor named ``prompt`` of shape
``(n_tokens, d_model)`` plus the metadata (model, task, config hash, scores...) as JSON in the
safetensors header under ``prompt_transfer``. :mod:`prompt_core.prompts` reads and writes the
tensor with torch; this module holds what needs no tensor library (the backbones check a
prompt's shape with it, and validating a study checks its init prompt file with numpy only).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from prompt_core.errors import InputError

TENSOR_NAME = "prompt"
META_KEY = "prompt_transfer"
FORMAT_VERSION = 1


class PromptFileError(InputError):
    """A prompt file is unreadable or does not fit the model it is used with."""


def check_prompt_shape(prompt: Any, hidden_size: int | None, n_tokens: int | None = None,
                       where: str = "prompt") -> None:
    """A finite (n, D) tensor (torch or numpy); D and n checked when given. Errors start with
    ``where`` (the file or URI the prompt came from) and give the found and the expected
    shape."""
    found = tuple(prompt.shape)
    n_want = "n_tokens" if n_tokens is None else n_tokens
    want = f"({n_want}, {'d' if hidden_size is None else hidden_size})"
    if prompt.ndim != 2:
        raise PromptFileError(f"{where}: expected a 2-d tensor {want}, got shape {found}")
    if hidden_size is not None and prompt.shape[1] != hidden_size:
        raise PromptFileError(
            f"{where}: hidden size {prompt.shape[1]} does not match the model's {hidden_size} "
            f"(shape {found}, expected {want})"
        )
    if n_tokens is not None and prompt.shape[0] != n_tokens:
        raise PromptFileError(
            f"{where}: has {prompt.shape[0]} tokens, expected {n_tokens} "
            f"(shape {found}, expected {want})"
        )
    finite = prompt.isfinite().all() if hasattr(prompt, "isfinite") else np.isfinite(prompt).all()
    if not finite:
        raise PromptFileError(f"{where}: contains NaN or infinite values")


def safetensors_metadata(data: bytes) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file's header (None when it has none)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__")


def prompt_metadata(data: bytes, where: str = "prompt file") -> dict:
    """The metadata a prompt file carries (``{}`` when none), from a file the safetensors
    parser accepted; PromptFileError when it is not valid JSON."""
    header = safetensors_metadata(data)
    if not header or META_KEY not in header:
        return {}
    try:
        return json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{where}: metadata is not valid JSON ({e})") from e


# safetensors dtype -> numpy dtype of the values (BF16: the high half of a float32)
_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
_EXACT = {"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}  # always finite


def _values(entry: dict) -> np.ndarray | None:
    """A safetensors entry's values as a numpy array of its shape; None for a dtype numpy
    cannot read (float8), whose values go unchecked here."""
    dtype, shape, raw = entry["dtype"], entry["shape"], bytes(entry["data"])
    if dtype in _FLOATS:
        return np.frombuffer(raw, dtype=_FLOATS[dtype]).reshape(shape)
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4").reshape(shape)
    if dtype in _EXACT:
        return np.zeros(shape, dtype=np.float32)
    return None


def inspect_prompt_bytes(data: bytes, where: str = "prompt file",
                         hidden_size: int | None = None, n_tokens: int | None = None
                         ) -> tuple[tuple[int, ...], dict]:
    """Check a prompt file as :func:`prompt_core.prompts.prompt_from_bytes` does, without
    torch: (the prompt's shape, metadata). PromptFileError names ``where`` and the problem."""
    from safetensors import deserialize

    try:
        tensors = dict(deserialize(data))
    except Exception as e:  # noqa: BLE001 - any parse failure
        raise PromptFileError(f"{where}: not a valid safetensors file ({e})") from e
    if TENSOR_NAME not in tensors:
        raise PromptFileError(f"{where}: no tensor named {TENSOR_NAME!r} (has {list(tensors)})")
    entry = tensors[TENSOR_NAME]
    values = _values(entry)
    if values is None:  # the shape is still checked
        values = np.zeros(entry["shape"], dtype=np.float32)
    check_prompt_shape(values, hidden_size, n_tokens, where=where)
    return tuple(entry["shape"]), prompt_metadata(data, where)
