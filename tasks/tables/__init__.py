"""Result tables: hive-partitioned Parquet under ``<root>/tables/<table>/``, plus DuckDB views.

Each table is defined once, in :mod:`tasks.tables.rows`: a row dataclass (``PromptRow``,
``CellRow``...) and one registration (:class:`TableSpec`: partitions, key, row id, model
column, ``current_<table>`` view). One Parquet part per unit of work, named by the unit's key:
a unit checks its own part (or its own partition directory), never the whole table.

- :mod:`~tasks.tables.schema`: ``TableSpec``, the registry (``TABLES``), schema conformance;
- :mod:`~tasks.tables.parquet`: part paths, writing and reading parts and tables;
- :mod:`~tasks.tables.rows`: the row dataclasses and their registrations;
- :mod:`~tasks.tables.views`: DuckDB (``duckdb_connect``) and the views derived from the specs;
- :mod:`~tasks.tables.ddl`: Athena / Trino DDL derived from the specs.

Every public name is importable from ``tasks.tables``.
"""

from __future__ import annotations

from typing import Any

import pyarrow.dataset as ds  # noqa: F401 - ``tasks.tables.ds``: benchmarks count its scans

from tasks.tables.ddl import athena_ddl, trino_ddl
from tasks.tables.parquet import (
    dataset,
    existing_keys,
    list_parts,
    part_path,
    partition_prefix,
    read_part,
    read_partition,
    read_parts,
    read_table,
    run_rows,
    serialize_parquet,
    stored_rows,
    write_part,
)
from tasks.tables.rows import (
    ABLATIONS,
    CORRELATIONS,
    CROSS_MODEL,
    CROSS_TASK,
    CROSS_TASK_PREDICTIONS,
    INDICATORS,
    PROJECTORS,
    PROMPTS,
    RECOMMENDATIONS,
    RUN_KEYS,
    RUNS,
    TPT,
    TPT_RANKINGS,
    TRAINING_CURVES,
    AblationRow,
    CellRow,
    CorrelationRow,
    CrossModelRow,
    CurveRow,
    IndicatorRow,
    PredictionRow,
    ProjectorRow,
    PromptRow,
    RecommendationRow,
    RunKeyRow,
    RunRow,
    TptRankRow,
    TptRow,
)
from tasks.tables.schema import (
    BOOL,
    FLOAT64,
    INT16_LIST,
    INT64,
    STRING,
    TABLES,
    TABLES_PREFIX,
    TIMESTAMP,
    Int16List,
    TableSpec,
    castable,
    check_partition_value,
    conform,
    get_table,
    now_utc,
    register_table,
    registered,
    tables_with_run_keys,
    to_arrow,
)
from tasks.tables.views import (
    LATEST_RUNS_SQL,
    current_view_sql,
    duckdb_connect,
    view_tables,
    views,
)

__all__ = [
    "ABLATIONS", "BOOL", "CORRELATIONS", "CROSS_MODEL", "CROSS_TASK", "CROSS_TASK_PREDICTIONS",
    "FLOAT64", "INDICATORS", "INT16_LIST", "INT64", "LATEST_RUNS_SQL", "PROJECTORS", "PROMPTS",
    "RECOMMENDATIONS", "RUNS", "RUN_KEYS", "STRING", "TABLES", "TABLES_PREFIX", "TIMESTAMP",
    "TPT", "TPT_RANKINGS", "TRAINING_CURVES", "VIEWS", "VIEW_TABLES", "AblationRow", "CellRow",
    "CorrelationRow", "CrossModelRow", "CurveRow", "IndicatorRow", "Int16List",
    "PredictionRow", "ProjectorRow", "PromptRow", "RecommendationRow", "RunKeyRow", "RunRow",
    "TableSpec", "TptRankRow", "TptRow", "athena_ddl", "castable", "check_partition_value",
    "conform", "current_view_sql", "dataset", "duckdb_connect", "existing_keys", "get_table",
    "list_parts", "now_utc", "part_path", "partition_prefix", "read_part", "read_partition",
    "read_parts", "read_table", "register_table", "registered", "run_rows", "serialize_parquet",
    "stored_rows", "tables_with_run_keys", "to_arrow", "trino_ddl", "view_tables", "views",
    "write_part",
]


def __getattr__(name: str) -> Any:
    """``VIEWS`` and ``VIEW_TABLES``, derived from the registry when read (never stale)."""
    if name == "VIEWS":
        return views()
    if name == "VIEW_TABLES":
        return view_tables()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
