"""What a run shows in the Prefect UI: the heatmap inline (a PNG data URI in a markdown
artifact), per-model table artifacts equal to the run's ``cross_task`` scores, the summary;
and a heatmap whose title is never cut off. Artifacts are read back through the Prefect API."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from prompt_core.config import parse_study
from tasks.storage import open_storage
from tasks.tables import read_table
from tests.flow_helpers import study_dict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LONG_STUDY = "cross-task-transfer-of-soft-prompts-between-sentiment-and-inference-tasks-v2"
LONG_MODEL = "Tiny_Encoder.random-weights"  # upper case, '_' and '.': not key characters


def _matrix(n_rows: int, n_cols: int, seed: int = 0) -> pd.DataFrame:
    cols = [f"target_task_{j:02d}" for j in range(n_cols)]
    rows = cols[: n_rows - 2] + ["random", "none"]
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.uniform(0.0, 1.2, (n_rows, n_cols)), index=rows, columns=cols)


def _squeeze(text: str) -> str:
    return re.sub(r"\s", "", text)


def _decode_png(data_uri: str) -> np.ndarray:
    import matplotlib.image

    assert data_uri.startswith("data:image/png;base64,")
    png = base64.b64decode(data_uri.split(",", 1)[1], validate=True)
    assert png[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_artifact_keys_are_valid_stable_and_distinct():
    from flows.publish import artifact_keys

    keys = artifact_keys(["tiny", "MiniLM", "bert_base.v1", "a_b", "a.b"])
    assert keys["tiny"] == "tiny" and keys["MiniLM"] == "minilm"
    assert keys["bert_base.v1"] == "bert-base-v1"
    assert keys["a_b"] != keys["a.b"] and keys["a_b"].startswith("a-b-")
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in keys.values())
    assert artifact_keys(["a_b", "a.b"]) == {k: keys[k] for k in ("a_b", "a.b")}  # stable


def test_only_http_uris_become_links():
    from flows.publish import _openable_url

    assert _openable_url("https://bucket.example.org/x.png") == "https://bucket.example.org/x.png"
    assert _openable_url("http://127.0.0.1:9000/b/x.png") == "http://127.0.0.1:9000/b/x.png"
    for uri in ("s3://bucket/x.png", "file:///tmp/x.png", "/tmp/x.png"):
        assert _openable_url(uri) is None


@pytest.mark.parametrize("shape", [(3, 1), (4, 2), (10, 12)])
def test_long_title_lies_inside_the_figure(shape):
    from flows.publish import heatmap_figure

    title = (f"{LONG_STUDY}-{LONG_STUDY} / sentence-transformers_all-MiniLM-L6-v2-"
             f"{'x' * 90}: relative accuracy")
    fig = heatmap_figure(_matrix(*shape), title)
    renderer = fig.canvas.get_renderer()
    # the title, whole: nothing lost in wrapping (long words are split, never cut)
    (text,) = [t for t in fig.texts if _squeeze(t.get_text()) == _squeeze(title)]
    box, figbox = text.get_window_extent(renderer), fig.bbox
    assert text.get_text().count("\n") >= 2  # it had to be wrapped
    assert figbox.x0 <= box.x0 and box.x1 <= figbox.x1, (box, figbox)
    assert figbox.y0 <= box.y0 and box.y1 <= figbox.y1, (box, figbox)
    # the title sits above the plot, not over it
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert box.y0 >= ax.get_window_extent(renderer).y1


def test_heatmap_png_is_small_and_readable():
    from flows.publish import _heatmap_png

    png = _heatmap_png(_matrix(10, 12), "study / model: relative accuracy")
    assert png[:8] == PNG_SIGNATURE
    # a Prefect artifact row, base64-encoded: keep it well under 100 KB
    assert len(base64.b64encode(png)) < 100_000, len(png)
    img = _decode_png("data:image/png;base64," + base64.b64encode(png).decode())
    h, w = img.shape[:2]
    assert 500 <= w <= 1400 and 400 <= h <= 1000, (w, h)
    assert img[..., :3].std() > 0.1  # a picture, not a blank canvas


def _artifacts(run_id: str) -> dict[str, object]:
    """This flow run's artifacts by key, read through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a for a in arts if a.key}


def _expected(ct: pd.DataFrame, value: str) -> dict[tuple[str, str], float]:
    """(source label, target task) -> seed-mean ``value`` of the accuracy rows."""
    acc = ct[ct["metric"] == "accuracy"].copy()
    acc["source"] = np.where(acc["source_kind"] == "prompt", acc["source_task"],
                             acc["source_kind"])
    return acc.groupby(["source", "target_task"])[value].mean().to_dict()


def _table_cells(artifact) -> dict[tuple[str, str], float]:
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return {(r["source prompt"], target): v for r in rows for target, v in r.items()
            if target != "source prompt"}


