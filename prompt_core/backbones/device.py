"""Where a backbone runs and in which precision: device specs and bf16 autocast.

A runner config names a device as ``cpu``, ``cuda``, ``cuda:N`` or ``auto``;
:func:`resolve_device` turns that into a concrete torch device string, failing with an
:class:`InputError` (bad input, never retried) when the machine does not have it. The frozen
model, the soft prompt and every batch live on that device.

bf16 (:func:`autocast`) only ever covers the forward pass of the frozen model: the prompt
parameter, the loss and the optimiser state stay float32, and logits are cast to float32 before
softmax / argmax.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from prompt_core.errors import InputError

DEVICE_SPECS = "cpu, cuda, cuda:N or auto"


def _no_cuda_message(spec: str) -> str:
    built = torch.version.cuda
    why = (f"this torch {torch.__version__} is built with CUDA {built} but finds no GPU"
           if built else f"this torch {torch.__version__} is a CPU-only build")
    return f"device {spec!r}: CUDA is not available ({why}); use device 'cpu' or 'auto'"


def resolve_device(spec: str | torch.device) -> str:
    """The torch device string for a device spec (``cpu``, ``cuda``, ``cuda:N`` or ``auto``).

    ``auto`` is ``cuda`` when a GPU is visible, else ``cpu``. ``cuda`` / ``cuda:N`` are checked
    against this machine: no CUDA, or N out of range, is an :class:`InputError` that names the
    device and what is there.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {spec!r}; use {DEVICE_SPECS}") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise InputError(f"unsupported device {spec!r}; use {DEVICE_SPECS}")
    if not torch.cuda.is_available():
        raise InputError(_no_cuda_message(str(spec)))
    if dev.index is not None:
        count = torch.cuda.device_count()
        if dev.index >= count:
            have = f"cuda:0 .. cuda:{count - 1}" if count > 1 else "cuda:0"
            raise InputError(
                f"device {spec!r}: this machine has {count} CUDA device(s) ({have})"
            )
        return f"cuda:{dev.index}"
    return "cuda"


def bf16_active(device: str | torch.device, enabled: bool = True) -> bool:
    """Whether :func:`autocast` would run bf16 here: asked for, a CUDA device, and a GPU with
    native bf16 (Ampere or newer; emulated bf16 is slower than float32)."""
    if not enabled or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no including_emulation argument
        return bool(torch.cuda.is_bf16_supported())


def autocast(device: str | torch.device, enabled: bool = True) -> AbstractContextManager:
    """A context for a forward pass: ``torch.autocast("cuda", dtype=torch.bfloat16)`` when
    :func:`bf16_active`, else a no-op ``nullcontext()`` (CPU, bf16 off, or no bf16 on the GPU).

    Autocast state is per thread, so threads sharing one backbone do not affect each other.
    """
    if bf16_active(device, enabled):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
