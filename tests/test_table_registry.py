"""Tables are defined once (a row dataclass and its registration): the ``current_*`` views,
``VIEW_TABLES``, ``run_keys`` coverage and the DDL are derived from the registry. The derived
views return exactly the rows of the hand-written SQL they replaced (pasted below), and a
table registered inside a test gets its view and DDL with no other edit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections import defaultdict

import pytest

from tasks.storage import Storage
from tasks.tables import (
    TABLES,
    RunKeyRow,
    RunRow,
    TableSpec,
    athena_ddl,
    current_view_sql,
    duckdb_connect,
    read_table,
    registered,
    run_rows,
    tables_with_run_keys,
    trino_ddl,
    view_tables,
    views,
    write_part,
)
from tests.table_helpers import filled_row, write_tables

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)

# -- the hand-written views these replaced (tasks/tables.py before issue 17), verbatim --------

TODAY_VIEWS: dict[str, str] = {
    "latest_runs": """
        select * from runs where status = 'completed'
        qualify row_number() over (partition by study order by finished_at desc, run_id) = 1""",
    "current_cross_task": """
        select c.* from cross_task c
        join run_keys k on k.table_name = 'cross_task' and k.key = c.cell_key
            and k.study = c.study and k.model = c.model
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by c.study, c.model, c.cell_key, c.metric
                                   order by c.created_at desc) = 1""",
    "current_cross_task_predictions": """
        select p.* from cross_task_predictions p
        join run_keys k on k.table_name = 'cross_task' and k.key = p.cell_key
            and k.study = p.study and k.model = p.model
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by p.study, p.model, p.cell_key
                                   order by p.created_at desc) = 1""",
    "current_prompts": """
        select p.* from prompts p
        join run_keys k on k.table_name = 'prompts' and k.key = p.prompt_key
            and k.study = p.study and k.model = p.model
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by p.study, p.model, p.prompt_key
                                   order by p.created_at desc) = 1""",
}
# the later stages' tables: (view, table, its model column, its key column, partition of a row)
for _view, _table, _model, _key, _part in (
    ("current_projectors", "projectors", "target_model", "projector_key", "t.projector_key"),
    ("current_cross_model", "cross_model", "target_model", "cell_key", "t.cell_key, t.metric"),
    ("current_tpt", "tpt", "model", "tpt_key", "t.tpt_key"),
    ("current_tpt_rankings", "tpt_rankings", "model", "rank_key",
     "t.rank_key, t.seed, t.source_prompt_key"),
    ("current_indicators", "indicators", "model", "pair_key", "t.pair_key, t.indicator"),
    ("current_ablations", "ablations", "model", "ablation_key", "t.ablation_key, t.fraction"),
    ("current_correlations", "correlations", "model", "correlation_key",
     "t.correlation_key, t.scope, t.indicator, t.measure, t.method"),
    ("current_recommendations", "recommendations", "model", "recommend_key",
     "t.recommend_key, t.seed, t.target_task, t.method, t.source_prompt_key"),
):
    TODAY_VIEWS[_view] = f"""
        select t.* from {_table} t
        join run_keys k on k.table_name = '{_table}' and k.key = t.{_key}
            and k.study = t.study and k.model = t.{_model}
        join latest_runs r on r.run_id = k.run_id and r.study = k.study
        qualify row_number() over (partition by t.study, t.{_model}, {_part}
                                   order by t.created_at desc) = 1"""
TODAY_VIEW_TABLES = {"latest_runs": {"runs"}, "current_cross_task": {"cross_task"},
                     "current_cross_task_predictions": {"cross_task_predictions"},
                     "current_prompts": {"prompts"}, "current_projectors": {"projectors"},
                     "current_cross_model": {"cross_model"}, "current_tpt": {"tpt"},
                     "current_tpt_rankings": {"tpt_rankings"},
                     "current_indicators": {"indicators"}, "current_ablations": {"ablations"},
                     "current_correlations": {"correlations"},
                     "current_recommendations": {"recommendations"}}


# -- derived from the registry ----------------------------------------------------------------


def test_view_tables_and_run_keys_coverage_are_derived():
    assert view_tables() == TODAY_VIEW_TABLES
    assert set(views()) == set(TODAY_VIEWS)
    assert list(views())[0] == "latest_runs"  # the current views read it
    assert views()["latest_runs"] == TODAY_VIEWS["latest_runs"]
    import tasks.tables as tables

    assert tables.VIEW_TABLES == TODAY_VIEW_TABLES and tables.VIEWS == views()
    # the table_name values a run's run_keys rows carry (flows.transfer_matrix._stage_keys)
    assert tables_with_run_keys() == [
        "prompts", "cross_task", "projectors", "cross_model", "tpt", "tpt_rankings",
        "indicators", "ablations", "correlations", "recommendations"]
    assert TABLES["cross_task_predictions"].run_keys_name == "cross_task"
    for name in ("runs", "training_curves", "run_keys"):
        assert not TABLES[name].current_view


def normalized(sql: str) -> str:
    """SQL text with quotes, whitespace and the table alias (c, p, t) made uniform."""
    sql = re.sub(r"\b([a-z_]+) [cp]\n", r"\1 t\n", sql)  # "from cross_task c" -> "... t"
    sql = re.sub(r"\b[cp]\.", "t.", sql)
    return re.sub(r"\s+", " ", sql.replace('"', "")).strip()


@pytest.mark.parametrize("view", sorted(TODAY_VIEWS))
def test_derived_view_sql_is_todays_sql(view):
    """Up to quoting, whitespace and the alias of the table, the same statement."""
    assert normalized(views()[view]) == normalized(TODAY_VIEWS[view])


# -- the same rows on a fixture ---------------------------------------------------------------


def changed(value):
    """Another value of the same type (a row id column's second value)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}-b"


def current_specs() -> list[TableSpec]:
    return [s for s in TABLES.values() if s.current_view]


def enrich(st: Storage) -> None:
    """On top of ``write_tables``' two studies: run_keys for the later stages' rows, and per
    table and study a newer duplicate of a covered key, a second row id of it, a key no run
    covered, one covered by an older completed run only, one by a newer failed run only, and
    one covered under another model or another table_name."""
    keys: dict[tuple[str, str], list[RunKeyRow]] = defaultdict(list)
    for study in ("demo", "other"):
        run = f"run-{study}"
        for spec in current_specs():
            key, model = spec.key_column, spec.model_column
            rows = sorted(read_table(st, spec.name, {"study": study}).to_pylist(),
                          key=lambda r, key=key: (r[key], *(str(r[c]) for c in spec.row_id)))
            assert rows, spec.name
            if spec.name not in ("prompts", "cross_task", "cross_task_predictions"):
                for r in rows:
                    keys[study, r[model]].append(
                        RunKeyRow(run, study, r[model], spec.name, r[key], T0))
            r0 = rows[0]
            extra = {"dup": {**r0, "run_id": "dup", "created_at": T0 + HOUR}}
            if spec.row_id:
                col = spec.row_id[-1]
                extra["variant"] = {**r0, col: changed(r0[col]), "run_id": "variant",
                                    "created_at": T0 + 2 * HOUR}
            for tag in ("uncovered", "old", "failed", "othermodel", "othertable"):
                extra[tag] = {**r0, key: f"{r0[key]}-{tag}", "run_id": tag}
            for tag, row in extra.items():
                write_part(st, spec.name, [row], f"{study}-{tag}")
            by = {"old": (f"{run}-old", r0[model], spec.run_keys_name),
                  "failed": (f"{run}-failed", r0[model], spec.run_keys_name),
                  "othermodel": (run, "no-such-model", spec.run_keys_name),
                  "othertable": (run, r0[model], "training_curves")}
            for tag, (run_id, m, table) in by.items():
                keys[study, m].append(
                    RunKeyRow(run_id, study, m, table, f"{r0[key]}-{tag}", T0))
        for i, (status, finished) in enumerate((("completed", T0 - 24 * HOUR),
                                                ("failed", T0 + 24 * HOUR))):
            run_id = f"{run}-{'old' if i == 0 else 'failed'}"
            write_part(st, "runs", [filled_row(RunRow, run_id=run_id, study=study, status=status,
                                               finished_at=finished)], run_id)
    for i, rows in enumerate(keys.values()):
        write_part(st, "run_keys", rows, f"extra-{i}")


@pytest.fixture(scope="module")
def fixture_con(tmp_path_factory):
    st = Storage(str(tmp_path_factory.mktemp("views") / "root"))
    write_tables(st, "demo", 0.2)
    write_tables(st, "other", 0.0)
    enrich(st)
    return duckdb_connect(st)


def count(con, sql: str) -> int:
    return con.execute(f"select count(*) from ({sql})").fetchone()[0]


@pytest.mark.parametrize("view", sorted(TODAY_VIEWS))
def test_derived_views_return_todays_rows(fixture_con, view):
    con = fixture_con
    today = TODAY_VIEWS[view]
    n = count(con, today)
    assert n > 0
    assert count(con, f'select * from "{view}"') == n
    assert count(con, f'select * from "{view}" except all select * from ({today})') == 0
    assert count(con, f'select * from ({today}) except all select * from "{view}"') == 0
    if view == "latest_runs":
        assert sorted(con.execute("select run_id from latest_runs").fetchall()) == [
            ("run-demo",), ("run-other",)]
        return
    # the fixture exercised every clause: the newest duplicate and a second row id are in,
    # keys outside the latest completed run (or under another model / table_name) are out
    spec = TABLES[view.removeprefix("current_")]
    run_ids = {r[0] for r in con.execute(f'select run_id from "{view}"').fetchall()}
    assert "dup" in run_ids and ("variant" in run_ids) == bool(spec.row_id)
    assert not run_ids & {"uncovered", "old", "failed", "othermodel", "othertable"}
    dups = con.execute(f'select count(*) from "{spec.name}" where run_id = \'dup\'').fetchone()
    assert dups == (2,)  # one per study, each replacing its older row in the view


# -- a new table: its row dataclass and its registration, nothing else -----------------------


@dataclasses.dataclass
class WidgetRow:
    widget_key: str
    model: str
    size: int
    colour: str | None
    study: str
    run_id: str
    created_at: dt.datetime


def widget_spec(**kw) -> TableSpec:
    layout = {"row_id": ("size",), "model_column": "model", "current_view": True, **kw}
    return TableSpec.from_row(
        "widgets", WidgetRow, partition_by=("study", "model"), key_column="widget_key",
        description="Scratch table of a test.", **layout)


def test_a_table_registered_in_a_test_gets_its_view_ddl_and_run_keys_coverage(tmp_path):
    st = Storage(str(tmp_path / "root"))
    assert "widgets" not in TABLES
    with registered(widget_spec()) as spec:
        assert TABLES["widgets"] is spec and "widgets" in tables_with_run_keys()
        rows = [WidgetRow("w1", "m", 1, "red", "demo", "r1", T0),
                WidgetRow("w1", "m", 2, None, "demo", "r1", T0),
                WidgetRow("w2", "m", 1, "blue", "demo", "r1", T0)]
        write_part(st, "widgets", rows, "w")
        write_part(st, "widgets", [dataclasses.replace(rows[0], colour="green",
                                                       created_at=T0 + HOUR)], "w1-again")
        write_part(st, "runs", [filled_row(RunRow, run_id="r1", study="demo",
                                           status="completed")], "r1")
        write_part(st, "run_keys", [RunKeyRow("r1", "demo", "m", "widgets", "w1", T0)], "r1")
        con = duckdb_connect(st)
        got = con.execute("select widget_key, size, colour from current_widgets "
                          "order by all").fetchall()
        assert got == [("w1", 1, "green"), ("w1", 2, None)]  # w2: not in the run's keys
        assert view_tables()["current_widgets"] == {"widgets"}
        ddl = athena_ddl("widgets", "s3://bucket/pt")
        assert ddl.startswith("CREATE EXTERNAL TABLE IF NOT EXISTS `widgets` (\n")
        assert "  `size` bigint,\n  `colour` string" in ddl
        assert "PARTITIONED BY (`study` string, `model` string)" in ddl
        assert "LOCATION 's3://bucket/pt/tables/widgets/'" in ddl
        assert "partitioned_by = ARRAY['study', 'model']" in trino_ddl("widgets", "s3://b/p")
        df = run_rows(st, "widgets", "demo", [("m", ["w1"])]).sort_values("size")
        assert df["size"].tolist() == [1, 2] and df["colour"].iloc[0] == "green"
    assert "widgets" not in TABLES and "widgets" not in tables_with_run_keys()
    assert "current_widgets" not in views()
    names = {r[0] for r in duckdb_connect(st).execute("show tables").fetchall()}
    assert "current_widgets" not in names and "widgets" not in names


def test_registered_keeps_a_table_registered_before_and_refuses_another_spec():
    before = TABLES["prompts"]
    with registered(before):
        pass
    assert TABLES["prompts"] is before
    with pytest.raises(ValueError, match="already registered"):
        with registered(dataclasses.replace(before, current_view=False)):
            pass
    assert TABLES["prompts"] is before


def test_spec_checks_its_layout():
    with pytest.raises(ValueError, match="needs a model column"):
        widget_spec(model_column=None)
    with pytest.raises(ValueError, match="model column 'maker' not in schema"):
        widget_spec(model_column="maker")
    with pytest.raises(ValueError, match="run_keys_table"):
        widget_spec(run_keys_table="Other Table")
    with pytest.raises(ValueError, match="no current view"):
        current_view_sql("runs")
    # run_keys rows name the table their keys are recorded under
    assert widget_spec(run_keys_table="prompts").run_keys_name == "prompts"
    assert "k.table_name = 'prompts'" in current_view_sql(widget_spec(run_keys_table="prompts"))