def test_run_artifacts_read_back_through_the_api(prefect_harness, tiny_models, tasks_root,
                                                 tmp_path):
    from flows.transfer_matrix import run_study

    storage = str(tmp_path / "store")
    d = study_dict(tasks_root, ["pos_a", "pair_c"], storage, tiny_models["encoder"])
    d["name"], d["models"][0]["name"] = LONG_STUDY, LONG_MODEL
    r = run_study(parse_study(d))
    assert r.status == "completed" and r.n_cells_evaluated == 8

    st = open_storage(storage)
    (run_row,) = read_table(st, "runs").to_pylist()
    assert run_row["flow_run_id"] == r.run_id
    arts = _artifacts(run_row["flow_run_id"])
    key = "tiny-encoder-random-weights"
    ns = f"{LONG_STUDY}--"  # every key names the study
    assert {f"{ns}heatmap-{key}", f"{ns}cross-task-{key}", f"{ns}relative-score-{key}",
            f"{ns}transfer-matrix-summary", f"{ns}transfer-matrix-progress"} == set(arts)
    assert not [k for k in arts if "heatmap-file-" in k]  # a local path opens nowhere

    # the heatmap inline: one data URI, a valid PNG equal to the one in storage; a caption
    md = arts[f"{ns}heatmap-{key}"]
    assert md.type == "markdown"
    (uri,) = re.findall(r"!\[[^\]]*\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", md.data)
    img = _decode_png(uri)
    assert img.shape[0] > 100 and img.shape[1] > 100
    png = base64.b64decode(uri.split(",", 1)[1])
    assert open(r.heatmaps[LONG_MODEL], "rb").read() == png
    caption = md.data.split("\n", 1)[0]
    for part in (LONG_STUDY, LONG_MODEL, r.run_id, "relative score", "own prompt"):
        assert part in caption, (part, caption)
    assert "file://" not in md.data and r.heatmaps[LONG_MODEL] in md.data  # as text only

    # the tables: exactly the cross_task rows of this run (accuracy, seed mean)
    ct = read_table(st, "cross_task").to_pandas()
    ct = ct[ct["run_id"] == r.run_id]
    assert len(ct) == 16
    for table_key, value in ((f"{ns}cross-task-{key}", "score"),
                             (f"{ns}relative-score-{key}", "relative_score")):
        art = arts[table_key]
        assert art.type == "table"
        got, want = _table_cells(art), _expected(ct, value)
        assert set(got) == set(want) and len(want) == 8  # 2 targets x (2 prompts, random, none)
        for cell, v in want.items():
            assert got[cell] == pytest.approx(v, abs=1e-4), (table_key, cell)
    rel = _table_cells(arts[f"{ns}relative-score-{key}"])
    assert rel[("pos_a", "pos_a")] == rel[("pair_c", "pair_c")] == 1.0

    summary = arts[f"{ns}transfer-matrix-summary"].data
    assert f"study `{LONG_STUDY}`" in summary and "own prompt beats no prompt on" in summary
    assert f"`{ns}heatmap-{key}`" in summary and f"`{ns}relative-score-{key}`" in summary
    # two tasks of different types: a difference but no same-type pair to give it
    assert "same-type minus different-type mean relative score: n/a (no interval" in summary
    assert "mean transfer gain: same-type pairs n/a, different-type" in summary


def test_summary_lines_give_the_difference_with_its_interval_and_the_seed_spread():
    from flows.publish import transfer_lines
    from prompt_core.analysis import over_seeds, same_minus_diff_interval
    from tests.stats_helpers import coin, four_tasks

    cells, preds = four_tasks(coin(0.9), coin(0.6, salt=1), n=40, seeds=(0, 1),
                              none_hit=coin(0.5, salt=2))
    iv = same_minus_diff_interval(cells, preds)
    gain = same_minus_diff_interval(cells, preds, value="transfer_gain")
    rel_line, gain_line, seeds_line = transfer_lines(cells, preds)
    assert rel_line == (f"- same-type minus different-type mean relative score: "
                        f"{iv['point']:.3f} (95% bootstrap interval [{iv['low']:.3f}, "
                        f"{iv['high']:.3f}], 1000 resamples of target tasks and their test "
                        "examples)")
    assert gain_line.startswith("- mean transfer gain: same-type pairs 0.800, different-type "
                                "0.200; difference 0.600 (95% bootstrap interval [")
    assert f"[{gain['low']:.3f}, {gain['high']:.3f}]" in gain_line
    # the transfer gain interval always says how many resamples were undefined
    assert gain_line.endswith(f"test examples; {gain['n_undefined']} of 1000 resamples "
                              "undefined (no same-type or no different-type cell, or a cell's "
                              "own prompt not above no prompt on the resample))")
    o = over_seeds(cells)
    assert seeds_line.startswith("- over 2 seeds (mean ± std [min, max]): same-type rel "
                                 f"{o.loc['same_type_rel', 'mean']:.3f} ± ")
    one = cells[cells["seed"] == 0]
    assert len(transfer_lines(one, preds)) == 2  # one seed: no spread line
    assert "(no interval: per-example predictions not stored)" in transfer_lines(cells, None)[0]


def test_summary_lines_count_the_undefined_transfer_gain_resamples():
    """A target whose own prompt beats no prompt by one example: the resamples that miss it
    have no gain there and are counted beside the interval."""
    from flows.publish import transfer_lines
    from prompt_core.analysis import same_minus_diff_interval
    from tests.stats_helpers import TYPES, gain_tables, known_targets

    cells, preds = gain_tables(known_targets("a1", "copy"), dict.fromkeys(TYPES, True))
    gain = same_minus_diff_interval(cells, preds, value="transfer_gain")
    assert 0 < gain["n_undefined"] < 1000
    rel_line, gain_line = transfer_lines(cells, preds)
    assert gain_line == (
        "- mean transfer gain: same-type pairs 1.000, different-type 0.000; difference 1.000 "
        "(95% bootstrap interval [1.000, 1.000], 1000 resamples of target tasks and their "
        f"test examples; {gain['n_undefined']} of 1000 resamples undefined (no same-type or no "
        "different-type cell, or a cell's own prompt not above no prompt on the resample))")
    assert "undefined" not in rel_line  # no own score is 0 on any resample
    assert "not stored" in transfer_lines(cells, preds.iloc[2:])[0]
