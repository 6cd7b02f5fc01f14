"""Measure the encoder kind's ON position choices (IndicatorsConfig.on_position) on a study.

    .venv/bin/python tests/benchmarks/on_position_choices.py \\
        [--study-file deployments/studies/shared_tasks.yaml] [--model minilm] [--storage URI]

Reads, from the storage (read only), the study's cross-task cells of the model (accuracy,
``source_kind = prompt``, off-diagonal: source prompt != target prompt; the latest row of each
(source prompt, target prompt)) and the stored prompts they name (``prompts/<model>/<task>/
<key>.safetensors``, :func:`~prompt_core.prompts.prompt_from_bytes`). For every choice of
:data:`~prompt_core.backbones.encoder.ON_POSITIONS` it computes each prompt's FFN activations
(:meth:`Backbone.ffn_activations`) and ON over all layers and per window
(:func:`~prompt_core.indicators.on_indicators`) for every (source, target) pair, and prints the
Spearman rho (scipy.stats.spearmanr) of ON with the relative score per target task and its mean
over targets, and the mean share of neurons each choice counts as activated.

Descriptive only: the relative scores are test-split scores, so no choice may be picked by
these figures (docs/indicators.md); the default is fixed by definition.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

from prompt_core.backbones import load_backbone
from prompt_core.backbones.encoder import ON_POSITIONS
from prompt_core.config import load_study
from prompt_core.indicators import binary_activations, on_indicators
from prompt_core.prompts import prompt_from_bytes
from tasks.storage import open_storage
from tasks.tables import read_table

REPO = Path(__file__).resolve().parents[2]


def transfer_cells(storage, study: str, model: str) -> pd.DataFrame:
    """Off-diagonal prompt-to-prompt accuracy cells: one row per (source, target) prompt pair,
    the latest stored."""
    cells = read_table(storage, "cross_task", {"study": study, "model": model}).to_pandas()
    if cells.empty:
        raise SystemExit(f"no cross_task rows of study {study!r}, model {model!r} under "
                         f"{storage.root}")
    cells = cells[(cells["metric"] == "accuracy") & (cells["source_kind"] == "prompt")
                  & cells["source_prompt_key"].notna()
                  & (cells["source_prompt_key"] != cells["target_prompt_key"])
                  & cells["relative_score"].notna()]
    return (cells.sort_values("created_at")
            .drop_duplicates(["source_prompt_key", "target_prompt_key"], keep="last"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study-file", default=str(REPO / "deployments/studies/shared_tasks.yaml"))
    ap.add_argument("--model", default="minilm", help="the study's model name")
    ap.add_argument("--storage", default=None, help="storage root (default: ./results)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    study = load_study(args.study_file)
    (mcfg,) = [m for m in study.models if m.name == args.model]
    window = (study.indicators.window if study.indicators else 3)
    storage = open_storage(args.storage)
    cells = transfer_cells(storage, study.name, mcfg.name)
    keys = set(cells["source_prompt_key"]) | set(cells["target_prompt_key"])
    rows = read_table(storage, "prompts", {"study": study.name, "model": mcfg.name}).to_pandas()
    rows = rows[rows["prompt_key"].isin(keys)].drop_duplicates("prompt_key")
    missing = keys - set(rows["prompt_key"])
    if missing:
        raise SystemExit(f"prompts without a prompts row: {sorted(missing)}")

    backbone = load_backbone(mcfg.kind, mcfg.model_id, mcfg.revision, "cpu", **mcfg.options)
    prompts = {}
    for r in rows.itertuples():
        skey = f"prompts/{r.model}/{r.task}/{r.prompt_key}.safetensors"
        prompts[r.prompt_key], _ = prompt_from_bytes(storage.read_bytes(skey), storage.uri(skey),
                                                     backbone.hidden_size, r.n_tokens)
    task_of = dict(zip(rows["prompt_key"], rows["task"], strict=True))
    print(f"study {study.name}, model {mcfg.name} ({backbone.model_id}, pool "
          f"{getattr(backbone, 'pool', '-')}): {len(prompts)} prompts, {len(cells)} "
          f"off-diagonal accuracy cells; ON window {window}")

    per_target, summary = [], []
    for choice in ON_POSITIONS:
        acts = {k: backbone.ffn_activations(p, choice) for k, p in prompts.items()}  # (L, F)
        share = sum(float(binary_activations(a).float().mean()) for a in acts.values())
        on = pd.DataFrame([{**on_indicators(acts[c.source_prompt_key],
                                            acts[c.target_prompt_key], window),
                            "target": task_of[c.target_prompt_key],
                            "relative_score": c.relative_score}
                           for c in cells.itertuples()])
        names = [c for c in on.columns if c.startswith("on")]
        for target, g in on.groupby("target"):
            for name in names:
                rho = spearmanr(g[name], g["relative_score"]).statistic
                per_target.append({"on_position": choice, "indicator": name, "target": target,
                                   "rho": rho, "n_sources": len(g)})
        summary.append({"on_position": choice, "activated_share": share / len(acts)})

    pt = pd.DataFrame(per_target)
    pd.set_option("display.width", 200)
    print("\nSpearman rho of ON (all layers) with the relative score, per target task "
          "(descriptive: test-split scores)")
    print(pt[pt["indicator"] == "on"].pivot(index="target", columns="on_position", values="rho")
          [list(ON_POSITIONS)].round(3).to_string())
    means = pt.groupby(["indicator", "on_position"])["rho"].mean().unstack()[list(ON_POSITIONS)]
    print("\nmean over targets of the per-target rho (NaN targets, constant ON, left out)")
    print(means.round(3).to_string())
    print("\nmean share of the L x F neurons counted as activated, per prompt")
    print(pd.DataFrame(summary).set_index("on_position").round(3).to_string())


if __name__ == "__main__":
    main()
