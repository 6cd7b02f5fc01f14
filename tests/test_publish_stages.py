"""What the cross_model and tpt stages show in the Prefect UI: per model pair the relative
accuracy heatmap inline, per TPT model the dev-accuracy curves inline (PNG data URIs in
markdown artifacts, equal to the PNGs in storage), table artifacts equal to the rows, and the
summary lines. Artifacts are read back through the Prefect API."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from prompt_core.analysis import MixedCellsError, cross_model_summary, tpt_metrics
from tasks.storage import open_storage
from tests.artifact_helpers import decode_png, flow_artifacts, inline_png, table_data

SRC, TGT = "MiniLM_v2", "bert.tiny"  # not key characters: keys minilm-v2, bert-tiny
STUDY, RUN = "stage-study", "run-0001"


def _in_flow(fn):
    """Run ``fn()`` inside a Prefect flow run; (its flow run id, its result)."""
    from prefect import flow
    from prefect.runtime import flow_run

    @flow(name="publish-stages-test")
    def run():
        return str(flow_run.id), fn()

    return run()


def _cross_model_rows() -> pd.DataFrame:
    """Both directions between two models; objectives distance and task (none one way);
    task x trains the projectors, y and z are held out; two seeds."""
    rng = np.random.default_rng(0)
    rows = []
    for src, tgt in ((SRC, TGT), (TGT, SRC)):
        for obj in ("distance", "task") + (("none",) if src == SRC else ()):
            for s in "xyz":
                for t in "xyz":
                    for seed in (0, 1):
                        for metric in ("accuracy", "macro_f1"):
                            rel = float(rng.uniform(0.3, 1.1))
                            rows.append({
                                "source_model": src, "target_model": tgt, "objective": obj,
                                "source_task": s, "target_task": t, "seed": seed,
                                "metric": metric, "held_out": "x" not in (s, t),
                                "score": rel * 0.8, "relative_score": rel})
    return pd.DataFrame(rows)


def _curve(rng, start: float, rate: float, steps: int = 60, every: int = 10):
    return [(s, 0.5 + 0.25 * s, float(start + (0.9 - start) * (1 - np.exp(-rate * s))
                                      + rng.normal(0, 0.005)))
            for s in range(0, steps + 1, every)]


def _tpt_inputs(model: str = SRC, targets=("t1", "t2", "t3", "t4")):
    """TPT rows from curves (as the stage computes them) and their training_curves rows,
    with loss-only points between evaluations; one source is another model's prompt."""
    rng = np.random.default_rng(1)
    rows, curves = [], []

    def add_curve(key, points):
        for s, t, a in points:
            curves.append({"prompt_key": key, "step": s, "elapsed_s": t, "dev_accuracy": a})
            curves.append({"prompt_key": key, "step": s + 1, "elapsed_s": t + 0.1,
                           "dev_accuracy": None})  # a training-loss-only point

    for target in targets:
        for seed in (0, 1):
            base_key = f"base-{target}-{seed}"
            base = _curve(rng, 0.5, 0.03)
            add_curve(base_key, base)
            for kind, src_model, src_task in (("task", model, "t1"), ("task", model, "t2"),
                                              ("model", TGT, "t3")):
                if kind == "task" and src_task == target:
                    continue
                key = f"tpt-{target}-{src_model}-{src_task}-{seed}"
                points = _curve(rng, 0.6 if kind == "task" else 0.45, 0.08)
                add_curve(key, points)
                rows.append({
                    "tpt_key": f"k-{key}", "model": model, "target_task": target,
                    "target_task_type": "sentiment", "source_kind": kind,
                    "source_model": src_model, "source_task": src_task,
                    "source_task_type": "sentiment", "source_prompt_key": f"p-{src_task}",
                    "projector_key": "proj" if kind == "model" else None,
                    "tpt_prompt_key": key, "baseline_prompt_key": base_key,
                    "same_type": src_task != "t3", "seed": seed, "steps": 60,
                    "eval_every": 10, "fraction": 0.9, "score_at_step": 10,
                    **tpt_metrics(points, base, 0.9, k=10), "train_seconds": 20.0,
                    "study": STUDY, "run_id": RUN})
    return pd.DataFrame(rows), pd.DataFrame(curves)


def test_cross_model_and_tpt_artifacts_read_back_through_the_api(prefect_harness, tmp_path):
    from flows.publish import publish_cross_model, publish_tpt, tpt_table

    storage = open_storage(str(tmp_path / "store"))
    xm = _cross_model_rows()
    tpt, curves = _tpt_inputs()
    flow_run_id, (xm_uris, tpt_uris) = _in_flow(lambda: (
        publish_cross_model(storage, STUDY, RUN, xm),
        publish_tpt(storage, STUDY, RUN, tpt, curves)))
    arts = flow_artifacts(flow_run_id)
    assert {"cross-model-minilm-v2-to-bert-tiny", "cross-model-bert-tiny-to-minilm-v2",
            "cross-model-summary", "tpt-curves-minilm-v2", "tpt-minilm-v2"} == set(arts)

    # heatmaps: a PNG inline equal to the stored one, stored beside the cross-task heatmaps
    assert set(xm_uris) == {f"{SRC}->{TGT}", f"{TGT}->{SRC}"}
    for (src, tgt), key in (((SRC, TGT), "minilm-v2-to-bert-tiny"),
                            ((TGT, SRC), "bert-tiny-to-minilm-v2")):
        uri = xm_uris[f"{src}->{tgt}"]
        assert uri == storage.uri(f"artifacts/{RUN}/cross_model_{src}_to_{tgt}.png")
        md = arts[f"cross-model-{key}"]
        assert md.type == "markdown"
        png, img = inline_png(md.data)
        assert open(uri, "rb").read() == png
        assert img.shape[0] > 200 and img.shape[1] > 200 and img[..., :3].std() > 0.1
        caption = md.data.split("\n", 1)[0]
        for part in (STUDY, RUN, src, tgt, "relative score", "own prompt",
                     "training tasks (their cells are not held out): x."):
            assert part in caption, (part, caption)
        assert uri in md.data and "file://" not in md.data
    # the summary table: exactly cross_model_summary of the rows, rounded
    got = table_data(arts["cross-model-summary"])
    want = cross_model_summary(xm).to_dict("records")
    assert len(got) == len(want) == 5  # 2 objectives one way, 3 the other
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for c, v in w.items():
            assert g[c] == (pytest.approx(v, abs=1e-4) if isinstance(v, float) else v), c

    # TPT curves: inline PNG equal to the stored one; the table equals the rows
    assert tpt_uris == {SRC: storage.uri(f"artifacts/{RUN}/tpt_curves_{SRC}.png")}
    md = arts["tpt-curves-minilm-v2"]
    png, img = inline_png(md.data)
    assert open(tpt_uris[SRC], "rb").read() == png
    assert img[..., :3].std() > 0.1
    for part in (STUDY, SRC, RUN, "random-init", "dashed", "0.9 x"):
        assert part in md.data.split("\n", 1)[0], part
    got = table_data(arts["tpt-minilm-v2"])
    want = tpt_table(tpt)
    assert len(got) == len(tpt) == 20  # 4 targets x 2 seeds x (1 or 2 same-model + 1)
    assert {r["source"] for r in got} == {"t1", "t2", f"{TGT}/t3"}
    for g, (_, w) in zip(got, want.iterrows(), strict=True):
        for c, v in w.items():
            if v is None or (isinstance(v, float) and np.isnan(v)):
                assert g[c] is None, c
            elif isinstance(v, float):
                assert g[c] == pytest.approx(v, abs=1e-4), c
            else:
                assert g[c] == v, c


def test_tpt_figure_is_small_and_shows_every_curve():
    from flows.publish import _indexed_curves, palette_png, tpt_figure

    rows, curves = _tpt_inputs(targets=tuple(f"t{i}" for i in range(1, 11)))
    by_key = _indexed_curves(curves, set(rows["tpt_prompt_key"])
                             | set(rows["baseline_prompt_key"]))
    fig = tpt_figure(rows, by_key, f"{STUDY} / {SRC}: transferable prompt tuning")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == sorted(f"t{i}" for i in range(1, 11))
    for ax in panels:  # 2 baselines, 2 seeds x the panel's sources, 1 target line per seed
        t = rows[rows["target_task"] == ax.get_title()]
        assert len(ax.lines) == 2 + len(t) + t["target_score"].nunique()
        for line in ax.lines[:2]:  # evaluated points only: steps 0, 10, ..., 60
            assert list(line.get_xdata()) == list(range(0, 61, 10))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "random init", f"{TGT}/t3", "t1", "t2", "target (0.9 x random-init best)"]
    png = palette_png(fig)
    _, img = decode_png("data:image/png;base64," + base64.b64encode(png).decode())
    assert len(base64.b64encode(png)) < 100_000, len(png)
    assert 600 <= img.shape[1] <= 1100 and 600 <= img.shape[0] <= 1200, img.shape


def test_tpt_refuses_missing_curves_and_mixed_rows(tmp_path):
    from flows.publish import publish_cross_model, publish_tpt

    storage = open_storage(str(tmp_path / "store"))
    rows, curves = _tpt_inputs(targets=("t1",))
    some = curves[curves["prompt_key"] != rows["tpt_prompt_key"].iloc[0]]
    with pytest.raises(ValueError, match="1 prompt\\(s\\) have no dev curve"):
        publish_tpt(storage, STUDY, RUN, rows, some)
    with pytest.raises(MixedCellsError):
        publish_tpt(storage, STUDY, RUN, pd.concat([rows, rows.iloc[:1]]), curves)
    xm = _cross_model_rows()
    with pytest.raises(MixedCellsError):
        publish_cross_model(storage, STUDY, RUN, pd.concat([xm, xm.iloc[:1]]))
    assert not storage.list("artifacts")  # nothing published on refusal
    assert publish_tpt(storage, STUDY, RUN, pd.DataFrame(), curves) == {}
    assert publish_cross_model(storage, STUDY, RUN, pd.DataFrame()) == {}


def test_stage_summary_markdown_from_the_given_rows():
    from flows.publish import stage_summary_markdown

    assert stage_summary_markdown(None, None) == ""
    xm = _cross_model_rows()
    tpt, _ = _tpt_inputs()
    text = stage_summary_markdown(xm, tpt)
    s = cross_model_summary(xm).set_index(["source_model", "target_model", "objective"])
    d = s.loc[(SRC, TGT, "distance")]
    assert (f"- `{SRC}` -> `{TGT}`, distance: diagonal {d['diag_rel']:.3f} (n {int(d['n_diag'])}"
            in text)
    assert "`cross-model-minilm-v2-to-bert-tiny`" in text and "`cross-model-summary`" in text
    assert "## Transferable prompt tuning" in text and "after 10 steps" in text
    assert "`tpt-curves-minilm-v2`" in text and "`tpt-minilm-v2`" in text
    assert re.search(r"`MiniLM_v2`, projected sources, different-type targets: reached 8/8",
                     text), text
    only_tpt = stage_summary_markdown(None, tpt)
    assert "Cross-model" not in only_tpt and only_tpt.startswith("## Transferable")
    # keys from the study's model names, as publish_run derives them
    assert "`tpt-minilm-v2-" in stage_summary_markdown(None, tpt,
                                                        model_names=[SRC, "minilm-v2"])
